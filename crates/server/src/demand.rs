//! Demand for models: who wants each model now, so the backend that loads models can preload
//! what is wanted and unload what no one watches. Models are those the backend announced (the
//! hub holds `model_status` or `download_progress` state for them): a filter naming anything
//! else is not counted, so the tracker is bounded by the catalog. A model's watchers are the
//! connections whose subscription filter names it (every node's, from the roster) plus the
//! users whose
//! audience-scoped downloads or generation tasks of it are in progress (the retained state).
//! `GET /api/demand` shows them, with since when and the peak of the last hour; a model going
//! from no watchers to some, and back, is POSTed to `MODELCAST_DEMAND_WEBHOOK` once the change
//! has held for `MODELCAST_DEMAND_DEBOUNCE` (a reconnect storm is no change), signed as
//! Standard Webhooks says, retried with backoff from a bounded queue: never on the fan-out's
//! path. On a cluster every node counts (`watchers.rs`); the node holding the `demand` lease
//! in Redis sends. A leaf: the server's state holds the tracker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

/// How long the peak is remembered.
const PEAK_WINDOW: Duration = Duration::from_secs(3600);

/// Webhook calls waiting to be sent; past it a change is dropped (and logged).
const QUEUE: usize = 1024;

/// Attempts per webhook call (the first and its retries, 1 s apart, doubling).
const ATTEMPTS: u32 = 6;

/// One model's demand as `GET /api/demand` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct ModelDemand {
    pub(crate) model_id: String,
    /// Connections whose filter names it, plus users with its downloads or tasks in progress.
    pub(crate) watchers: usize,
    /// Of them, subscriptions whose filter names it.
    pub(crate) subscriptions: usize,
    /// Of them, users with an audience-scoped download or task of it in progress.
    pub(crate) in_progress: usize,
    /// Since when it has had watchers (`null`: none now).
    pub(crate) since: Option<DateTime<Utc>>,
    /// The most watchers in the last hour (as this node counted them).
    pub(crate) peak_last_hour: usize,
}

/// What is known of one model between counts.
#[derive(Debug, Default)]
struct Tracked {
    current: ModelDemand,
    /// Counts of the last hour: (when, watchers), the oldest first, one per change.
    history: VecDeque<(Instant, usize)>,
    /// Whether the webhook was last told it is watched.
    told_watched: bool,
    /// Since when the count has disagreed with what the webhook was told.
    changing_since: Option<Instant>,
}

/// The demand tracker of one node.
#[derive(Debug)]
pub(crate) struct Demand {
    models: Mutex<BTreeMap<String, Tracked>>,
    debounce: Duration,
    calls: Option<mpsc::Sender<Call>>,
}

/// A webhook call: a model's watchers changed from none to some, or back.
#[derive(Debug, Clone, Serialize)]
struct Call {
    model_id: String,
    watchers: usize,
    watched: bool,
    at: DateTime<Utc>,
}

impl Demand {
    /// The tracker; with `webhook` (its URL and secret), a sender task for its calls.
    pub(crate) fn start(debounce: Duration, webhook: Option<Webhook>) -> Arc<Self> {
        let calls = webhook.map(|webhook| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(send_calls(webhook, rx));
            tx
        });
        Arc::new(Self { models: Mutex::default(), debounce, calls })
    }

    fn models(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracked>> {
        self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every model with watchers now or in the last hour, by id.
    pub(crate) fn snapshot(&self) -> Vec<ModelDemand> {
        self.models().values().map(|t| t.current.clone()).collect()
    }

    /// Takes a count (per model: subscriptions, users in progress) made at `now`; `leader`:
    /// whether this node sends the webhook's calls.
    pub(crate) fn observe(
        &self,
        counts: HashMap<String, (usize, usize)>,
        now: Instant,
        leader: bool,
    ) {
        let mut models = self.models();
        for id in counts.keys() {
            models.entry(id.clone()).or_insert_with(|| Tracked {
                current: ModelDemand { model_id: id.clone(), ..ModelDemand::default() },
                ..Tracked::default()
            });
        }
        let mut calls = Vec::new();
        models.retain(|id, tracked| {
            let (subscriptions, in_progress) = counts.get(id).copied().unwrap_or_default();
            tracked.count(subscriptions, in_progress, now);
            if let Some(call) = tracked.settle(now, self.debounce) {
                calls.push(call);
            }
            tracked.current.watchers > 0 || !tracked.history.is_empty() || tracked.told_watched
        });
        drop(models);
        for call in calls.into_iter().filter(|_| leader) {
            if let Some(tx) = &self.calls
                && tx.try_send(call).is_err()
            {
                tracing::warn!("demand webhook queue full: a change was not sent");
            }
        }
    }
}

impl Tracked {
    /// Records a count.
    fn count(&mut self, subscriptions: usize, in_progress: usize, now: Instant) {
        let watchers = subscriptions + in_progress;
        let current = &mut self.current;
        if watchers > 0 && current.watchers == 0 {
            current.since = Some(Utc::now());
        } else if watchers == 0 {
            current.since = None;
        }
        if self.history.back().is_none_or(|(_, last)| *last != watchers) {
            self.history.push_back((now, watchers));
        }
        while self.history.len() > 1
            && self.history.get(1).is_some_and(|(at, _)| now.duration_since(*at) > PEAK_WINDOW)
        {
            self.history.pop_front();
        }
        if self.history.len() == 1 && watchers == 0 && self.history[0].1 == 0 {
            self.history.clear();
        }
        current.watchers = watchers;
        current.subscriptions = subscriptions;
        current.in_progress = in_progress;
        current.peak_last_hour = self.history.iter().map(|(_, n)| *n).max().unwrap_or(0);
    }

    /// The webhook call due, once the count has disagreed with what was told for `debounce`.
    fn settle(&mut self, now: Instant, debounce: Duration) -> Option<Call> {
        let watched = self.current.watchers > 0;
        if watched == self.told_watched {
            self.changing_since = None;
            return None;
        }
        let since = *self.changing_since.get_or_insert(now);
        if now.duration_since(since) < debounce {
            return None;
        }
        self.told_watched = watched;
        self.changing_since = None;
        Some(Call {
            model_id: self.current.model_id.clone(),
            watchers: self.current.watchers,
            watched,
            at: Utc::now(),
        })
    }
}

#[derive(serde::Deserialize)]
struct FrameData {
    data: Data,
}

#[derive(serde::Deserialize)]
struct Data {
    model_id: Option<String>,
    status: Option<String>,
}

/// The model a frame is about, if any.
pub(crate) fn model_of(frame: &[u8]) -> Option<String> {
    serde_json::from_slice::<FrameData>(frame).ok()?.data.model_id
}

/// The model a download or task frame is about, when it is still in progress.
pub(crate) fn model_in_progress(frame: &[u8]) -> Option<String> {
    let frame: FrameData = serde_json::from_slice(frame).ok()?;
    let ended = ["completed", "complete", "failed", "cancelled", "canceled", "error", "done"];
    let status = frame.data.status.unwrap_or_default();
    (!ended.contains(&status.as_str())).then_some(frame.data.model_id?)
}

/// Where the demand webhook goes, and its secret.
#[derive(Debug, Clone)]
pub(crate) struct Webhook {
    pub(crate) url: hyper::Uri,
    /// The signing key: a `whsec_` secret's base64 decoded, or the secret's bytes.
    pub(crate) key: Vec<u8>,
}

impl Webhook {
    /// From `MODELCAST_DEMAND_WEBHOOK` and `MODELCAST_DEMAND_WEBHOOK_SECRET`.
    pub(crate) fn from_config(
        url: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Option<Self>, String> {
        let Some(url) = url else { return Ok(None) };
        let url: hyper::Uri = url
            .parse()
            .map_err(|e| format!("MODELCAST_DEMAND_WEBHOOK: `{url}` is not a URL: {e}"))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(format!("MODELCAST_DEMAND_WEBHOOK: `{url}` is not an http(s) URL"));
        }
        let secret = secret.ok_or(
            "MODELCAST_DEMAND_WEBHOOK needs MODELCAST_DEMAND_WEBHOOK_SECRET (the calls are signed)",
        )?;
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                .map_err(|e| {
                    format!("MODELCAST_DEMAND_WEBHOOK_SECRET: whsec_ but not base64: {e}")
                })?,
            None => secret.as_bytes().to_vec(),
        };
        if key.len() < 16 {
            return Err("MODELCAST_DEMAND_WEBHOOK_SECRET: at least 16 bytes".into());
        }
        Ok(Some(Self { url, key }))
    }

    /// The Standard Webhooks signature of `body` sent as message `id` at `timestamp`:
    /// `v1,` and the base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let signature = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signature)
        )
    }
}

/// Sends the calls in order, each retried with backoff until it is answered 2xx.
async fn send_calls(webhook: Webhook, mut calls: mpsc::Receiver<Call>) {
    let client = client();
    while let Some(call) = calls.recv().await {
        let id = format!("msg_{:016x}", rand::random::<u64>());
        let body = serde_json::json!({
            "type": if call.watched { "model.watched" } else { "model.unwatched" },
            "timestamp": call.at,
            "data": {"model_id": call.model_id, "watchers": call.watchers},
        });
        let body = Bytes::from(body.to_string());
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            match post(&client, &webhook, &id, body.clone()).await {
                Ok(()) => break,
                Err(err) if attempt == ATTEMPTS => {
                    tracing::warn!(model_id = %call.model_id, "demand webhook failed {ATTEMPTS} times, giving up: {err}");
                }
                Err(err) => {
                    tracing::info!(model_id = %call.model_id, attempt, "demand webhook failed, retrying: {err}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

fn client() -> Client {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = crate::tls::provider();
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// One signed POST within 10 seconds; `Err` unless answered 2xx.
async fn post(client: &Client, webhook: &Webhook, id: &str, body: Bytes) -> Result<(), String> {
    let timestamp = Utc::now().timestamp();
    let request = hyper::Request::post(webhook.url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", webhook.sign(id, timestamp, &body))
        .body(http_body_util::Full::new(body))
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await;
    match answer {
        Err(_) => Err("no answer within 10 s".into()),
        Ok(Err(err)) => Err(err.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("answered {}", response.status())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_told_once_it_held_for_the_debounce_and_a_flap_is_not() {
        let mut tracked = Tracked {
            current: ModelDemand { model_id: "m1".into(), ..ModelDemand::default() },
            ..Tracked::default()
        };
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let debounce = Duration::from_secs(3);
        tracked.count(1, 0, at(0));
        assert!(tracked.settle(at(0), debounce).is_none());
        tracked.count(0, 0, at(1)); // a reconnect storm: gone for a second
        assert!(tracked.settle(at(1), debounce).is_none());
        tracked.count(2, 1, at(2));
        assert!(tracked.settle(at(2), debounce).is_none());
        let call = tracked.settle(at(5), debounce).expect("watched for the debounce");
        assert!(call.watched);
        assert_eq!(call.watchers, 3);
        assert!(tracked.settle(at(6), debounce).is_none(), "told once");
        tracked.count(0, 0, at(7));
        assert!(tracked.settle(at(7), debounce).is_none());
        assert!(!tracked.settle(at(10), debounce).expect("unwatched").watched);
        assert_eq!(tracked.current.peak_last_hour, 3);
    }

    #[test]
    fn a_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let webhook = Webhook::from_config(
            Some("https://example.com/hook"),
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        )
        .unwrap()
        .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            webhook.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
