//! Subscribe to a topic and print what arrives.
//!
//! `cargo run -p modelcast-client --example subscribe -- ws://127.0.0.1:8000/ws/example download_progress`
#![allow(clippy::print_stdout, clippy::print_stderr)]

use futures_util::StreamExt;
use modelcast_client::{Client, ConnectOptions, Event};
use modelcast_protocol::Topic;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8000/ws/example".into());
    let topic: Topic = args.next().unwrap_or_else(|| "download_progress".into()).parse()?;
    let client = Client::connect(&url, ConnectOptions::default()).await?;
    let mut subscription = client.subscribe(topic).await?;
    while let Some(event) = subscription.next().await {
        match event {
            Event::Message { seq, late, message } => {
                let kind = if late { "current" } else { "live" };
                println!("{kind} #{seq} {}", serde_json::to_string(&message)?);
            }
            Event::Gap { last_seq } => {
                eprintln!("missed messages after #{last_seq}; current state follows")
            }
            other => eprintln!("{other:?}"),
        }
    }
    Ok(())
}
