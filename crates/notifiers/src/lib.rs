//! modelcast-notifiers: the model domain on top of the hub.
//!
//! It will own the typed notifiers a Rust service calls (`downloads.progress(..)`, health,
//! availability, fallback, analytics, and the core topics) and the policy table per message
//! type: topic, throttle key and interval, transitions, retained keys, batching, urgency.
//! `POST /api/publish` goes through the same table.
//!
//! Depends on `modelcast-protocol` and `modelcast-hub`; must not depend on the server, sockets
//! or HTTP. (Filled by the notifiers issue; today this crate is intentionally empty.)
