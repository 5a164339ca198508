//! A service wiring its own downloader to the notifiers.
//!
//! `cargo run -p modelcast-notifiers --example downloader`
//!
//! The downloader knows nothing about WebSockets or JSON: it reports typed events into a
//! channel (`notifiers.download_events()` — the one line of wiring). The policy throttles the
//! progress, keeps the order of status changes, and retains the active download for clients
//! that subscribe late. A hub subscriber prints what a frontend would receive.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use modelcast_hub::{Hub, SubscribeOptions};
use modelcast_notifiers::{DownloadEvent, Notifiers, NotifiersConfig, Policy, PolicyConfig};
use modelcast_protocol::Topic;
use tokio::sync::mpsc;

/// Your downloader: reports what it does, nothing more.
struct Downloader {
    events: mpsc::Sender<DownloadEvent>,
}

impl Downloader {
    async fn download(
        &self,
        model_id: &str,
        total_mb: f64,
    ) -> Result<(), mpsc::error::SendError<DownloadEvent>> {
        let model_id = model_id.to_owned();
        self.events.send(DownloadEvent::Started { model_id: model_id.clone(), total_mb }).await?;
        let mut done = 0.0;
        while done < total_mb {
            tokio::time::sleep(Duration::from_millis(100)).await;
            done = (done + 64.0).min(total_mb);
            let progress = DownloadEvent::Progress {
                model_id: model_id.clone(),
                downloaded_mb: done,
                total_mb,
                speed_mbps: 640.0,
            };
            self.events.send(progress).await?;
        }
        self.events.send(DownloadEvent::Completed { model_id }).await
    }
}

#[tokio::main]
async fn main() {
    let hub = Hub::default();
    let policy = PolicyConfig::default().download_progress_throttle(Duration::from_millis(500));
    let notifiers = Notifiers::new(Policy::new(&hub, policy), NotifiersConfig::default());

    // What a frontend subscribed to `download_progress` receives.
    let frontend = hub.connect();
    frontend.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).expect("subscribe");

    // The wiring: one line.
    let downloader = Downloader { events: notifiers.download_events() };
    tokio::spawn(async move { downloader.download("t2v-a14b", 2048.0).await });

    let mut frames = Vec::new();
    loop {
        frontend.recv(&mut frames, 64).await.expect("open");
        for delivery in frames.drain(..) {
            let text = delivery.frame().as_str().to_owned();
            println!("{text}");
            if text.contains("\"new_status\":\"completed\"") {
                return;
            }
        }
    }
}
