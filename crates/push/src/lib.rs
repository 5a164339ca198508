//! modelcast-push: the second way out of the hub — pushes to users who are not connected.
//! Web Push to browsers (RFC 8030 delivery, RFC 8291 `aes128gcm` encryption, RFC 8292 VAPID),
//! Firebase Cloud Messaging HTTP v1 and APNs (token auth, HTTP/2) to apps.
//!
//! What it owns: the cryptography (`webpush.rs`), a device's registration and its checks
//! (`device.rs`), the registrations' [`Store`] seam with a file store for one node
//! (`store.rs`), sending one push and reading the service's answer (`send.rs`), and
//! [`Pusher`], the service: bounded queues, a fixed number of workers, retries that honour
//! `Retry-After`, gone devices forgotten, a rate per user (`pusher.rs`).
//!
//! It depends on no other modelcast crate: the server hands it each sequenced message (the
//! hub's tap), implements the store on Redis for a cluster and tells it who is online. Nothing
//! here ever waits on the fan-out: a message is offered with a `try_send`.

mod device;
mod pusher;
mod send;
mod store;
mod webpush;

pub use device::{Device, Invalid, Keys, Registration, Target};
pub use pusher::{MayRead, Message, PushConfig, PushStats, Pusher, RegisterError, When};
pub use send::{Apns, FcmAccount};
pub use store::{FileStore, Presence, Registry, Store};
pub use webpush::{MAX_PAYLOAD, Vapid};
