//! Errors, one type per operation, each saying what to do.

use modelcast_protocol::{ErrorCode, Topic};

/// [`crate::Client::connect`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a `ws://` or `wss://` URL.
    #[error(
        "invalid modelcast URL `{url}`: {reason}; expected e.g. ws://127.0.0.1:8000/ws/my-service"
    )]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or the WebSocket handshake failed.
    #[error(
        "cannot connect to {url}: {reason}; check that the server runs and the address is right"
    )]
    Unreachable {
        /// The URL.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// The server answered the handshake with an HTTP error (e.g. 401 without a valid token,
    /// 503 at its connection limit).
    #[error("the server refused the connection with HTTP {status}: {body}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The response body (a JSON error from modelcast).
        body: String,
    },
    /// The server's TLS certificate was refused (`wss://`): an unknown issuer (a private CA:
    /// pass it with [`crate::ConnectOptions::ca`]), another name, expired, ….
    #[error(
        "the TLS certificate of {url} was refused: {problem}; if a private CA signed it, \
         trust that CA (ConnectOptions::ca, modelcast-watch --ca FILE)"
    )]
    Certificate {
        /// The URL.
        url: String,
        /// What is wrong with the certificate (rustls's word: `UnknownIssuer`, `NotValidForName`, …).
        problem: String,
    },
    /// The CA given to [`crate::ConnectOptions::ca`] is not usable.
    #[error("the CA certificate is not usable: {reason}")]
    InvalidCa {
        /// What is wrong with it.
        reason: String,
    },
    /// The server requires a token and this client has none (its `welcome` gave a deadline to
    /// authenticate by): set [`crate::ConnectOptions::token`].
    #[error("{url} requires a token (ConnectOptions::token, modelcast-watch --token)")]
    TokenRequired {
        /// The URL.
        url: String,
    },
    /// The server did not send its `welcome` in time: it may not be a modelcast server.
    #[error("no welcome from {url} within the timeout; is it a modelcast server?")]
    NoWelcome {
        /// The URL.
        url: String,
    },
}

/// [`crate::Client::subscribe`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// This client already has a subscription to the topic; drop it first (one per topic).
    #[error("already subscribed to {0}; drop or unsubscribe the existing subscription first")]
    AlreadySubscribed(Topic),
    /// The server refused (e.g. `forbidden` for the token's roles, `too_many_subscriptions`).
    #[error("the server refused the subscription ({code}): {message}")]
    Rejected {
        /// The server's error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The client was closed.
    #[error("the client is closed; connect again")]
    Closed,
}

/// [`crate::Client::publish`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A control message (`welcome`, `pong`, …): only topic messages are published.
    #[error("`{0}` is a control message; only topic messages can be published")]
    NotATopicMessage(&'static str),
    /// The server refused it: `invalid_message` (the message names the field), `forbidden`
    /// (the connection has no publish key), `unavailable` (a cluster's Redis is down: retry).
    #[error("the server refused the message ({code}): {message}")]
    Rejected {
        /// The server's error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The connection was lost before the server answered: the message may or may not have
    /// been published (the client reconnects; publish again if a duplicate is harmless).
    #[error("the connection was lost before the server answered; the outcome is unknown")]
    ConnectionLost,
    /// The client was closed.
    #[error("the client is closed; connect again")]
    Closed,
}
