//! [`Queued`]: an append on its way to Redis. A leaf: the engine queues it, the appender
//! sends it, the script call encodes it.

use bytes::Bytes;
use modelcast_hub::{Result as HubResult, Sequenced, StateChange};
use modelcast_protocol::Topic;

/// An append waiting for Redis: the message encoded (the payload, and what it does to retained
/// state), its idempotency key, and where the answer goes.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) topic: Topic,
    pub(crate) payload: Bytes,
    pub(crate) state: Vec<StateChange>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) reply: tokio::sync::oneshot::Sender<HubResult<Sequenced>>,
}
