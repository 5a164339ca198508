//! modelcast-notifiers: the model domain on top of the hub.
//!
//! It owns the **policy**: for every message type, its topic key, whether it is retained (and
//! when it is cleared), whether it is an update (throttled, collapsible), a transition or an
//! event, whether it is urgent, whether it is batched, and which health results are worth
//! notifying. Everything published — by a Rust service in-process or by any backend over
//! `POST /api/publish` — goes through [`Policy::publish`], so both get the same behaviour.
//!
//! Depends on `modelcast-protocol` and `modelcast-hub`; must not depend on the server, sockets
//! or HTTP. (The typed notifiers and the demo are added by the notifiers issue.)

mod policy;

pub use policy::{Outcome, Policy, PolicyConfig, Rule};
