//! A backend publishing a download to a running modelcast over HTTP, as the seed's Python
//! services would: typed messages from `modelcast-protocol`, `POST /api/publish`.
//!
//! Start a server (`cargo run --release -p modelcast-server`), open <http://127.0.0.1:8000/>,
//! then: `cargo run -p modelcast-server --example publish_download -- http://127.0.0.1:8000`
//! (optional second argument: milliseconds between progress reports, default 500).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use modelcast_protocol::{
    DownloadEvent, DownloadProgressUpdate, DownloadStatus, DownloadStatusChange, ServerMessage,
};

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Publishes one message; prints the server's answer.
async fn publish(http: &Http, base: &str, message: ServerMessage) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&message)?;
    let request = hyper::Request::post(format!("{base}/api/publish"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = http.request(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    println!("{} {status} {}", message.type_name(), String::from_utf8_lossy(&answer));
    anyhow::ensure!(status.is_success(), "the server refused the message");
    Ok(())
}

fn change(
    model: &str,
    old: DownloadStatus,
    new: DownloadStatus,
    percent: f64,
    event: DownloadEvent,
) -> ServerMessage {
    ServerMessage::DownloadStatusChange(DownloadStatusChange {
        model_id: model.into(),
        old_status: old,
        new_status: new,
        progress_percent: percent,
        reason: "example".into(),
        event: Some(event),
        error_message: None,
        timestamp: chrono::Utc::now(),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let base = base.trim_end_matches('/').to_owned();
    let pause = std::time::Duration::from_millis(args.next().map_or(Ok(500), |a| a.parse())?);
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let (model, total) = ("example-7b", 1000.0);
    publish(
        &http,
        &base,
        change(
            model,
            DownloadStatus::Queued,
            DownloadStatus::Downloading,
            0.0,
            DownloadEvent::Started,
        ),
    )
    .await?;
    for step in 1..=10 {
        let done = total * f64::from(step) / 10.0;
        let status =
            if step == 10 { DownloadStatus::Completed } else { DownloadStatus::Downloading };
        publish(
            &http,
            &base,
            ServerMessage::DownloadProgressUpdate(DownloadProgressUpdate {
                model_id: model.into(),
                status,
                progress_percent: done / total * 100.0,
                downloaded_mb: done,
                total_mb: total,
                speed_mbps: 50.0,
                eta_seconds: Some((total - done) / 50.0),
                can_pause: step < 10,
                can_resume: false,
                can_cancel: step < 10,
                timestamp: chrono::Utc::now(),
            }),
        )
        .await?;
        tokio::time::sleep(pause).await;
    }
    publish(
        &http,
        &base,
        change(
            model,
            DownloadStatus::Downloading,
            DownloadStatus::Completed,
            100.0,
            DownloadEvent::Completed,
        ),
    )
    .await?;
    Ok(())
}
