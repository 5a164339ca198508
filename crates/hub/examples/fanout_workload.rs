//! A fixed fan-out workload for instruction counts: `cargo xtask callgrind` runs it under
//! `valgrind --tool=callgrind` and prints the total. Wall-clock time drifts on shared
//! machines; the instructions a fixed workload executes do not, so a before/after comparison
//! of the hub's per-delivery path is exact to a fraction of a percent.
//!
//! 1,000 connections subscribe to `download_progress`: 600 without a filter, 400 with a
//! filter of 8 model ids (one of them published). 2,000 progress updates about 10 models
//! (with their state key, subject and retained state, as the notifiers publish them) are fanned
//! out, and every outbox is drained each 100 publishes. No timers, no runtime, no `max_hz`:
//! nothing depends on the clock.

use modelcast_hub::{Connection, Hub, HubConfig, Kind, Publish, Retain, SubscribeOptions};
use modelcast_protocol::{ServerMessage, Topic};

const CONNECTIONS: usize = 1000;
const FILTERED: usize = 400;
const PUBLISHES: usize = 2000;
const MODELS: usize = 10;

fn progress(model: &str, percent: f64) -> ServerMessage {
    serde_json::from_value(serde_json::json!({
        "type": "download_progress_update",
        "data": {
            "model_id": model, "status": "downloading", "progress_percent": percent,
            "downloaded_mb": percent * 10.0, "total_mb": 1000.0, "speed_mbps": 15.2,
            "eta_seconds": 36.0, "can_pause": true, "can_resume": true, "can_cancel": true,
            "timestamp": "2025-08-27T10:30:00Z"
        }
    }))
    .expect("a valid message")
}

fn main() {
    let hub = Hub::new(HubConfig::default());
    let models: Vec<String> = (0..MODELS).map(|i| format!("model-{i}")).collect();
    let connections: Vec<Connection> = (0..CONNECTIONS).map(|_| hub.connect()).collect();
    for (i, connection) in connections.iter().enumerate() {
        let options = if i < FILTERED {
            let mut ids: Vec<String> = (0..7).map(|j| format!("other-{i}-{j}")).collect();
            ids.push(models[i % MODELS].clone());
            SubscribeOptions::default().subjects(Some(ids))
        } else {
            SubscribeOptions::default()
        };
        connection.subscribe(Topic::DownloadProgress, options).expect("subscribe");
    }
    let messages: Vec<ServerMessage> =
        (0..PUBLISHES).map(|i| progress(&models[i % MODELS], (i % 100) as f64)).collect();
    let mut buf = Vec::with_capacity(1024);
    let mut delivered = 0usize;
    for (i, message) in messages.into_iter().enumerate() {
        let model = models[i % MODELS].as_str();
        let publish = Publish::new(message)
            .expect("a topic message")
            .key(model)
            .subject(model)
            .kind(Kind::Update)
            .retain(Retain::Keep);
        hub.publish(publish);
        if i % 100 == 99 {
            for connection in &connections {
                while connection.try_recv(&mut buf, 1024).expect("open") > 0 {
                    delivered += buf.len();
                    buf.clear();
                }
            }
        }
    }
    #[allow(clippy::print_stdout)]
    {
        println!("delivered {delivered} frames");
    }
}
