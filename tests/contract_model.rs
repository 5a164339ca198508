//! The delivery contract, checked against a reference model: proptest drives random publishes
//! (two topics, keys, subjects, update / transition / event, urgent or not) into a hub while
//! subscribers with random filters, `max_hz` and reading speeds read, fall behind (and are
//! dropped as slow consumers), disconnect and recover with `since`. Each subscriber is a
//! *plain client* that implements the contract exactly as documented: per topic it keeps
//! `last`; a non-recovered `subscribed` sets `last` to its `seq`; a frame marked `late` is
//! applied as state; any other frame with `seq <= last` is dropped as a duplicate.
//!
//! After the run (time advanced so that every held-back update is due, every subscriber
//! caught up), every subscriber must have seen:
//! - per topic, the frames not marked late in strictly increasing `seq` (never a duplicate);
//! - late frames only below its position (so marking them was needed, and enough);
//! - exactly the subjects its filter allows (and every message without a subject);
//! - only messages whose audience admits it (its user, or one of its roles; everyone for a
//!   message without one) as it is when it reads them: live, as state, in a recovery, and
//!   after its token was renewed with other roles (`Op::Renew`), which takes back what was
//!   queued or held back for the earlier viewer;
//! - every event and transition after its first subscription, except inside a gap the hub
//!   announced (a non-recovered `subscribed`), when every viewer it has been is in the
//!   message's audience;
//! - for every key (of each audience: alice's `k0` and bob's `k0` are two keys) whose newest
//!   message is an update or a transition and is for it, that newest message.
//!
//! Runs 256 cases in `cargo test` (about a second); a longer run: `PROPTEST_CASES=20000 cargo test -p
//! modelcast-tests --test tests contract_model`.
//! The Rust client's half of the contract is checked over real sockets in
//! `delivery_contract.rs`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use modelcast_hub::{
    Audience, Connection, Delivery, Hub, HubConfig, Kind, Publish, Retain, SubscribeOptions, Viewer,
};
use modelcast_protocol::{ServerMessage, Since, Topic};
use modelcast_tests::msg::{alert, progress};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

const TOPICS: [Topic; 2] = [Topic::DownloadProgress, Topic::Alerts];
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const SUBJECTS: [&str; 3] = ["m0", "m1", "m2"];
const USERS: [&str; 2] = ["alice", "bob"];
const ROLES: [&str; 2] = ["user", "ops"];
/// The audiences messages are published to, as (users, roles) indexes; `None` is everyone.
const AUDIENCES: [Option<(&[usize], &[usize])>; 5] =
    [None, Some((&[0], &[])), Some((&[1], &[])), Some((&[], &[1])), Some((&[0], &[1]))];
/// Room for the largest recovery (history of both topics, resent newest values, replies), so a
/// replay never overflows on its own; live traffic between reads does.
const HISTORY: usize = 24;
const CAPACITY: usize = 2 * HISTORY + 2 * KEYS.len() * AUDIENCES.len() + 8;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        topic: usize,
        key: Option<usize>,
        subject: Option<usize>,
        kind: Kind,
        urgent: bool,
        /// An index into [`AUDIENCES`].
        audience: usize,
    },
    /// Time passes (milliseconds).
    Advance(u64),
    /// A subscriber reads up to `max` frames.
    Read { sub: usize, max: usize },
    /// A subscriber's connection closes; it reconnects with `since` at its next read.
    Disconnect { sub: usize },
    /// A subscriber's token is renewed with other roles (its user stays).
    Renew { sub: usize, roles: BTreeSet<usize> },
}

#[derive(Debug, Clone)]
struct SubSpec {
    topics: Vec<usize>,
    filter: Option<BTreeSet<usize>>,
    max_hz: Option<f64>,
    /// The token's user (an index into [`USERS`]); `None` is anonymous (no token).
    user: Option<usize>,
    roles: BTreeSet<usize>,
}

/// Who a subscriber is at some moment: its user and roles.
#[derive(Debug, Clone, PartialEq)]
struct Who {
    user: Option<usize>,
    roles: BTreeSet<usize>,
}

impl Who {
    fn viewer(&self) -> Viewer {
        match self.user {
            Some(u) => Viewer::new(USERS[u], self.roles.iter().map(|r| ROLES[*r])),
            None => Viewer::anonymous(),
        }
    }

    /// Whether a message to `AUDIENCES[audience]` is for this viewer.
    fn admitted(&self, audience: usize) -> bool {
        match AUDIENCES[audience] {
            None => true,
            Some((users, roles)) => {
                self.user.is_some_and(|u| users.contains(&u))
                    || (self.user.is_some() && roles.iter().any(|r| self.roles.contains(r)))
            }
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![Just(Kind::Update), Just(Kind::Transition), Just(Kind::Event)];
    prop_oneof![
        8 => (0..2usize, proptest::option::weighted(0.85, 0..3usize),
              proptest::option::weighted(0.7, 0..3usize), kind, any::<bool>(),
              prop_oneof![2 => Just(0usize), 3 => 1..AUDIENCES.len()])
            .prop_map(|(topic, key, subject, kind, urgent, audience)| {
                Op::Publish { topic, key, subject, kind, urgent, audience }
            }),
        1 => (0..3usize, proptest::collection::btree_set(0..ROLES.len(), 0..3))
            .prop_map(|(sub, roles)| Op::Renew { sub, roles }),
        2 => (0..400u64).prop_map(Op::Advance),
        3 => (0..3usize, 1..40usize).prop_map(|(sub, max)| Op::Read { sub, max }),
        1 => (0..3usize).prop_map(|sub| Op::Disconnect { sub }),
    ]
}

fn sub_spec() -> impl Strategy<Value = SubSpec> {
    (
        prop_oneof![Just(vec![0]), Just(vec![1]), Just(vec![0, 1])],
        proptest::option::of(proptest::collection::btree_set(0..3usize, 0..3)),
        prop_oneof![Just(None), Just(Some(2.0)), Just(Some(10.0))],
        proptest::option::weighted(0.8, 0..USERS.len()),
        proptest::collection::btree_set(0..ROLES.len(), 0..3),
    )
        .prop_map(|(topics, filter, max_hz, user, roles)| SubSpec {
            topics,
            filter,
            max_hz,
            user,
            roles: if user.is_some() { roles } else { BTreeSet::new() },
        })
}

/// One published message, as the reference model keeps it.
#[derive(Debug, Clone)]
struct Sent {
    key: Option<usize>,
    subject: Option<usize>,
    kind: Kind,
    /// An index into [`AUDIENCES`].
    audience: usize,
}

/// A plain client of the contract, over hub connections.
struct Subscriber {
    spec: SubSpec,
    conn: Option<Connection>,
    /// Per topic: the epoch and `last` (the contract's position).
    position: HashMap<Topic, (String, u64)>,
    /// Per topic: the seq of the first `subscribed` (messages after it are owed).
    start: HashMap<Topic, u64>,
    /// Per topic: announced gaps, as (last before, top at the gap].
    gaps: HashMap<Topic, Vec<(u64, u64)>>,
    /// Per topic: seqs applied, in order, with their `late` mark.
    applied: HashMap<Topic, Vec<(u64, bool)>>,
    /// Per topic: the not-late seqs the server sent (before the client's duplicate check).
    sent_in_order: HashMap<Topic, Vec<u64>>,
    /// Who it has been: from which op on, each viewer (the first from the start).
    whos: Vec<(usize, Who)>,
}

impl Subscriber {
    fn who(&self) -> &Who {
        &self.whos.last().expect("a viewer from the start").1
    }

    fn connect(&mut self, hub: &Hub) -> Result<(), TestCaseError> {
        let conn = hub.connect();
        conn.set_viewer(self.who().viewer());
        for &t in &self.spec.topics {
            let topic = TOPICS[t];
            let since = self
                .position
                .get(&topic)
                .map(|(epoch, seq)| Since { epoch: epoch.clone(), seq: *seq });
            let subjects = self
                .spec
                .filter
                .as_ref()
                .map(|f| f.iter().map(|s| SUBJECTS[*s].to_owned()).collect());
            let options = SubscribeOptions::default()
                .since(since)
                .subjects(subjects)
                .max_hz(self.spec.max_hz);
            let outcome = conn.subscribe(topic, options);
            prop_assert!(outcome.is_ok(), "a recovery never overflows here: {outcome:?}");
        }
        self.conn = Some(conn);
        Ok(())
    }

    fn read(&mut self, hub: &Hub, max: usize, log: &[Vec<Sent>; 2]) -> Result<(), TestCaseError> {
        if self.conn.is_none() {
            self.connect(hub)?;
        }
        let conn = self.conn.as_ref().expect("connected");
        let mut out: Vec<Delivery> = Vec::new();
        match conn.try_recv(&mut out, max) {
            Ok(_) => {}
            Err(_) => {
                // Dropped as a slow consumer: reconnect with `since`, as documented.
                self.conn = None;
                return Ok(());
            }
        }
        for delivery in out {
            self.apply(&delivery, log)?;
        }
        Ok(())
    }

    fn apply(&mut self, delivery: &Delivery, log: &[Vec<Sent>; 2]) -> Result<(), TestCaseError> {
        let frame: Value = serde_json::from_str(delivery.frame().as_str()).expect("JSON");
        if frame["type"] == "subscribed" {
            let data = &frame["data"];
            let topic: Topic = data["topic"].as_str().unwrap().parse().unwrap();
            let seq = data["seq"].as_u64().unwrap();
            let epoch = data["epoch"].as_str().unwrap().to_owned();
            self.start.entry(topic).or_insert(seq);
            if data["recovered"] != true {
                if let Some((_, last)) = self.position.get(&topic) {
                    self.gaps.entry(topic).or_default().push((*last, seq));
                }
                self.position.insert(topic, (epoch, seq));
            }
            return Ok(());
        }
        let Some(topic) = frame["topic"].as_str() else { return Ok(()) }; // lagging
        let topic: Topic = topic.parse().unwrap();
        let seq = frame["seq"].as_u64().unwrap();
        let late = frame["late"] == true;
        prop_assert_eq!(late, delivery.is_late());
        // Never outside its audience: the message is for the viewer this connection is when it
        // reads it. A renewal takes back what was queued or held back for an earlier viewer
        // that the new one is not in.
        let m = &log[TOPICS.iter().position(|t| *t == topic).unwrap()][seq as usize - 1];
        prop_assert!(
            self.who().admitted(m.audience),
            "{topic}: seq {seq} for {:?} reached {:?} (viewers {:?})",
            AUDIENCES[m.audience],
            self.who(),
            self.whos
        );
        let last = self.position.get(&topic).map(|(_, s)| *s).expect("subscribed first");
        if late {
            prop_assert!(seq <= last, "late frame {seq} above the position {last}");
        } else {
            self.sent_in_order.entry(topic).or_default().push(seq);
            if seq <= last {
                return Ok(()); // a duplicate: the client drops it (the check below fails the run)
            }
            self.position.get_mut(&topic).expect("subscribed").1 = seq;
        }
        self.applied.entry(topic).or_default().push((seq, late));
        Ok(())
    }
}

fn publish(hub: &Hub, topic: usize, n: usize, sent: &Sent, urgent: bool) -> u64 {
    let message: ServerMessage = match TOPICS[topic] {
        Topic::DownloadProgress => progress(&format!("p{n}"), 1.0),
        _ => alert(&format!("a{n}")),
    };
    let mut p = Publish::new(message).expect("topic message").kind(sent.kind).urgent(urgent);
    if let Some(k) = sent.key {
        let retain = if sent.kind == Kind::Event { Retain::No } else { Retain::Keep };
        p = p.key(KEYS[k]).retain(retain);
    }
    if let Some(s) = sent.subject {
        p = p.subject(SUBJECTS[s]);
    }
    if let Some((users, roles)) = AUDIENCES[sent.audience] {
        let users = users.iter().map(|u| USERS[*u]);
        p = p.audience(Audience::new(users, roles.iter().map(|r| ROLES[*r])));
    }
    match hub.publish(p).remove(0) {
        modelcast_hub::Published::Sent(at) => at.seq,
        other => panic!("no throttle here, so every publish is sent: {other:?}"),
    }
}

fn run_case(specs: Vec<SubSpec>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let hub = Hub::new(
            HubConfig::default()
                .history_size(HISTORY)
                .history_age(Duration::from_secs(3600))
                .outbox_capacity(CAPACITY),
        );
        let mut log: [Vec<Sent>; 2] = [Vec::new(), Vec::new()];
        let mut subs: Vec<Subscriber> = Vec::new();
        for spec in specs {
            let who = Who { user: spec.user, roles: spec.roles.clone() };
            let mut s = Subscriber {
                whos: vec![(0, who)],
                spec,
                conn: None,
                position: HashMap::new(),
                start: HashMap::new(),
                gaps: HashMap::new(),
                applied: HashMap::new(),
                sent_in_order: HashMap::new(),
            };
            s.connect(&hub)?;
            subs.push(s);
        }
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Publish { topic, key, subject, kind, urgent, audience } => {
                    let sent = Sent { key, subject, kind, audience };
                    let seq = publish(&hub, topic, n, &sent, urgent);
                    log[topic].push(sent);
                    prop_assert_eq!(seq as usize, log[topic].len());
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Read { sub, max } => {
                    if let Some(s) = subs.get_mut(sub) {
                        s.read(&hub, max, &log)?;
                    }
                }
                Op::Renew { sub, roles } => {
                    if let Some(s) = subs.get_mut(sub).filter(|s| s.spec.user.is_some()) {
                        let who = Who { user: s.spec.user, roles };
                        if let Some(conn) = &s.conn {
                            conn.set_viewer(who.viewer());
                        }
                        s.whos.push((n, who));
                    }
                }
                Op::Disconnect { sub } => {
                    if let Some(s) = subs.get_mut(sub) {
                        s.conn = None;
                    }
                }
            }
        }
        // Quiesce: every held-back update comes due, every subscriber (re)connects and reads
        // everything.
        tokio::time::advance(Duration::from_secs(2)).await;
        for s in &mut subs {
            for _ in 0..4 {
                s.read(&hub, usize::MAX, &log)?;
            }
            prop_assert!(s.conn.as_ref().is_some_and(|c| c.queued() == 0), "caught up");
        }
        for s in &subs {
            check(s, &log)?;
        }
        Ok(())
    })
}

fn check(s: &Subscriber, log: &[Vec<Sent>; 2]) -> Result<(), TestCaseError> {
    let passes = |m: &Sent| match (&s.spec.filter, m.subject) {
        (Some(f), Some(subject)) => f.contains(&subject),
        _ => true,
    };
    // Owed: what its filter passes and every viewer it has been is in the audience of.
    let owed = |m: &Sent| passes(m) && s.whos.iter().all(|(_, who)| who.admitted(m.audience));
    for &t in &s.spec.topics {
        let topic = TOPICS[t];
        let sent = &log[t];
        let in_order = s.sent_in_order.get(&topic).cloned().unwrap_or_default();
        prop_assert!(
            in_order.windows(2).all(|w| w[0] < w[1]),
            "{topic}: not in seq order or duplicated: {in_order:?}"
        );
        let applied = s.applied.get(&topic).cloned().unwrap_or_default();
        for (seq, _) in &applied {
            let m = &sent[*seq as usize - 1];
            prop_assert!(
                passes(m),
                "{topic}: seq {seq} (subject {:?}) passed filter {:?}",
                m.subject,
                s.spec.filter
            );
        }
        let seen: BTreeSet<u64> = applied.iter().map(|(seq, _)| *seq).collect();
        let start = s.start[&topic];
        let gaps = s.gaps.get(&topic).cloned().unwrap_or_default();
        let in_gap = |seq: u64| gaps.iter().any(|(from, to)| seq > *from && seq <= *to);
        // Every event and transition after the first subscription, outside announced gaps.
        for (i, m) in sent.iter().enumerate() {
            let seq = i as u64 + 1;
            if seq > start && m.kind != Kind::Update && owed(m) && !in_gap(seq) {
                prop_assert!(
                    seen.contains(&seq),
                    "{topic}: {:?} at seq {seq} lost (gaps {gaps:?})",
                    m.kind
                );
            }
        }
        // The newest message of every key of every audience, when it is state (an update or
        // a transition).
        let mut newest: HashMap<(usize, usize), u64> = HashMap::new();
        for (i, m) in sent.iter().enumerate() {
            if let Some(k) = m.key {
                newest.insert((k, m.audience), i as u64 + 1);
            }
        }
        for ((key, _), seq) in newest {
            let m = &sent[seq as usize - 1];
            if m.kind != Kind::Event && owed(m) {
                prop_assert!(
                    seen.contains(&seq),
                    "{topic}: newest value of {} (seq {seq}, {:?}) never delivered; applied {applied:?}",
                    KEYS[key],
                    m.kind
                );
            }
        }
    }
    Ok(())
}

#[test]
fn the_delivery_contract_holds_against_the_reference_model() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let strategy =
        (proptest::collection::vec(sub_spec(), 1..4), proptest::collection::vec(op(), 1..160));
    TestRunner::new(config)
        .run(&strategy, |(specs, ops)| run_case(specs, ops))
        .unwrap_or_else(|e| panic!("{e}"));
}
