//! Hub: retained state, history and recovery with `since`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use modelcast_hub::{Hub, HubConfig, Publish, Retain, SubscribeOptions};
use modelcast_protocol::{DownloadStatus, Since, Topic};
use modelcast_tests::msg::{model_status, progress, status_change};
use modelcast_tests::recv::{drain, of_type, seqs};
use rand::{Rng, SeedableRng};
use serde_json::Value;

const NOW: Duration = Duration::from_millis(200);

fn keep(model: &str, size: f64) -> Publish {
    Publish::new(model_status(model, size)).unwrap().key(model).retain(Retain::Keep)
}

#[tokio::test]
async fn retained_state_is_sent_first_and_cleared_keys_leave_it() {
    let hub = Hub::default();
    hub.publish(keep("a", 1.0));
    hub.publish(keep("b", 1.0));
    hub.publish(keep("a", 2.0)); // newest per key wins
    hub.publish(Publish::new(model_status("c", 1.0)).unwrap().key("c")); // not retained
    let c = hub.connect();
    let outcome = c.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
    assert_eq!((outcome.seq, outcome.recovered, outcome.initial), (4, false, 2));
    hub.publish(keep("d", 1.0));
    let frames = drain(&c, NOW).await.unwrap();
    assert_eq!(frames[0]["type"], "subscribed");
    let got: Vec<(String, f64, u64)> = frames[1..]
        .iter()
        .map(|f| {
            (
                f["data"]["model_id"].as_str().unwrap().into(),
                f["data"]["size_mb"].as_f64().unwrap(),
                f["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("b".into(), 1.0, 2), ("a".into(), 2.0, 3), ("d".into(), 1.0, 5)]);

    // A download's state is retained while active and cleared when it completes.
    hub.publish(Publish::new(progress("m", 50.0)).unwrap().key("m").retain(Retain::Keep));
    assert_eq!(hub.retained(Topic::DownloadProgress).len(), 1);
    let done = status_change("m", DownloadStatus::Downloading, DownloadStatus::Completed);
    hub.publish(Publish::new(done).unwrap().key("m").retain(Retain::Clear));
    assert!(hub.retained(Topic::DownloadProgress).is_empty());
}

/// Subscribers joining while four threads publish: each gets `subscribed` (seq S), then the
/// newest retained frame per key as of S, then exactly S+1, S+2, … — no gap, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_then_live_has_no_gap_or_duplicate_under_concurrent_publishers() {
    const PER_THREAD: usize = 2_000;
    let hub = Hub::new(HubConfig::default().outbox_capacity(1_000_000));
    let witness = hub.connect();
    witness.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();

    let publishers: Vec<_> = (0..4)
        .map(|t| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    hub.publish(keep(&format!("k{}", (i + t) % 10), (t * PER_THREAD + i) as f64));
                    if i % 100 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut joiners = Vec::new();
    while joiners.len() < 40 {
        let c = hub.connect();
        c.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
        joiners.push(c);
        std::thread::sleep(Duration::from_micros(200));
    }
    for p in publishers {
        p.join().unwrap();
    }
    let total = (4 * PER_THREAD) as u64;
    let all = drain(&witness, NOW).await.unwrap();
    assert_eq!(seqs(&all), (1..=total).collect::<Vec<_>>());
    let by_seq: BTreeMap<u64, &Value> =
        all.iter().filter_map(|f| Some((f["seq"].as_u64()?, f))).collect();

    let mut joined_mid_stream = 0;
    for c in &joiners {
        let frames = drain(c, NOW).await.unwrap();
        let start = frames[0]["data"]["seq"].as_u64().unwrap();
        if start > 0 && start < total {
            joined_mid_stream += 1;
        }
        // The retained snapshot: for each key, the newest frame at or before `start`.
        let mut expected: HashMap<&str, u64> = HashMap::new();
        for (seq, f) in by_seq.range(..=start) {
            expected.insert(f["data"]["model_id"].as_str().unwrap(), *seq);
        }
        let snapshot: Vec<&Value> =
            frames[1..].iter().take_while(|f| f["seq"].as_u64().unwrap() <= start).collect();
        let got: HashMap<&str, u64> = snapshot
            .iter()
            .map(|f| (f["data"]["model_id"].as_str().unwrap(), f["seq"].as_u64().unwrap()))
            .collect();
        assert_eq!(got, expected, "snapshot at {start}");
        assert_eq!(snapshot.len(), expected.len(), "a key twice in the snapshot");
        let live: Vec<u64> = seqs(&frames[1 + snapshot.len()..]);
        assert_eq!(live, (start + 1..=total).collect::<Vec<_>>(), "live after {start}");
    }
    assert!(
        joined_mid_stream > 0,
        "no subscriber joined while publishing; the test proved nothing"
    );
}

/// Subscribers disconnect and reconnect with `since` at random points while a publisher runs:
/// together their streams hold every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reconnects_with_since_lose_and_duplicate_nothing() {
    const TOTAL: u64 = 5_000;
    let hub = Hub::new(HubConfig::default().history_size(100_000).outbox_capacity(100_000));
    let mut clients = Vec::new();
    for seed in 0..16u64 {
        let hub = hub.clone();
        let first = hub.connect();
        first.subscribe(Topic::DownloadProgress, SubscribeOptions::default()).unwrap();
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut received: Vec<u64> = Vec::new();
            let mut conn = Some(first);
            let mut reconnects = 0;
            while received.last() != Some(&TOTAL) {
                let c = match conn.take() {
                    Some(c) => c,
                    None => {
                        let c = hub.connect();
                        let since = Since {
                            epoch: hub.epoch().into(),
                            seq: received.last().copied().unwrap_or(0),
                        };
                        let o = c
                            .subscribe(
                                Topic::DownloadProgress,
                                SubscribeOptions::default().since(Some(since)),
                            )
                            .unwrap();
                        assert!(
                            o.recovered,
                            "client {seed}: history holds everything, yet not recovered"
                        );
                        reconnects += 1;
                        c
                    }
                };
                // Read a random number of frames, then vanish (the rest of a batch is lost).
                let want = rng.random_range(1..300);
                let mut taken = 0;
                while taken < want && received.last() != Some(&TOTAL) {
                    let mut out = Vec::new();
                    if tokio::time::timeout(Duration::from_secs(10), c.recv(&mut out, 64))
                        .await
                        .is_err()
                    {
                        panic!("client {seed} starved at {:?}", received.last());
                    }
                    for d in out {
                        let v: Value = serde_json::from_slice(d.frame().as_bytes()).unwrap();
                        if let Some(seq) = v["seq"].as_u64()
                            && taken < want
                        {
                            received.push(seq);
                            taken += 1;
                        }
                    }
                }
                drop(c);
                if rng.random_bool(0.3) {
                    tokio::time::sleep(Duration::from_micros(rng.random_range(0..2000))).await;
                }
            }
            (received, reconnects)
        }));
    }
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                hub.publish(Publish::new(progress("m", i as f64)).unwrap());
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    publisher.await.unwrap();
    let mut total_reconnects = 0;
    for c in clients {
        let (received, reconnects) = c.await.unwrap();
        assert_eq!(received, (1..=TOTAL).collect::<Vec<_>>());
        total_reconnects += reconnects;
    }
    assert!(total_reconnects > 100, "only {total_reconnects} reconnects");
}

#[tokio::test]
async fn recovery_that_cannot_be_served_says_so_and_sends_the_retained_state() {
    let hub = Hub::new(HubConfig::default().history_size(10));
    for i in 0..50 {
        hub.publish(keep(&format!("k{}", i % 3), f64::from(i)));
    }
    // history holds 41..=50; the retained state is k0..k2 at 48, 49, 50.
    let replay_then_state: Vec<u64> = (41..=50).chain(48..=50).collect();
    let cases = [
        // A gap in this epoch: what history still holds, then the state (late).
        ("too old", Since { epoch: hub.epoch().into(), seq: 5 }, 40, replay_then_state.clone()),
        // Another epoch (a restart, a failover): everything history holds, then the state —
        // an engine's log numbers on through a new epoch, so it may hold what was missed.
        ("other epoch", Since { epoch: "0000".into(), seq: 45 }, 40, replay_then_state.clone()),
    ];
    for (what, since, position, expected) in cases {
        let c = hub.connect();
        let o = c
            .subscribe(Topic::ModelStatus, SubscribeOptions::default().since(Some(since)))
            .unwrap();
        assert!(!o.recovered, "{what}");
        let frames = drain(&c, NOW).await.unwrap();
        assert_eq!(frames[0]["data"]["recovered"], false, "{what}");
        assert_eq!(frames[0]["data"]["seq"], position, "{what}: where the frames continue from");
        assert_eq!(seqs(&frames), expected, "{what}");
        let late: Vec<bool> = frames[1..].iter().map(|f| f["late"] == true).collect();
        let replayed = expected.len() - 3;
        assert!(
            late[..replayed].iter().all(|l| !l) && late[replayed..].iter().all(|l| *l),
            "{what}: {late:?}"
        );
    }
    // From the future in this epoch: the node may be behind, so the engine is asked to reach
    // it; a single node is the log, so the position stays ahead (made up, or lost): the
    // subscription then starts from the current state, as the server does.
    let future = Since { epoch: hub.epoch().into(), seq: 51 };
    let c = hub.connect();
    let with_since = SubscribeOptions::default().since(Some(future.clone()));
    let err = c.subscribe(Topic::ModelStatus, with_since.clone()).unwrap_err();
    assert_eq!(err, modelcast_hub::Error::Behind { topic: Topic::ModelStatus, have: 50 });
    hub.reach(Topic::ModelStatus, Some(&future)).wait().await.unwrap();
    assert!(c.subscribe(Topic::ModelStatus, with_since).is_err(), "still past the log");
    let o = c.subscribe(Topic::ModelStatus, SubscribeOptions::default()).unwrap();
    assert_eq!((o.recovered, o.seq), (false, 50));
    assert_eq!(seqs(&drain(&c, NOW).await.unwrap()), [48, 49, 50]);

    // After a restart (another epoch) whose history is complete: all of it, then the state.
    let fresh = Hub::new(HubConfig::default().history_size(10));
    for i in 0..4 {
        fresh.publish(keep(&format!("k{}", i % 3), f64::from(i)));
    }
    let c = fresh.connect();
    let since = Since { epoch: hub.epoch().into(), seq: 45 };
    c.subscribe(Topic::ModelStatus, SubscribeOptions::default().since(Some(since))).unwrap();
    let frames = drain(&c, NOW).await.unwrap();
    assert_eq!(frames[0]["data"]["seq"], 0);
    assert_eq!(seqs(&frames), [1, 2, 3, 4, 2, 3, 4]);
    // Within the held range: exactly the missing messages.
    let c = hub.connect();
    let since = Since { epoch: hub.epoch().into(), seq: 44 };
    let o =
        c.subscribe(Topic::ModelStatus, SubscribeOptions::default().since(Some(since))).unwrap();
    assert!(o.recovered);
    assert_eq!(seqs(&drain(&c, NOW).await.unwrap()), (45..=50).collect::<Vec<_>>());
    // Up to date: recovered, nothing to replay in order; the retained state comes again,
    // marked late (a held-back or half-received value is never lost across a reconnect).
    let c = hub.connect();
    let since = Since { epoch: hub.epoch().into(), seq: 50 };
    assert!(
        c.subscribe(Topic::ModelStatus, SubscribeOptions::default().since(Some(since)))
            .unwrap()
            .recovered
    );
    let frames = drain(&c, NOW).await.unwrap();
    let state = of_type(&frames, "model_status_update");
    assert_eq!(seqs(&frames), [48, 49, 50]);
    assert!(state.iter().all(|f| f["late"] == true), "{frames:?}");
}

#[tokio::test(start_paused = true)]
async fn history_expires_by_age() {
    let hub = Hub::new(HubConfig::default().history_age(Duration::from_secs(60)));
    hub.publish(keep("a", 1.0));
    hub.publish(keep("a", 2.0));
    let since = Since { epoch: hub.epoch().into(), seq: 1 };
    let c = hub.connect();
    assert!(
        c.subscribe(Topic::ModelStatus, SubscribeOptions::default().since(Some(since.clone())))
            .unwrap()
            .recovered
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    let c = hub.connect();
    assert!(
        !c.subscribe(Topic::ModelStatus, SubscribeOptions::default().since(Some(since)))
            .unwrap()
            .recovered
    );
}
