//! modelcast-hub: the engine — topics, subscriptions, fan-out, retained state, history and
//! recovery, throttling, batching and backpressure. In-process and tokio-based. It works on
//! `modelcast-protocol`'s types (a [`Publish`] wraps a `ServerMessage`, frames are
//! `ServerFrame`s) but never looks inside one: which messages are updates, which key and
//! subject they have, what is retained is the caller's policy (`modelcast-notifiers`).
//!
//! Depends on `modelcast-protocol` only among workspace crates; must not depend on the
//! notifiers, the server, sockets or HTTP, and exposes no tungstenite type.
//!
//! # The contract
//!
//! - **Serialize once.** A publish becomes one [`Frame`] (an `Arc` of its text); every
//!   subscriber gets a reference-counted clone of the same bytes, and of the same compressed
//!   form, made at most once.
//! - **Key and subject apart.** A [`Publish`] has a *state key* (retained state, throttling,
//!   collapsing, `max_hz` work per key) and a *filter subject* (a subscription's
//!   [`SubscribeOptions::subjects`] pass the messages about one of them and every message
//!   without a subject). One value never does both jobs.
//! - **Order.** Per topic, `seq` counts from 1 under the hub's random `epoch`. Every frame a
//!   connection receives of a topic has a higher `seq` than the ones before it, except frames
//!   marked `"late":true`: the current state sent after `subscribed`, a recovery's resent
//!   state, and a `max_hz` update released after newer messages of other keys. A late frame is
//!   the newest value of its key: apply it, never compare positions with it. So a client
//!   keeps `last` per topic, sets it from a non-recovered `subscribed`, drops a frame only if
//!   it is not late and `seq <= last`, and loses nothing. Urgent frames overtake routine frames
//!   of *other* topics only.
//! - **Audience.** A [`Publish`] may name an [`Audience`] (users, roles): it then reaches only
//!   the connections whose [`Viewer`] ([`Connection::set_viewer`]) is in it, in every way a
//!   topic hands out frames (live, state, replay, `state_cleared`), because one check on the
//!   subscription decides them all. Its state key is the audience's own. `seq` stays per
//!   topic, so a subscriber sees gaps where messages were for others; gaps mean nothing.
//! - **Nothing newest is lost.** Conflation (throttle, collapse in a full queue, `max_hz`) may
//!   skip a key's intermediate values, never its newest value, a transition or an event.
//! - **Current state, then live.** [`Connection::subscribe`] queues `subscribed`, then the
//!   retained frames (or, with `since`, the retained values at or below it that nothing newer
//!   touched, then exactly the missed range from history), then live frames — atomically with
//!   respect to publishers: no gap, no duplicate.
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

mod audience;
mod batch;
mod connection;
mod engine;
mod epoch;
mod error;
mod frame;
mod hub;
mod idempotency;
mod keys;
mod outbox;
mod publish;
mod reach;
mod retained;
mod stats;
mod tap;
mod throttle;
mod topics;
mod wire;

pub use audience::{Audience, Viewer};
pub use batch::{Batcher, Combiner};
pub use connection::Connection;
pub use engine::{Append, Appended, Engine, LocalEngine, MemoryEngine, Pending, Replica};
pub use epoch::{epoch_of, epoch_random, generation, new_epoch, next_epoch};
pub use error::{DropReason, Error, MIN_MAX_HZ, Result};
pub use frame::Frame;
pub use hub::{Hub, Published, Run};
pub use idempotency::{Claim, IDEMPOTENCY_TTL};
pub use outbox::Delivery;
pub use publish::{Key, Kind, Publish, Retain, Sequenced};
pub use stats::{ConflateReason, HubStats, TopicStats};
pub use tap::{Tap, Tapped};
pub use topics::{Applied, HubConfig, Logged, StatePage, SubscribeOptions, SubscribeOutcome};
pub use wire::{StateChange, Wire};
