//! modelcast-server: the `modelcast` binary's library — listener, WebSocket (tokio-tungstenite),
//! HTTP endpoints, configuration, metrics and graceful shutdown.
//!
//! It is the only crate that knows sockets and HTTP; no tungstenite or hyper type leaves it.
//! Depends on every library crate; nothing depends on it. (Filled by the server issue; today
//! this crate is intentionally empty.)
