//! A service reacting to corruption reports: when a model is reported corrupted and the repair
//! needs a person, take it out of rotation and page someone.
//!
//! `cargo run -p modelcast-client --example corruption -- ws://127.0.0.1:8000/ws/repair-bot`
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;

use futures_util::StreamExt;
use modelcast_client::{Client, ConnectOptions, Event};
use modelcast_protocol::{RepairPhase, ServerMessage, Severity, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8000/ws/repair-bot".into());
    let client = Client::connect(&url, ConnectOptions::default()).await?;
    let mut health = client.subscribe(Topic::HealthMonitoring).await?;
    let mut out_of_rotation = BTreeSet::new();
    while let Some(event) = health.next().await {
        let Event::Message { message, .. } = event else { continue };
        match message {
            ServerMessage::CorruptionDetection(c) => {
                out_of_rotation.insert(c.model_id.clone());
                println!(
                    "{}: corrupted ({}) — taken out of rotation",
                    c.model_id, c.corruption_type
                );
                if c.requires_user_action || matches!(c.severity, Severity::Critical) {
                    println!("PAGE on-call: {} needs a person: {}", c.model_id, c.repair_action);
                }
            }
            ServerMessage::ModelRepair(r)
                if r.phase == RepairPhase::Completed && out_of_rotation.remove(&r.model_id) =>
            {
                println!("{}: repaired — back in rotation", r.model_id);
            }
            _ => {}
        }
    }
    Ok(())
}
