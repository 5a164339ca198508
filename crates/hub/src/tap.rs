//! [`Tap`]: a second way out of the hub for each message it sequences — after its fan-out,
//! outside the topic's lock, on every node (a message sequenced elsewhere too). Push hangs
//! here. A tap must not wait: it is called on the publishing path (queue and return). A leaf.

use modelcast_protocol::Topic;

use crate::audience::Audience;
use crate::frame::Frame;

/// One sequenced message, as a [`Tap`] sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Tapped<'a> {
    /// Its topic.
    pub topic: Topic,
    /// The topic's epoch, with `seq` unique across a cluster.
    pub epoch: &'a str,
    /// Its position.
    pub seq: u64,
    /// Its `type` (one of `ServerMessage::TYPES`).
    pub type_name: &'static str,
    /// The frame every subscriber receives.
    pub frame: &'a Frame,
    /// Who it is for (`None`: everyone who may read the topic).
    pub audience: Option<&'a Audience>,
    /// Its state key, if it has one.
    pub key: Option<&'a str>,
}

/// Told of every message the hub sequences (see the module docs).
pub trait Tap: Send + Sync + 'static {
    /// `message` was sequenced and fanned out. Must return at once.
    fn sequenced(&self, message: Tapped<'_>);
}
