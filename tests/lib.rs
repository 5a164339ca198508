//! Shared helpers for modelcast's end-to-end tests: paths, fixtures and the committed schemas.
//!
//! This package is `publish = false` and holds one test binary (`tests.rs`); it may depend on
//! every workspace crate, and nothing depends on it.

pub mod arbitrary;
pub mod cluster_util;
pub mod failover_util;
pub mod push_util;
pub mod server_util;
pub mod tls_util;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `*.json` file in `tests/fixtures/<dir>`, as `(file stem, value)`, sorted by name.
pub fn fixtures(dir: &str) -> Vec<(String, Value)> {
    let dir = root().join("tests/fixtures").join(dir);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), read_json(&p)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The committed schema `schemas/<rel>`.
pub fn committed_schema(rel: &str) -> Value {
    read_json(&root().join("schemas").join(rel))
}

/// A validator for the committed schema `schemas/<rel>`, checking `format`s too.
pub fn validator(rel: &str) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&committed_schema(rel))
        .unwrap_or_else(|e| panic!("schemas/{rel} is not a valid schema: {e}"))
}

pub mod msg {
    //! Builders for the messages tests publish, and [`send`], one message through a hub.

    use chrono::{DateTime, Utc};
    use modelcast_protocol::*;

    /// Publishes `message` on `hub` with the default policy (an event, no key): a run of one.
    /// Refused for a control message, which has no topic.
    pub fn send(
        hub: &modelcast_hub::Hub,
        message: ServerMessage,
    ) -> Result<modelcast_hub::Published, modelcast_hub::Error> {
        let type_name = message.type_name();
        let publish = modelcast_hub::Publish::new(message)
            .ok_or(modelcast_hub::Error::NotATopicMessage { type_name })?;
        Ok(hub.publish(publish).remove(0))
    }

    /// A fixed timestamp, so frames compare equal across runs.
    pub fn ts() -> DateTime<Utc> {
        DateTime::from_timestamp(1_756_290_600, 0).expect("valid")
    }

    /// A `download_progress_update` of `model` at `percent`.
    pub fn progress(model: &str, percent: f64) -> ServerMessage {
        ServerMessage::DownloadProgressUpdate(DownloadProgressUpdate {
            model_id: model.into(),
            status: DownloadStatus::Downloading,
            progress_percent: percent,
            downloaded_mb: percent * 10.0,
            total_mb: 1000.0,
            speed_mbps: 15.2,
            eta_seconds: Some(36.0),
            can_pause: true,
            can_resume: false,
            can_cancel: true,
            timestamp: ts(),
        })
    }

    /// A `download_status_change` of `model` from `old` to `new`.
    pub fn status_change(model: &str, old: DownloadStatus, new: DownloadStatus) -> ServerMessage {
        ServerMessage::DownloadStatusChange(DownloadStatusChange {
            model_id: model.into(),
            old_status: old,
            new_status: new,
            progress_percent: 0.0,
            reason: "test".into(),
            event: None,
            error_message: None,
            timestamp: ts(),
        })
    }

    /// A `model_status_update` of `model` with `size_mb` as a distinguishing value.
    pub fn model_status(model: &str, size_mb: f64) -> ServerMessage {
        ServerMessage::ModelStatusUpdate(ModelStatusUpdate {
            model_id: model.into(),
            availability_status: AvailabilityStatus::Available,
            is_available: true,
            is_loaded: false,
            size_mb,
            integrity_score: 1.0,
            performance_score: 1.0,
            usage_frequency: 0.0,
            update_available: false,
            vram_mb: None,
            timestamp: ts(),
        })
    }

    /// An `alert` with id `id`.
    pub fn alert(id: &str) -> ServerMessage {
        ServerMessage::Alert(Alert {
            alert_id: id.into(),
            level: AlertLevel::Warning,
            title: "t".into(),
            message: "m".into(),
            source: None,
            model_id: None,
            timestamp: ts(),
        })
    }
}

pub mod recv {
    //! Reading a hub connection's frames as JSON.

    use std::time::Duration;

    use modelcast_hub::{Connection, Delivery, DropReason};
    use serde_json::Value;

    /// Everything queued now; waits at most `wait` for the first frame, then takes only what
    /// is already there (so on a paused clock it never advances time after the first frame).
    pub async fn drain(conn: &Connection, wait: Duration) -> Result<Vec<Value>, DropReason> {
        let mut out: Vec<Delivery> = Vec::new();
        let mut wait = wait;
        loop {
            let before = out.len();
            let got = tokio::time::timeout(wait, conn.recv(&mut out, 4096)).await;
            wait = Duration::ZERO;
            match got {
                Ok(Ok(())) if out.len() > before => continue,
                Ok(Err(reason)) if out.is_empty() => return Err(reason),
                _ => break,
            }
        }
        Ok(out.iter().map(|d| serde_json::from_slice(d.frame().as_bytes()).unwrap()).collect())
    }

    /// The `seq`s of the topic frames among `frames`.
    pub fn seqs(frames: &[Value]) -> Vec<u64> {
        frames.iter().filter_map(|f| f["seq"].as_u64()).collect()
    }

    /// The frames of `type` `ty`.
    pub fn of_type<'a>(frames: &'a [Value], ty: &str) -> Vec<&'a Value> {
        frames.iter().filter(|f| f["type"] == ty).collect()
    }
}
