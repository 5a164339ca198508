//! modelcast-client: a typed async Rust client for modelcast.
//!
//! It will own `Client::connect`, typed subscription streams, reconnect with backoff and
//! recovery with `since {epoch, seq}`, heartbeats, and the `modelcast-watch` command.
//! Depends on `modelcast-protocol` only — never on the hub or the server, so a service can
//! use it without pulling in the server. (Filled by the client issue; today this crate is
//! intentionally empty.)
