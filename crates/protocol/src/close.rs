//! WebSocket close codes the server uses, and what a client should do on each.

/// Normal closure (the client or server ended the session on purpose).
pub const NORMAL: u16 = 1000;
/// The server is shutting down (or restarting): reconnect, with `since`, to another node or
/// after a short delay.
pub const GOING_AWAY: u16 = 1001;
/// The client broke the WebSocket protocol (RFC 6455 §7.4.1): a bug in the client's library.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame was not valid UTF-8 (RFC 6455 §8.1).
pub const INVALID_PAYLOAD: u16 = 1007;
/// Abuse: sustained rate-limit violations. Do not reconnect at once.
pub const POLICY_VIOLATION: u16 = 1008;
/// A frame exceeded the server's maximum frame size.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server failed unexpectedly. Reconnect with backoff.
pub const INTERNAL_ERROR: u16 = 1011;
/// The client fell so far behind that its queue overflowed even after collapsing progress
/// updates. Reconnect with `since` to recover what was missed.
pub const SLOW_CONSUMER: u16 = 4001;
/// Another connection opened with the same connection id and replaced this one. Do not
/// reconnect automatically with the same id (two tabs would evict each other forever).
pub const REPLACED: u16 = 4002;
/// No frame (not even a pong) arrived for two heartbeat intervals.
pub const HEARTBEAT_TIMEOUT: u16 = 4003;
/// Authentication failed: no valid token arrived within the deadline, or the token expired and
/// was not refreshed. Reconnect with a fresh token.
pub const UNAUTHORIZED: u16 = 4401;
/// An operator ended this connection (`POST /api/disconnect`) or revoked its user's tokens
/// (`POST /api/revoke`): do not reconnect with this token. A new token may connect.
pub const REVOKED: u16 = 4403;
