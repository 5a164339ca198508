//! modelcast-server: the `modelcast` binary's library — one port serving WebSocket
//! (framed by modelcast-ws, with permessage-deflate) and HTTP (hyper 1.x): `/ws/{connection_id}`, `/ws`,
//! `POST /api/publish`, `/healthz`, `/readyz`, `/api/stats`, `/metrics`; configuration,
//! metrics, graceful shutdown.
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
mod error;
mod handshake;
mod http;
mod inspect;
mod metrics;
mod publish;
mod response;
mod security;
mod session;
mod sse;
mod state;
mod stream;
mod tls;
mod validate;

pub use app::{Server, ShutdownHandle};
pub use config::{Cidr, Config, HealthLevel, JwtAlgorithm, LogFormat};
pub use security::check_config;
