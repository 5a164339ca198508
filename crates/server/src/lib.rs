//! modelcast-server: the `modelcast` binary's library — one port serving WebSocket
//! (framed by modelcast-ws, with permessage-deflate) and HTTP (hyper 1.x): `/ws/{connection_id}`, `/ws`,
//! `POST /api/publish`, `/healthz`, `/readyz`, `/api/stats`, `/metrics`, `/api/push/…`;
//! configuration, metrics, TLS, push (modelcast-push, fed by the hub's tap), graceful
//! shutdown.
//!
//! It is the only crate that knows HTTP and sessions (modelcast-ws knows WebSocket frames,
//! nothing of sessions); no hyper type appears in its public API. Depends on every library crate; nothing depends on it. It only wires the
//! Redis engine (`modelcast-redis`) in when `MODELCAST_REDIS_URL` is set.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let server = modelcast_server::Server::bind(modelcast_server::Config::default()).await?;
//! println!("listening on {}", server.local_addr());
//! server.run().await
//! # }
//! ```

mod actions;
mod admit;
mod app;
mod config;
mod control;
mod demand;
mod error;
mod handshake;
mod http;
mod inspect;
mod manage;
mod metrics;
mod pace;
mod presence;
mod publish;
mod push;
mod push_settings;
mod response;
mod revoke;
mod roster;
mod security;
mod session;
mod sse;
mod state;
mod stream;
mod tls;
mod validate;
mod watchers;

pub use app::{Server, ShutdownHandle};
pub use config::{Cidr, Config, HealthLevel, JwtAlgorithm, LogFormat};
pub use security::check_config;

/// A new VAPID key pair for Web Push: the private key (PEM, PKCS#8) and the public key
/// (base64url), for `modelcast push-keys`.
pub fn new_push_keys() -> (String, String) {
    let pem = modelcast_push::Vapid::generate_pem();
    let public = modelcast_push::Vapid::from_pem(&pem, "mailto:unused@example.com")
        .map(|v| v.public_key().to_owned())
        .unwrap_or_default();
    (pem, public)
}
