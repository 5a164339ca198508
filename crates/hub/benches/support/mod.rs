//! What the hub's benches share: the message they publish, and a timed publishing loop that
//! drains the outboxes outside the timed section.

use std::hint::black_box;
use std::time::{Duration, Instant};

use modelcast_hub::{Connection, Hub, Publish};
use modelcast_protocol::ServerMessage;

/// A ~150-byte progress frame, like the ones the seed's clients receive.
pub(crate) fn message() -> ServerMessage {
    serde_json::from_value(serde_json::json!({
        "type": "download_progress_update",
        "data": {
            "model_id": "t2v-a14b", "status": "downloading", "progress_percent": 45.5,
            "downloaded_mb": 455.0, "total_mb": 1000.0, "speed_mbps": 15.2, "eta_seconds": 36.0,
            "can_pause": true, "can_resume": true, "can_cancel": true,
            "timestamp": "2025-08-27T10:30:00Z"
        }
    }))
    .expect("valid message")
}

/// Empties every outbox.
pub(crate) fn drain(conns: &[Connection], buf: &mut Vec<modelcast_hub::Delivery>) {
    for c in conns {
        while c.try_recv(buf, 1024).expect("open") > 0 {
            buf.clear();
        }
    }
}

/// Publishes `iters` times what `make(i)` builds, timing only the publishes; the outboxes are
/// drained every `drain_every` publishes and at the end, untimed.
pub(crate) fn timed(
    hub: &Hub,
    conns: &[Connection],
    iters: u64,
    drain_every: u64,
    make: impl Fn(u64) -> Publish,
) -> Duration {
    let mut buf = Vec::with_capacity(1024);
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let publish = make(i);
        let start = Instant::now();
        hub.publish(black_box(publish));
        total += start.elapsed();
        if i % drain_every == drain_every - 1 {
            drain(conns, &mut buf);
        }
    }
    drain(conns, &mut buf);
    total
}
