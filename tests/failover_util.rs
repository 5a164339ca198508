//! Failover checks shared by the Sentinel and Redis Cluster tests: a subscriber's view of an
//! alert stream, a publisher that retries with an `Idempotency-Key`, and the delivery rules
//! every failover must keep.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster_util::{Node, alert};
use crate::server_util::Client;

/// A client of `node` named `id`, subscribed to `alerts`, with its view.
pub async fn alerts_subscriber(node: &Node, id: &str) -> (Client, View) {
    let mut client = node.ws(id).await;
    client.send_json(&json!({"action": "subscribe", "topic": "alerts"})).await;
    let mut view = View::default();
    view.take(&client.next_of_type("subscribed").await);
    (client, view)
}

/// What one subscriber saw: alerts by epoch and seq, and whether it was told of a gap.
#[derive(Debug, Default)]
pub struct View {
    epoch: String,
    /// The newest seq it holds in `epoch` (from `subscribed`, then each alert).
    position: u64,
    /// (epoch, seq) → alert id, in arrival order.
    pub alerts: Vec<((String, u64), String)>,
    /// Whether it was told of a gap (`recovered: false` after it had alerts).
    pub told: bool,
}

impl View {
    /// Takes one frame in.
    pub fn take(&mut self, frame: &Value) {
        if frame["type"] == "subscribed" {
            self.epoch = frame["data"]["epoch"].as_str().unwrap().to_owned();
            self.position = frame["data"]["seq"].as_u64().unwrap();
            if frame["data"]["recovered"] == false && !self.alerts.is_empty() {
                self.told = true;
            }
        } else if frame["type"] == "alert" && frame["late"] != true {
            self.position = frame["seq"].as_u64().unwrap();
            let at = (self.epoch.clone(), self.position);
            self.alerts.push((at, frame["data"]["alert_id"].as_str().unwrap().to_owned()));
        }
    }

    /// The alert ids it received.
    pub fn ids(&self) -> BTreeSet<&str> {
        self.alerts.iter().map(|(_, id)| id.as_str()).collect()
    }
}

/// Reads what has arrived on `client`, drops its connection, and subscribes again on `node`
/// (as `id`) with `since` the last position it read, as a client that lost its connection
/// does: what it had not read yet must be replayed, or it is told.
pub async fn reconnect(client: &mut Client, view: &mut View, node: &Node, id: &str) {
    use futures_util::StreamExt;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(100), client.ws.next()).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            view.take(&serde_json::from_str(text.as_str()).unwrap());
        }
    }
    let mut again = node.ws(id).await;
    let since = json!({"epoch": view.epoch, "seq": view.position});
    again.send_json(&json!({"action": "subscribe", "topic": "alerts", "since": since})).await;
    view.take(&again.next_of_type("subscribed").await);
    *client = again;
}

/// Reads `client` until `last` arrived and nothing more comes for a moment.
pub async fn read_until(client: &mut Client, view: &mut View, last: &str) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wait = if view.ids().contains(last) { 800 } else { 5_000 };
        match tokio::time::timeout(Duration::from_millis(wait), client.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                view.take(&serde_json::from_str(text.as_str()).unwrap());
            }
            Ok(Some(Ok(_))) => {}
            _ if view.ids().contains(last) => return,
            _ if tokio::time::Instant::now() > deadline => panic!("`{last}` never arrived"),
            _ => {}
        }
    }
}

/// Publishes `alert(id)` on `node` as a careful backend does: with an `Idempotency-Key`,
/// retrying on 503 until accepted. Returns how long it took.
pub async fn publish_retrying(node: &Node, id: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, _, reply) = node.publish(&alert(id), &[("idempotency-key", id)]).await;
        match status {
            202 => return start.elapsed(),
            503 if start.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("{id}: {status} {reply}"),
        }
    }
}

/// The topics' fences all `nodes` made: the fence runs once, in Redis, by whichever node
/// noticed first.
pub async fn fences(nodes: &[Node]) -> u64 {
    let mut fences = 0;
    for node in nodes {
        fences += node.stats().await["engine"]["topic_fences"].as_u64().unwrap();
    }
    fences
}

/// Every epoch any client received alerts under: one event (a failover) makes one epoch, not
/// one per node that noticed it.
pub fn epochs(clients: &[(Client, View)]) -> BTreeSet<String> {
    clients.iter().flat_map(|(_, view)| view.alerts.iter().map(|((e, _), _)| e.clone())).collect()
}

/// Reads every client until `a{total-1}` arrived and checks what it saw: no `(epoch, seq)`
/// with two messages on any connection, in order within an epoch, every acknowledged alert
/// (`a0..a{total}`) received or the subscriber told, and none published from `kill_at` on
/// missing. Prints what each missed (a measurement).
#[allow(clippy::print_stderr)]
pub async fn check_deliveries(clients: &mut [(Client, View)], total: usize, kill_at: usize) {
    let mut seen: HashMap<(String, u64), String> = HashMap::new();
    let last = format!("a{}", total - 1);
    for (client, view) in clients.iter_mut() {
        read_until(client, view, &last).await;
        // No (epoch, seq) ever carried two different messages, on any connection.
        for (at, id) in &view.alerts {
            if let Some(before) = seen.insert(at.clone(), id.clone()) {
                assert_eq!(&before, id, "{at:?} carried two messages");
            }
        }
        // Within an epoch, in order and once.
        let mut by_epoch: HashMap<&str, Vec<u64>> = HashMap::new();
        for ((epoch, seq), _) in &view.alerts {
            by_epoch.entry(epoch).or_default().push(*seq);
        }
        for (epoch, seqs) in by_epoch {
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{epoch}: {seqs:?}");
        }
        // Every acknowledged message arrived, or the subscriber was told (recovered:false).
        let ids = view.ids();
        let missing: Vec<String> =
            (0..total).map(|i| format!("a{i}")).filter(|id| !ids.contains(id.as_str())).collect();
        assert!(missing.is_empty() || view.told, "lost silently: {missing:?}");
        // What was published once the new primary served is never missing.
        assert!(
            missing.iter().all(|id| id[1..].parse::<usize>().unwrap() < kill_at),
            "{missing:?}"
        );
        eprintln!("a subscriber: {} missing, told: {}", missing.len(), view.told);
    }
}
