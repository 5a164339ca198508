//! modelcast-redis: the Redis engine. Several modelcast nodes behind any load balancer share,
//! through Redis (one Redis, a primary that Redis Sentinel names, or a Redis Cluster with each
//! topic on one shard), one `seq` per topic, its history and its current state, and behave to
//! every client as one server. It implements the hub's [`modelcast_hub::Engine`] seam: the
//! hub appends what it publishes, and the engine hands every sequenced message back to every
//! node's [`modelcast_hub::Replica`].
//!
//! What it owns: the Lua scripts (loaded once, called by SHA), the key layout (`names.rs`),
//! appends through a bounded queue (`appender.rs`, one script call per topic per round trip),
//! following the topics' channels with a worker per topic (`follower.rs`: a slow repair blocks
//! only its topic), the rollback fence, the restart check (a Redis that restarted without
//! `appendfsync always`, or failed over, may have lost acknowledged messages: its topics get
//! new epochs — see `scripts.rs`), and the engine's health. Every task stops with
//! [`RedisEngine::stop`].
//!
//! It depends on the hub and the protocol only: no notifiers, no server, no HTTP — a Rust
//! service that embeds the hub can run a cluster with it.

mod appender;
mod conn;
mod engine;
mod error;
mod follower;
mod health;
mod kv;
mod names;
mod queued;
mod scripts;
mod shared;
mod snapshot;
mod target;

pub use engine::{RedisEngine, RedisSettings, redact};
pub use error::{Error, Result};
pub use health::{HealthReport, Shard};
pub use kv::Kv;
pub use target::RedisTls;
