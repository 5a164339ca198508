//! modelcast-client: a typed async Rust client for modelcast that loses nothing across
//! reconnects.
//!
//! [`Client::connect`] returns a cheap `Clone` handle to a background task that owns the
//! WebSocket. [`Client::subscribe`] returns a typed [`Subscription`] stream: first the current
//! state, then live messages, each exactly once and in `seq` order — also across dropped
//! connections and server restarts behind the same hub, because every subscription is renewed
//! with `since {epoch, seq}`. When the server can no longer recover what was missed, the
//! stream yields [`Event::Gap`] and then what the server still holds and the current state,
//! without the messages it already delivered (remembered by content, the last
//! [`REMEMBERED_MESSAGES`] per subscription: a failover's new epoch numbers them anew). A
//! silent server is detected and reconnected to, with exponential backoff and jitter.
//!
//! Depends on `modelcast-protocol` only among workspace crates (never the hub or the server),
//! so a service can use it without pulling the server in. The `modelcast-watch` binary lives
//! here too.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use modelcast_client::{Client, ConnectOptions, Event};
//! use modelcast_protocol::{ServerMessage, Topic};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("ws://127.0.0.1:8000/ws/my-service", ConnectOptions::default()).await?;
//! let mut downloads = client.subscribe(Topic::DownloadProgress).await?;
//! while let Some(event) = downloads.next().await {
//!     if let Event::Message { message: ServerMessage::DownloadProgressUpdate(p), .. } = event {
//!         println!("{} {:.1}%", p.model_id, p.progress_percent);
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod error;

pub use client::{
    Client, ClientStats, ConnectOptions, Event, REMEMBERED_MESSAGES, SubscribeOptions,
    Subscription, TokenMode,
};
pub use error::{ConnectError, PublishError, SubscribeError};
