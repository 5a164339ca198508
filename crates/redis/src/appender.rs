//! Appends, in call order, through a bounded queue: everything queued while a round trip is in
//! flight goes in the next, as one script call per topic (a topic's appends of a round are
//! atomic: after a `NOSCRIPT` none of them happened, so retrying them keeps their order).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use modelcast_hub::{Error as HubError, Result as HubResult, Sequenced};
use modelcast_protocol::Topic;
use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conn::Conn;
use crate::queued::Queued;
use crate::scripts::{AppendLimits, append_call};
use crate::shared::{Ack, IDEMPOTENCY_TTL_SECS, Shared, needs_restart_check};

/// The most appends sent in one round trip.
const ROUND: usize = 1024;

/// Sends queued appends to Redis until `stop`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    let mut round = Vec::with_capacity(ROUND);
    loop {
        let n = tokio::select! {
            n = queue.recv_many(&mut round, ROUND) => n,
            () = stop.cancelled() => 0,
        };
        if n == 0 {
            break;
        }
        append_round(&shared, std::mem::take(&mut round)).await;
    }
    // Stopping: whatever is still queued is answered, never left waiting.
    queue.close();
    while let Some(append) = queue.recv().await {
        let _ = append.reply.send(Err(HubError::Unavailable("the server is stopping".into())));
    }
}

/// The appends of one round, grouped by topic in order (one script call per group).
fn by_topic(round: Vec<Queued>) -> Vec<(Topic, Vec<Queued>)> {
    let mut groups: Vec<(Topic, Vec<Queued>)> = Vec::new();
    for append in round {
        match groups.iter_mut().find(|(t, _)| *t == append.topic) {
            Some((_, group)) => group.push(append),
            None => groups.push((append.topic, vec![append])),
        }
    }
    groups
}

async fn append_round(shared: &Shared, round: Vec<Queued>) {
    let mut pending = by_topic(round);
    // Twice at most: a second `NOSCRIPT` right after the restart check is a failure.
    for attempt in 0..2 {
        let results = call_groups(shared, &pending).await;
        let mut retry = Vec::new();
        let mut restart = false;
        for ((topic, group), result) in pending.into_iter().zip(results) {
            match result {
                Err(err) if attempt == 0 && needs_restart_check(&err) => {
                    restart = true;
                    retry.push((topic, group));
                }
                result => answer(shared, topic, group, result),
            }
        }
        if retry.is_empty() {
            return;
        }
        if restart && let Err(err) = shared.restart_check().await {
            for (topic, group) in retry {
                answer(shared, topic, group, Err(err.clone()));
            }
            return;
        }
        pending = retry;
    }
}

async fn call_groups(
    shared: &Shared,
    groups: &[(Topic, Vec<Queued>)],
) -> Vec<redis::RedisResult<Value>> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let calls = groups.iter().map(|(topic, group)| {
        let run_id = shared.run_id(*topic);
        let limits = AppendLimits {
            run_id: &run_id,
            node_epoch: &shared.node_epoch,
            history_size: shared.limits.history_size,
            idempotency_ttl_secs: IDEMPOTENCY_TTL_SECS,
            state_max_keys: shared.limits.state_max_keys,
        };
        let names = shared.names.of(*topic);
        let cmd = append_call(&shared.scripts, names, limits, now_ms, group);
        let mut conn = shared.conn();
        let ack = shared.limits.ack;
        async move {
            let value = cmd.query_async::<Value>(&mut conn).await?;
            if let Some(ack) = ack {
                wait_for_replicas(&mut conn, &names.meta, ack).await?;
            }
            Ok(value)
        }
    });
    futures_util::future::join_all(calls).await
}

/// `WAIT` on the primary that took an append (the same connection, so it covers it): `Ok`
/// once `ack.replicas` hold it, else an error that says the message may have gone out.
async fn wait_for_replicas(conn: &mut Conn, key: &str, ack: Ack) -> redis::RedisResult<()> {
    let millis = u64::try_from(ack.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut wait = redis::cmd("WAIT");
    wait.arg(ack.replicas).arg(millis);
    let held: usize = redis::from_redis_value(conn.on_primary_of(key, &wait).await?)?;
    if held >= ack.replicas {
        return Ok(());
    }
    let detail = format!(
        "{held} of the {} replicas MODELCAST_REDIS_ACK_REPLICAS asks for acknowledged within \
         {:?} (the message may have gone out)",
        ack.replicas, ack.timeout
    );
    Err(redis::RedisError::from((redis::ErrorKind::Client, NOT_REPLICATED, detail)))
}

/// The description of an append the replicas did not acknowledge in time.
const NOT_REPLICATED: &str = "not replicated in time";

/// Answers a group's appends from the script's `{epoch, answer…}` (or its failure).
fn answer(shared: &Shared, topic: Topic, group: Vec<Queued>, result: redis::RedisResult<Value>) {
    let answers = result.and_then(|value| {
        parse_answers(&value, &group).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected append reply"))
        })
    });
    match answers {
        Ok(answers) => {
            for (append, answer) in group.into_iter().zip(answers) {
                let _ = append.reply.send(answer);
            }
        }
        Err(err) => {
            // Unreachable, or refusing writes (a read-only replica, NOAUTH, OOM): publishes
            // (of the topic's shard, on a cluster) fail fast until the follower's checks
            // succeed. Replicas that did not acknowledge in time refuse only these.
            shared.health.append_failures.fetch_add(group.len() as u64, Ordering::Relaxed);
            if !err.to_string().contains(NOT_REPLICATED) {
                shared.topic_failed(topic, &err);
            }
            tracing::debug!(%topic, "append failed: {err}");
            for append in group {
                let _ = append.reply.send(Err(HubError::Unavailable(format!("redis: {err}"))));
            }
        }
    }
}

/// Each append's answer: a new seq under the topic's epoch, or for an idempotency key
/// already used, where it was sequenced (under the epoch of then, which a fence may have left
/// since).
fn parse_answers(value: &Value, group: &[Queued]) -> Option<Vec<HubResult<Sequenced>>> {
    let Value::Array(items) = value else { return None };
    let (epoch, answers) = items.split_first()?;
    let text =
        |v: &Value| std::str::from_utf8(crate::snapshot::bytes_of(v)?).ok().map(str::to_owned);
    let epoch: Arc<str> = Arc::from(text(epoch)?);
    if answers.len() != group.len() {
        return None;
    }
    answers
        .iter()
        .map(|answer| match answer {
            Value::Int(seq) => Some(Ok(Sequenced { epoch: epoch.clone(), seq: *seq as u64 })),
            other => {
                let text = text(other)?;
                let (epoch, seq) = text.split_once('\n')?;
                Some(Ok(Sequenced { epoch: Arc::from(epoch), seq: seq.parse().ok()? }))
            }
        })
        .collect()
}
