//! Hub: whatever a publisher or a client makes the hub keep has an owner that frees it and a
//! limit — filters, keys, retained state, `max_hz` windows — observed through the hub's own
//! counters (`HubStats::keys`, `TopicStats::state_keys`, `state_evicted`).

use std::time::Duration;

use modelcast_hub::{Error, Hub, HubConfig, Kind, Publish, Retain, SubscribeOptions};
use modelcast_protocol::Topic;
use modelcast_tests::msg::{alert, model_status, progress};
use modelcast_tests::recv::{drain, of_type};

const NOW: Duration = Duration::from_millis(200);

fn filter(ids: impl Iterator<Item = String>) -> SubscribeOptions {
    SubscribeOptions::default().subjects(Some(ids.collect()))
}

#[tokio::test]
async fn a_filters_ids_are_freed_with_its_subscription_and_capped() {
    let hub = Hub::new(HubConfig::default().filter_max_subjects(500));
    let before = hub.stats().keys;
    let c = hub.connect();
    for round in 0..20 {
        // A fresh filter each time replaces the last: only the live one is held.
        let ids = (0..500).map(|i| format!("r{round}-id{i}"));
        c.subscribe(Topic::Alerts, filter(ids)).unwrap();
        assert_eq!(hub.stats().keys, before + 500, "round {round}: one filter's ids");
    }
    assert!(hub.knows_key("r19-id0") && !hub.knows_key("r0-id0"));
    c.unsubscribe(Topic::Alerts);
    assert_eq!(hub.stats().keys, before, "unsubscribed: nothing kept");

    c.subscribe(Topic::Alerts, filter((0..300).map(|i| format!("x{i}")))).unwrap();
    drop(c);
    assert_eq!(hub.stats().keys, before, "a closed connection keeps nothing");

    let c = hub.connect();
    let err = c.subscribe(Topic::Alerts, filter((0..501).map(|i| format!("y{i}")))).unwrap_err();
    assert_eq!(err, Error::FilterTooLarge { got: 501, max: 500 });
    assert!(err.to_string().contains("at most 500 ids"), "{err}");
    assert_eq!(hub.stats().keys, before, "a refused filter keeps nothing");
}

#[tokio::test]
async fn published_keys_live_while_state_or_history_holds_them() {
    let hub = Hub::new(HubConfig::default().history_size(5));
    for i in 0..50 {
        let id = format!("task-{i}");
        hub.publish(Publish::new(alert(&id)).unwrap().key(id.as_str()).subject(id.as_str()));
    }
    // Five messages of history hold their keys (one each, as key and subject).
    assert_eq!(hub.stats().keys, 5);
    let kept = Publish::new(model_status("m", 1.0)).unwrap().key("m").retain(Retain::Keep);
    hub.publish(kept);
    for i in 0..10 {
        hub.publish(Publish::new(alert(&format!("later-{i}"))).unwrap());
    }
    assert_eq!(hub.stats().keys, 1, "history rolled over; the retained key stays");
    assert!(hub.knows_key("m"));
    hub.clear_state(Topic::ModelStatus, "m", None).await.unwrap();
    // Still in model_status's history (five of its messages are kept): only that holds it.
    assert!(hub.knows_key("m"));
}

#[tokio::test]
async fn retained_state_is_capped_and_the_oldest_updated_key_leaves_with_a_notice() {
    let hub = Hub::new(HubConfig::default().state_max_keys(3));
    let keep = |m: &str, size: f64| {
        Publish::new(model_status(m, size)).unwrap().key(m).subject(m).retain(Retain::Keep)
    };
    let all = hub.connect();
    all.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
    let only_b = hub.connect();
    only_b.subscribe(Topic::ModelStatus, filter(["b".to_owned()].into_iter())).unwrap();
    for m in ["a", "b", "c"] {
        hub.publish(keep(m, 1.0));
    }
    hub.publish(keep("a", 2.0)); // a is now the newest: b is the oldest-updated
    hub.publish(keep("d", 1.0));
    hub.publish(keep("e", 1.0));
    let stats = hub.stats();
    let topic = stats.topic(Topic::ModelStatus);
    assert_eq!((topic.state_keys, topic.state_evicted), (3, 2));
    let held: Vec<String> = hub
        .retained(Topic::ModelStatus)
        .iter()
        .map(|f| serde_json::from_slice::<serde_json::Value>(f.as_bytes()).unwrap())
        .map(|f| f["data"]["model_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(held, ["a", "d", "e"]);
    let frames = drain(&all, NOW).await.unwrap();
    let cleared: Vec<&str> = of_type(&frames, "state_cleared")
        .iter()
        .map(|f| f["data"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(cleared, ["b", "c"], "each evicted key is announced");
    let frames = drain(&only_b, NOW).await.unwrap();
    let cleared: Vec<&str> = of_type(&frames, "state_cleared")
        .iter()
        .map(|f| f["data"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(cleared, ["b"], "to the subscribers whose filter passes the key");
}

#[tokio::test]
async fn state_pages_cover_the_state_once_in_order_without_splitting_a_seq() {
    let hub = Hub::default();
    for i in 0..25 {
        let m = format!("m{i:02}");
        hub.publish(
            Publish::new(model_status(&m, 1.0)).unwrap().key(m.as_str()).retain(Retain::Keep),
        );
    }
    let whole = hub.retained(Topic::ModelStatus);
    let mut paged = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = hub.state_page(Topic::ModelStatus, after, 10, None);
        assert_eq!(page.keys, 25);
        pages += 1;
        paged.extend(page.frames);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged, whole, "the pages are the state, once, in order");
}

#[tokio::test(start_paused = true)]
async fn max_hz_windows_are_forgotten_once_they_end() {
    let hub = Hub::new(HubConfig::default().history_size(10).outbox_capacity(5000));
    let c = hub.connect();
    let options = SubscribeOptions::default().max_hz(Some(1.0));
    c.subscribe(Topic::DownloadProgress, options).unwrap();
    let update = |m: &str| Publish::new(progress(m, 1.0)).unwrap().key(m).kind(Kind::Update);
    for i in 0..2000 {
        hub.publish(update(&format!("k{i}")));
    }
    drain(&c, NOW).await.unwrap();
    assert!(hub.stats().keys >= 2000, "windows still open hold their keys");
    tokio::time::advance(Duration::from_secs(2)).await;
    for i in 0..200 {
        hub.publish(update(&format!("later{i}")));
    }
    drain(&c, NOW).await.unwrap();
    let keys = hub.stats().keys;
    assert!(keys <= 10 + 200, "ended windows were forgotten: {keys} keys held");
}

/// Issue 34, high: the memory a maximal audience costs (64 users and 64 roles of 256 bytes:
/// its names in the message and interned once more) was not counted in the history's byte
/// budget, so a budget of 1 MiB held 165 KiB per entry. The budget counts what an entry keeps
/// alive: its frame, its key and its audience.
#[tokio::test]
async fn the_history_budget_counts_an_entrys_audience() {
    let hub = Hub::new(HubConfig::default().history_bytes(1 << 20));
    let name = |prefix: &str, i: usize| format!("{prefix}{i:03}{}", "n".repeat(252));
    let audience =
        modelcast_hub::Audience::new((0..64).map(|i| name("u", i)), (0..64).map(|i| name("r", i)));
    for i in 0..100 {
        let publish = Publish::new(alert(&format!("a{i}"))).unwrap().audience(audience.clone());
        hub.publish(publish);
    }
    // Recover from the start as an operator would read history: what it still holds.
    let c = hub.connect();
    let since = modelcast_protocol::Since { epoch: hub.epoch().to_owned(), seq: 0 };
    let outcome = c.subscribe(Topic::Alerts, SubscribeOptions::default().since(Some(since)));
    let held = 100 - outcome.unwrap().seq;
    // Each entry keeps about 64 KiB of names (twice 128 names of 256 bytes): 1 MiB holds ~16.
    assert!((10..=20).contains(&held), "{held} entries of about 65 KiB in a 1 MiB budget");
}
