//! The seam between nodes: where a publish leaves this node and where other nodes' enter.
//!
//! A [`Backplane`] receives every message this hub publishes (after throttling and batching,
//! before sequencing) and hands messages published elsewhere to [`Inbound::deliver`]. Each
//! node sequences what it delivers under its own epoch, so recovery works against the node a
//! client is connected to; a shared store (e.g. Redis) can later move sequencing, history and
//! retained state behind this seam without changing the hub's callers.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use crate::publish::Publish;
use crate::topics::Topics;

/// A node's identity on a backplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(u64);

impl NodeId {
    pub(crate) fn new() -> Self {
        Self(rand::random())
    }
}

/// Carries publishes between hubs. Implementations must deliver each node's publishes to every
/// other node in the order they were forwarded.
pub trait Backplane: Send + Sync + fmt::Debug + 'static {
    /// A hub joins: messages for it go to `inbound`.
    fn attach(&self, node: NodeId, inbound: Inbound);

    /// `from` published `publish` (with a batch's `constituents`); send it to the other nodes.
    fn forward(&self, from: NodeId, publish: &Publish, constituents: &[Publish]);
}

/// Where messages from other nodes enter a hub. Holds the hub's topics weakly: a dropped hub
/// stops receiving.
#[derive(Clone)]
pub struct Inbound {
    topics: Weak<Topics>,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound").field("alive", &(self.topics.strong_count() > 0)).finish()
    }
}

impl Inbound {
    pub(crate) fn new(topics: &Arc<Topics>) -> Self {
        Self { topics: Arc::downgrade(topics) }
    }

    /// Publishes a message from another node on this node (not forwarded again). Returns
    /// `false` if the hub is gone.
    pub fn deliver(&self, publish: Publish, constituents: Vec<Publish>) -> bool {
        match self.topics.upgrade() {
            Some(topics) => {
                topics.publish(publish, constituents);
                true
            }
            None => false,
        }
    }
}

/// The in-memory backplane: hubs in one process, delivered synchronously. A hub made with
/// `Hub::new` sits alone on one of these.
#[derive(Debug, Default)]
pub struct MemoryBackplane {
    nodes: Mutex<Vec<(NodeId, Inbound)>>,
}

impl MemoryBackplane {
    /// An empty backplane.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backplane for MemoryBackplane {
    fn attach(&self, node: NodeId, inbound: Inbound) {
        let mut nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.retain(|(_, i)| i.topics.strong_count() > 0);
        nodes.push((node, inbound));
    }

    fn forward(&self, from: NodeId, publish: &Publish, constituents: &[Publish]) {
        let targets: Vec<Inbound> = {
            let nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            nodes.iter().filter(|(id, _)| *id != from).map(|(_, i)| i.clone()).collect()
        };
        for inbound in targets {
            inbound.deliver(publish.clone(), constituents.to_vec());
        }
    }
}
