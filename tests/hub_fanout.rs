//! Hub: serialize once, seq and epoch, key filters, urgent lane, stats, the backplane seam.

use std::sync::Arc;
use std::time::Duration;

use modelcast_hub::{Delivery, Hub, HubConfig, MemoryEngine, Publish, Retain, SubscribeOptions};
use modelcast_protocol::{DownloadStatus, Topic};
use modelcast_tests::msg::{alert, model_status, progress, status_change};
use modelcast_tests::recv::{drain, of_type, seqs};
use serde_json::Value;

const NOW: Duration = Duration::from_millis(200);

/// One publish is serialized once whether 1 or 10,000 subscribers receive it, and every
/// subscriber gets the very same bytes (same buffer address), not a copy.
#[tokio::test]
async fn a_publish_is_serialized_once_for_any_number_of_subscribers() {
    for subscribers in [1usize, 10_000] {
        let hub = Hub::new(HubConfig::default());
        let conns: Vec<_> = (0..subscribers).map(|_| hub.connect()).collect();
        for c in &conns {
            c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
        }
        let before = hub.stats().serializations;
        hub.publish(Publish::new(progress("m", 1.0)).unwrap());
        assert_eq!(hub.stats().serializations - before, 1, "{subscribers} subscribers");

        let mut first: Option<*const u8> = None;
        for c in &conns {
            let mut out: Vec<Delivery> = Vec::new();
            c.recv(&mut out, 16).await.unwrap();
            let frame = out.last().unwrap().frame();
            assert!(frame.as_str().contains("download_progress_update"));
            let ptr = frame.as_bytes().as_ptr();
            assert_eq!(*first.get_or_insert(ptr), ptr, "a subscriber got a copy");
        }
        let stats = hub.stats();
        assert_eq!(stats.topic(Topic::DownloadProgress).delivered, subscribers as u64);
        assert_eq!(stats.topic(Topic::DownloadProgress).subscribers, subscribers as u64);
    }
}

#[tokio::test]
async fn seq_counts_from_one_per_topic_under_a_random_epoch() {
    let hub = Hub::default();
    let other = Hub::default();
    assert_ne!(hub.epoch(), other.epoch());
    let c = hub.connect();
    c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    c.subscribe(Topic::Alerts, SubscribeOptions::default()).unwrap();
    for i in 0..5 {
        hub.publish(Publish::new(progress("m", f64::from(i))).unwrap());
    }
    hub.publish(Publish::new(alert("a")).unwrap());
    let frames = drain(&c, NOW).await.unwrap();
    let subscribed = of_type(&frames, "subscribed");
    assert_eq!(subscribed.len(), 2);
    assert_eq!(subscribed[0]["data"]["epoch"], hub.epoch());
    assert_eq!(subscribed[0]["data"]["seq"], 0);
    let progress_seqs: Vec<u64> = of_type(&frames, "download_progress_update")
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(progress_seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(of_type(&frames, "alert")[0]["seq"], 1);
    assert_eq!(of_type(&frames, "alert")[0]["topic"], "alerts");
    assert_eq!(hub.last_seq(Topic::DownloadProgress), 5);
}

#[tokio::test]
async fn a_subject_filter_passes_its_subjects_and_subjectless_messages_only() {
    let hub = Hub::default();
    let c = hub.connect();
    let opts = SubscribeOptions::default().subjects(Some(vec!["a".into(), "c".into()]));
    c.subscribe(Topic::DownloadProgress, opts).unwrap();
    for key in ["a", "b", "c", "d"] {
        hub.publish(Publish::new(progress(key, 1.0)).unwrap().key(key).subject(key));
    }
    // The state key never decides delivery: keyed but subject-less passes, and a key that
    // happens to equal a listed subject does not make a message about `d` pass.
    hub.publish(Publish::new(progress("keyless", 1.0)).unwrap().key("system"));
    hub.publish(Publish::new(progress("d2", 1.0)).unwrap().key("a").subject("d"));
    let frames = drain(&c, NOW).await.unwrap();
    let models: Vec<&str> = of_type(&frames, "download_progress_update")
        .iter()
        .map(|f| f["data"]["model_id"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["a", "c", "keyless"]);
}

/// Urgent messages are never stuck behind routine ones on the same connection.
#[tokio::test]
async fn urgent_messages_overtake_a_routine_backlog() {
    let hub = Hub::default();
    let c = hub.connect();
    c.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    c.subscribe(Topic::Alerts, SubscribeOptions::default()).unwrap();
    drain(&c, NOW).await.unwrap();
    for i in 0..500 {
        hub.publish(Publish::new(progress("m", f64::from(i) / 5.0)).unwrap().key("m"));
    }
    hub.publish(Publish::new(alert("disk")).unwrap().urgent(true));
    let mut out = Vec::new();
    c.recv(&mut out, 1).await.unwrap();
    assert!(out[0].frame().as_str().contains("\"alert\""), "got {:?}", out[0].frame());
    // ...and the backlog is still complete and in order behind it.
    let rest = drain(&c, NOW).await.unwrap();
    assert_eq!(seqs(&rest), (1..=500).collect::<Vec<u64>>());
}

#[tokio::test]
async fn unsubscribe_and_drop_end_delivery_and_update_stats() {
    let hub = Hub::default();
    let a = hub.connect();
    let b = hub.connect();
    a.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
    b.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
    assert_eq!(hub.stats().topic(Topic::ModelStatus).subscribers, 2);
    assert_eq!(hub.stats().connections, 2);
    assert!(a.unsubscribe(Topic::ModelStatus));
    assert!(!a.unsubscribe(Topic::ModelStatus));
    drop(b);
    let stats = hub.stats();
    assert_eq!(stats.topic(Topic::ModelStatus).subscribers, 0);
    assert_eq!(stats.connections, 1);
    drain(&a, NOW).await.unwrap();
    hub.publish(Publish::new(model_status("m", 1.0)).unwrap());
    assert!(drain(&a, Duration::from_millis(20)).await.unwrap().is_empty());
    assert_eq!(hub.stats().topic(Topic::ModelStatus).published, 1);
}

#[tokio::test]
async fn control_messages_cannot_be_published() {
    let hub = Hub::default();
    let pong = modelcast_protocol::ServerMessage::Pong(modelcast_protocol::Pong {
        request_id: None,
        timestamp: modelcast_tests::msg::ts(),
    });
    assert!(Publish::new(pong.clone()).is_none());
    let err = modelcast_tests::msg::send(&hub, pong).unwrap_err();
    assert!(err.to_string().contains("control message"), "{err}");
}

/// Two hubs on one engine behave as one server: a publish on either reaches subscribers on
/// both at the same `seq` under the same epoch, retained state included; a third node joining
/// later starts with the engine's state.
#[tokio::test]
async fn an_engine_makes_two_hubs_one_sequence() {
    let engine = Arc::new(MemoryEngine::default());
    let a = Hub::with_engine(HubConfig::default(), engine.clone());
    let b = Hub::with_engine(HubConfig::default(), engine.clone());
    let on_a = a.connect();
    let on_b = b.connect();
    on_a.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    on_b.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
    a.publish(Publish::new(progress("m", 10.0)).unwrap().key("m").retain(Retain::Keep));
    b.publish(
        Publish::new(status_change("m", DownloadStatus::Downloading, DownloadStatus::Paused))
            .unwrap()
            .key("m"),
    );
    for conn in [&on_a, &on_b] {
        let frames = drain(conn, NOW).await.unwrap();
        let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["subscribed", "download_progress_update", "download_status_change"]);
        assert_eq!(seqs(&frames), [1, 2]);
    }
    assert_eq!(b.retained(Topic::DownloadProgress).len(), 1, "retained state crossed over");
    assert_eq!(a.position(Topic::DownloadProgress), b.position(Topic::DownloadProgress));
    let c = Hub::with_engine(HubConfig::default(), engine);
    assert_eq!(c.position(Topic::DownloadProgress), a.position(Topic::DownloadProgress));
    assert_eq!(c.retained(Topic::DownloadProgress), a.retained(Topic::DownloadProgress));
}

/// An engine whose log the hub has not loaded until a client needs it (as a Redis node right
/// after its start): it loads a topic when asked to reach it.
#[derive(Debug, Default)]
struct LoadsOnReach(std::sync::Mutex<Option<modelcast_hub::Replica>>);

impl modelcast_hub::Engine for LoadsOnReach {
    fn attach(&self, replica: modelcast_hub::Replica) {
        *self.0.lock().unwrap() = Some(replica);
    }

    fn append(&self, run: Vec<modelcast_hub::Append>) -> Vec<modelcast_hub::Appended> {
        let refused = || Err(modelcast_hub::Error::Unavailable("test".into()));
        run.iter().map(|_| modelcast_hub::Appended::Done(refused())).collect()
    }

    fn claim(&self, _: &str, _: &str) -> modelcast_hub::Pending<modelcast_hub::Claim> {
        modelcast_hub::Pending::ready(Err(modelcast_hub::Error::Unavailable("test".into())))
    }

    fn clear(&self, _: Topic, _: String) -> modelcast_hub::Pending<bool> {
        modelcast_hub::Pending::ready(Ok(false))
    }

    fn unavailable(&self, _topic: Option<Topic>) -> Option<String> {
        None
    }

    fn reach(
        &self,
        topic: Topic,
        _: Option<&modelcast_protocol::Since>,
    ) -> modelcast_hub::Pending<()> {
        let replica = self.0.lock().unwrap().clone().unwrap();
        replica.reset(topic, "the-logs-epoch", 7, Vec::new(), Vec::new());
        modelcast_hub::Pending::ready(Ok(()))
    }
}

/// A node's copy of a topic that its engine has not loaded answers no one: with or without
/// `since`, a subscription is refused as `Behind` (the caller asks the engine to reach it),
/// so no client ever sees the node's placeholder epoch or empty state; after the load it
/// starts at the log's position. A single node's copy is the log from the start.
#[tokio::test]
async fn a_copy_not_loaded_from_the_log_answers_no_one() {
    let hub = Hub::with_engine(HubConfig::default(), Arc::new(LoadsOnReach::default()));
    assert_eq!(hub.loading(), Topic::ALL);
    let conn = hub.connect();
    let since = modelcast_protocol::Since { epoch: hub.position(Topic::Alerts).0, seq: 0 };
    for options in [SubscribeOptions::default(), SubscribeOptions::default().since(Some(since))] {
        let refused = conn.subscribe(Topic::Alerts, options);
        assert!(matches!(refused, Err(modelcast_hub::Error::Behind { .. })), "{refused:?}");
    }
    assert!(drain(&conn, NOW).await.unwrap().is_empty(), "nothing was answered");

    hub.reach(Topic::Alerts, None).wait().await.unwrap();
    assert!(!hub.loading().contains(&Topic::Alerts));
    assert!(hub.loading().contains(&Topic::ModelStatus), "loaded one topic at a time");
    let outcome = conn.subscribe(Topic::Alerts, SubscribeOptions::default()).unwrap();
    assert_eq!((outcome.epoch.as_str(), outcome.seq), ("the-logs-epoch", 7));
    let frames = drain(&conn, NOW).await.unwrap();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["data"]["epoch"], "the-logs-epoch");

    assert!(Hub::default().loading().is_empty(), "a single node is its own log");
}

/// The same publishes, in order: downloads of three models (keyed updates, throttled updates,
/// transitions, keyless updates), alerts (urgent) and model status, interleaved so that runs
/// of one topic are short and long; then a burst of updates of one key.
fn mixed_script() -> Vec<Publish> {
    (0..90u32)
        .map(|i| {
            let model = format!("m{}", i % 3);
            let percent = f64::from(i);
            match i % 9 {
                0..=2 => Publish::new(progress(&model, percent))
                    .unwrap()
                    .key(model.as_str())
                    .subject(model.as_str())
                    .kind(modelcast_hub::Kind::Update),
                3 => Publish::new(progress(&model, percent))
                    .unwrap()
                    .key(model.as_str())
                    .subject(model.as_str())
                    .kind(modelcast_hub::Kind::Update)
                    .throttle(Duration::from_millis(50)),
                4 => Publish::new(status_change(
                    &model,
                    DownloadStatus::Downloading,
                    DownloadStatus::Paused,
                ))
                .unwrap()
                .key(model.as_str())
                .subject(model.as_str())
                .kind(modelcast_hub::Kind::Transition),
                5 => {
                    Publish::new(alert(&format!("a{i}"))).unwrap().key(format!("a{i}")).urgent(true)
                }
                6 => Publish::new(model_status(&model, percent))
                    .unwrap()
                    .key(model.as_str())
                    .retain(Retain::Keep),
                _ => Publish::new(progress("keyless", percent)).unwrap(),
            }
        })
        // A burst of one key's updates at the end: what `max_hz` collapses.
        .chain((0..5).map(|i| {
            Publish::new(progress("m0", f64::from(i)))
                .unwrap()
                .key("m0")
                .subject("m0")
                .kind(modelcast_hub::Kind::Update)
        }))
        .collect()
}

/// A run (which the hub fans out with one lock per subscriber per topic) delivers
/// exactly what `publish` one by one does — same frames, seqs, order and `late` marks — to a
/// subscriber of everything, a subject-filtered one and a `max_hz` one, throttle windows and
/// transitions included; and answers each message as `publish` would.
#[tokio::test(start_paused = true)]
async fn publishing_many_at_once_delivers_what_publishing_one_by_one_does() {
    async fn run(many: bool) -> (Vec<Option<u64>>, Vec<Vec<Value>>) {
        let hub = Hub::default();
        let all = hub.connect();
        for topic in [Topic::DownloadProgress, Topic::Alerts, Topic::ModelStatus] {
            all.subscribe(topic, SubscribeOptions::default()).unwrap();
        }
        let filtered = hub.connect();
        let only_m1 = SubscribeOptions::default().subjects(Some(vec!["m1".into()]));
        filtered.subscribe(Topic::DownloadProgress, only_m1).unwrap();
        let rated = hub.connect();
        let slow = SubscribeOptions::default().max_hz(Some(5.0));
        rated.subscribe(Topic::DownloadProgress, slow).unwrap();
        let conns = [all, filtered, rated];
        for c in &conns {
            drain(c, NOW).await.unwrap();
        }
        let published = if many {
            hub.publish(mixed_script())
        } else {
            mixed_script().into_iter().flat_map(|p| hub.publish(p)).collect()
        };
        let seqs = published
            .iter()
            .map(|p| match p {
                modelcast_hub::Published::Sent(at) => Some(at.seq),
                _ => None,
            })
            .collect();
        // Throttle windows and max_hz hold-backs end on the (paused, auto-advancing) clock.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut received = Vec::new();
        for c in &conns {
            received.push(drain(c, NOW).await.unwrap());
        }
        (seqs, received)
    }
    let (one_by_one, frames_one) = run(false).await;
    let (many, frames_many) = run(true).await;
    assert_eq!(one_by_one, many, "each message is answered the same");
    assert_eq!(frames_one, frames_many);
    let [all, filtered, rated] = &frames_many[..] else { unreachable!() };
    // The comparison is not vacuous: every kind of subscriber got a mix of frames.
    assert_eq!(of_type(all, "alert").len(), 10);
    assert_eq!(of_type(all, "model_status_update").len(), 10);
    assert!(of_type(all, "download_progress_update").len() > 30, "{}", all.len());
    assert!(!filtered.is_empty() && filtered.len() < all.len());
    assert!(
        filtered
            .iter()
            .all(|f| f["data"]["model_id"] == "m1" || f["data"]["model_id"] == "keyless")
    );
    let keyed_updates = |frames: &[Value]| {
        of_type(frames, "download_progress_update")
            .iter()
            .filter(|f| f["data"]["model_id"] != "keyless")
            .count()
    };
    assert!(
        keyed_updates(rated) < keyed_updates(all),
        "max_hz held keyed updates back: {} of {}",
        keyed_updates(rated),
        keyed_updates(all)
    );
    assert!(one_by_one.iter().filter(|s| s.is_none()).count() > 0, "some were held");
}
