//! modelcast-hub: the engine — topics, subscriptions, fan-out, retained state, history and
//! recovery, throttling, batching and backpressure. In-process, tokio, generic: it knows
//! topics, keys and frames, never models (the model policy lives in `modelcast-notifiers`).
//!
//! Depends on `modelcast-protocol` only among workspace crates; must not depend on the
//! notifiers, the server, sockets or HTTP, and exposes no tungstenite type.
//!
//! # The contract
//!
//! - **Serialize once.** A publish becomes one [`Frame`] (`bytes::Bytes`); every subscriber
//!   gets a reference-counted clone of the same bytes.
//! - **Order.** Per topic, `seq` counts from 1 under the hub's random `epoch`; every subscriber
//!   receives a topic's messages in `seq` order (urgent messages may overtake routine ones of
//!   *other* priority on the same connection, by design).
//! - **Current state, then live.** [`Connection::subscribe`] queues `subscribed`, then the
//!   retained frames (or, with `since`, exactly the missed range from history), then live
//!   frames — atomically with respect to publishers: no gap, no duplicate.
//! - **Bounded.** Every queue has a bound: outboxes (`outbox_capacity`), history
//!   (`history_size`, `history_age`), one pending update per throttled key, one held-back
//!   update per key per rate-limited subscription. A full outbox collapses updates, then says
//!   `lagging`, then drops the subscriber ([`DropReason::SlowConsumer`]). A publisher never
//!   waits for a subscriber.
//! - **No lock across an await.** All locks are `std` mutexes held for short, synchronous
//!   sections; lock order is throttle → topic → outbox.
//!
//! ```
//! use modelcast_hub::{Hub, HubConfig, Publish, Retain, SubscribeOptions};
//! use modelcast_protocol::{ServerMessage, Topic};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let hub = Hub::new(HubConfig::default());
//! let conn = hub.connect();
//! conn.subscribe(Topic::Alerts, SubscribeOptions::default()).unwrap();
//! # let alert: ServerMessage = serde_json::from_value(serde_json::json!({"type": "alert", "data": {
//! #   "alert_id": "a1", "level": "warning", "title": "Disk", "message": "Low disk",
//! #   "timestamp": "2025-08-27T10:30:00Z"}})).unwrap();
//! hub.publish(Publish::new(alert).unwrap().urgent(true));
//! let mut out = Vec::new();
//! conn.recv(&mut out, 64).await.unwrap();
//! assert!(out[0].frame().as_str().contains("\"subscribed\""));
//! assert!(out[1].frame().as_str().contains("\"seq\":1"));
//! # }
//! ```

mod backplane;
mod batch;
mod connection;
mod error;
mod frame;
mod hub;
mod keys;
mod outbox;
mod publish;
mod stats;
mod throttle;
mod topics;

pub use backplane::{Backplane, Inbound, MemoryBackplane, NodeId};
pub use batch::{Batcher, Combiner};
pub use connection::Connection;
pub use error::{DropReason, Error, MIN_MAX_HZ, Result};
pub use frame::Frame;
pub use hub::{Hub, Published};
pub use outbox::Delivery;
pub use publish::{Key, Kind, Publish, Retain};
pub use stats::{ConflateReason, HubStats, TopicStats};
pub use topics::{HubConfig, SubscribeOptions, SubscribeOutcome};
