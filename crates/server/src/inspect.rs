//! The endpoints that show data — `GET /api/state`, `/api/stats`, `/metrics`, `/readyz` —
//! each asking who the caller is first ([`crate::security::Security::caller`]): the one rule
//! of what an operator, a token's user and an anonymous caller see.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use modelcast_protocol::ApiErrorCode;
use serde_json::{Value, json};

use crate::admit::refuse_token;
use crate::error::{ApiError, ApiResult};
use crate::response::{Body, Resp, json_response};
use crate::security::{Caller, Refused};
use crate::state::App;
use crate::validate::audience_json;

/// Who a request is ([`crate::security::Security::caller`]): its bearer credential, or a
/// `?token=` (a browser page's way to send one).
pub(crate) fn caller(app: &App, req: &Request<Incoming>) -> ApiResult<Caller> {
    let token = query_param(req.uri().query(), "token");
    app.security.caller(req.headers(), token.as_deref()).map_err(|refused| refusal(app, refused))
}

/// An operator endpoint's check: an operator credential, where they are guarded.
pub(crate) fn operator(app: &App, req: &Request<Incoming>) -> ApiResult<()> {
    let caller = caller(app, req)?;
    app.security.operator(&caller).map_err(|refused| refusal(app, refused))
}

/// A refused credential: 401 (asking for a Bearer credential) or 403.
fn refusal(app: &App, refused: Refused) -> ApiError {
    match refused {
        Refused::Missing(message) | Refused::Invalid(message) => refuse_token(app, message),
        Refused::Forbidden(message) => ApiError::new(ApiErrorCode::Forbidden, message),
    }
}

/// The first value of the query parameter `name`.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The most frames one `GET /api/state` page holds, and the default.
const STATE_PAGE_MAX: usize = 10_000;
const STATE_PAGE_DEFAULT: usize = 1_000;

/// `GET /api/state?topic=…[&limit=N][&after=CURSOR]`: a page of the frames a new subscriber
/// to the topic receives first, as it receives them (marked `late`). The frames the hub holds
/// are written as they are, between a small head and tail: no value tree, no copy.
///
/// What the caller sees is what it could subscribe to: an operator every key (with
/// `audiences`); a token's user the keys a subscription of that user receives (its topic
/// roles, its audience: the hub's one check); without a credential, where tokens are
/// required or a metrics token is set, nothing (401), else what an anonymous subscriber
/// receives.
pub(crate) fn state(app: &App, req: &Request<Incoming>) -> ApiResult {
    let caller = caller(app, req)?;
    let page = StatePage::of(req.uri().query())?;
    let viewer = viewer(app, &caller, page.topic)?;
    let state = app.hub.state_page(page.topic, page.after, page.limit, viewer.as_ref());
    let mut head = json!({"topic": page.topic, "epoch": state.epoch, "seq": state.seq,
        "keys": state.keys, "next": state.next});
    if viewer.is_none() {
        // Who each frame is for (`null`: every subscriber), index for index with `state`:
        // for operators only (subscribers never see an audience's members).
        let audiences: Vec<Value> =
            state.audiences.iter().map(|a| a.as_ref().map_or(Value::Null, audience_json)).collect();
        head["audiences"] = json!(audiences);
    }
    Ok(frames_after(head, state.frames))
}

/// What `GET /api/state` asks for.
struct StatePage {
    topic: modelcast_protocol::Topic,
    limit: usize,
    after: Option<u64>,
}

impl StatePage {
    /// The query's `topic`, `limit` and `after`, each checked.
    fn of(query: Option<&str>) -> ApiResult<Self> {
        let topic = match query_param(query, "topic") {
            None => Err(ApiError::new(
                ApiErrorCode::MissingTopic,
                "name the topic: GET /api/state?topic=download_progress",
            )),
            Some(topic) => topic.parse().map_err(|err: modelcast_protocol::ParseTopicError| {
                ApiError::new(ApiErrorCode::UnknownTopic, err.to_string())
            }),
        }?;
        let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
            None => STATE_PAGE_DEFAULT,
            Some(Ok(n)) if (1..=STATE_PAGE_MAX).contains(&n) => n,
            Some(_) => {
                let message = format!("limit is a whole number from 1 to {STATE_PAGE_MAX}");
                return Err(ApiError::new(ApiErrorCode::InvalidLimit, message));
            }
        };
        let after = match query_param(query, "after").map(|a| a.parse::<u64>()) {
            None => None,
            Some(Ok(cursor)) => Some(cursor),
            Some(Err(_)) => {
                let message = "after is the `next` of the previous page (a whole number)";
                return Err(ApiError::new(ApiErrorCode::InvalidCursor, message));
            }
        };
        Ok(Self { topic, limit, after })
    }
}

/// Whose view of `topic` the caller reads: `None` for an operator (everything), or the viewer
/// a subscription of the caller would have (its topic roles checked).
fn viewer(
    app: &App,
    caller: &Caller,
    topic: modelcast_protocol::Topic,
) -> ApiResult<Option<modelcast_hub::Viewer>> {
    match caller {
        Caller::Operator => Ok(None),
        Caller::Viewer(identity) if !app.security.may_subscribe(Some(identity), topic) => {
            let roles = app.security.roles_for(topic);
            let message = format!("{topic} is open to the roles {roles} only");
            Err(ApiError::new(ApiErrorCode::Forbidden, message))
        }
        Caller::Viewer(identity) => Ok(Some(identity.viewer())),
        Caller::Anonymous if app.security.operator_guarded() => Err(refuse_token(
            app,
            "GET /api/state needs a token (?token= or Authorization: Bearer): it answers what \
             that token could subscribe to",
        )),
        Caller::Anonymous => Ok(Some(modelcast_hub::Viewer::anonymous())),
    }
}

/// `{…head…,"state":[` frame `,` frame … `]}`: the frames written as the hub holds them.
fn frames_after(head: Value, frames: Vec<modelcast_hub::Frame>) -> Resp {
    // The head's closing brace makes way for the state.
    let mut head = head.to_string();
    head.pop();
    head.push_str(",\"state\":[");
    let comma = Bytes::from_static(b",");
    let mut chunks = Vec::with_capacity(2 * frames.len() + 2);
    chunks.push(Bytes::from(head));
    for (i, frame) in frames.into_iter().enumerate() {
        if i > 0 {
            chunks.push(comma.clone());
        }
        chunks.push(frame.into_bytes());
    }
    chunks.push(Bytes::from_static(b"]}"));
    let mut resp = Response::new(Body::chunks(chunks));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `GET /api/stats`, for operators.
pub(crate) fn stats(app: &App, req: &Request<Incoming>) -> ApiResult {
    operator(app, req)?;
    Ok(json_response(StatusCode::OK, &figures(app)))
}

/// `GET /metrics` (OpenMetrics text), for operators: the engine's gauges set at the scrape.
pub(crate) fn metrics(app: &App, req: &Request<Incoming>) -> ApiResult {
    operator(app, req)?;
    app.metrics.engine_up.set(i64::from(app.hub.unavailable().is_none()));
    let engine = topology(app);
    let label = crate::metrics::EngineLabel {
        topology: engine["topology"].as_str().unwrap_or_default().to_owned(),
        primary: engine["primary"].as_str().unwrap_or_default().to_owned(),
    };
    app.metrics.engine_info.clear();
    app.metrics.engine_info.get_or_create(&label).set(1);
    app.metrics.engine_shard_up.clear();
    for shard in engine.get("shards").and_then(Value::as_array).into_iter().flatten() {
        let primary = shard["primary"].as_str().unwrap_or_default().to_owned();
        let up = i64::from(shard["up"] == true);
        let label = crate::metrics::ShardLabel { primary };
        app.metrics.engine_shard_up.get_or_create(&label).set(up);
    }
    if let Some(push) = &app.push {
        app.metrics.push(&push.stats());
    }
    let body = app.metrics.encode(&app.hub.stats());
    let mut resp = Response::new(Body::from(Bytes::from(body)));
    let kind =
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
    resp.headers_mut().insert(CONTENT_TYPE, kind);
    Ok(resp)
}

/// `GET /readyz`: ready, or why not (503: the drain, the engine down, topics still loading),
/// with the engine's topology and any warning.
pub(crate) fn readyz(app: &Arc<App>) -> Resp {
    let (status, mut body) = if app.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "shutting_down"}))
    } else if let Some(reason) = app.hub.unavailable() {
        let body = json!({"status": "engine_unavailable", "reason": reason});
        (StatusCode::SERVICE_UNAVAILABLE, body)
    } else if let loading @ [_, ..] = app.hub.loading().as_slice() {
        // Just started: subscriptions to these wait until the engine has loaded them.
        (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "loading", "topics": loading}))
    } else {
        (StatusCode::OK, json!({"status": "ready"}))
    };
    body["engine"] = topology(app);
    // A configuration that works but can lose data (Redis evicting keys) is said here.
    if let Some(warning) = app.engine.as_ref().and_then(|e| e.health().warning) {
        body["warnings"] = json!([warning]);
    }
    json_response(status, &body)
}

/// The engine's topology and primary (`/readyz`, `/metrics`).
fn topology(app: &App) -> Value {
    match &app.engine {
        None => json!({"topology": "memory", "primary": ""}),
        Some(engine) => {
            let (topology, primary) = engine.topology();
            let mut out = json!({"topology": topology, "primary": primary});
            let shards: Vec<Value> = engine
                .health()
                .shards
                .iter()
                .map(|s| json!({"primary": s.primary, "topics": s.topics, "up": s.up}))
                .collect();
            if !shards.is_empty() {
                out["shards"] = json!(shards);
            }
            out
        }
    }
}

/// The engine's part of `/api/stats`.
fn engine(app: &App) -> Value {
    let Some(engine) = &app.engine else { return json!({"kind": "memory", "up": true}) };
    let h = engine.health();
    let place = topology(app);
    json!({
        "kind": "redis",
        "topology": place["topology"],
        "primary": place["primary"],
        "shards": place.get("shards"),
        "failovers": h.failovers,
        "up": h.up,
        "following": h.following,
        "unavailable_reason": h.reason,
        "append_failures": h.append_failures,
        "appends_refused_queue_full": h.appends_refused_full,
        "topic_repairs": h.repairs,
        "topic_resets": h.resets,
        "topic_fences": h.fences,
        "pubsub_reconnects": h.reconnects,
        "warning": h.warning,
    })
}

/// `GET /api/stats`'s document. Every figure is named for what it counts, and `help` says
/// it, so a person can read the document without the source.
fn figures(app: &App) -> Value {
    use modelcast_hub::{ConflateReason, DropReason};
    let stats = app.hub.stats();
    let by = |t: &modelcast_hub::TopicStats, reason: ConflateReason| {
        t.conflated_by.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    };
    let topics: serde_json::Map<String, Value> = stats
        .topics
        .iter()
        .map(|t| {
            (
                t.topic.as_str().to_owned(),
                json!({
                    "subscriptions": t.subscribers,
                    "published": t.published,
                    "absorbed_before_publish": {
                        "throttle": by(t, ConflateReason::Throttle),
                        "batch": by(t, ConflateReason::Batch),
                    },
                    "delivered": t.delivered,
                    "skipped_per_subscriber": {
                        "max_hz": by(t, ConflateReason::MaxHz),
                        "queue_full": by(t, ConflateReason::QueueFull),
                    },
                    "discarded_with_dropped_subscribers": t.dropped,
                    "state_keys": t.state_keys,
                    "state_evicted": t.state_evicted,
                }),
            )
        })
        .collect();
    let count =
        |reason: DropReason| stats.drops.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n);
    let (compressions, compressed_frames, bytes_before, bytes_after, compressing) =
        app.metrics.compression();
    json!({
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "connections": app.active.load(Ordering::Relaxed),
        "sse_connections": app.metrics.sse_active(),
        "keys": stats.keys,
        "epoch": app.hub.epoch(),
        "node_id": app.node_id,
        "engine": engine(app),
        "push": app.push.as_ref().map(|push| {
            let stats = push.stats();
            json!({
                "sent": stats.sent,
                "failed": stats.failed.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "devices_removed": stats.devices_removed,
                "queued": stats.queued,
                "devices": stats.devices,
            })
        }),
        "topics": topics,
        "connections_dropped": {
            "slow_consumer": count(DropReason::SlowConsumer),
            "replaced": count(DropReason::Replaced),
        },
        "connections_ended": {
            "closed": count(DropReason::Closed),
            "shutdown": count(DropReason::Shutdown),
        },
        "compression": {
            "enabled": app.config.compression,
            "min_size": app.config.compression_min_size,
            "connections": compressing,
            "compressions": compressions,
            "frames": compressed_frames,
            "bytes_before": bytes_before,
            "bytes_after": bytes_after,
        },
        "help": {
            "push": "pushes to users who are not connected (null: push is off): accepted by a push service, not delivered by reason, devices forgotten as gone, waiting, registered",
            "published": "messages sequenced on the topic (after throttling and batching)",
            "absorbed_before_publish": "updates replaced by a newer value of their key before they were published: never sequenced, never sent",
            "delivered": "frames queued to subscribers: each publish once per subscriber that receives it, plus replayed and current-state frames",
            "skipped_per_subscriber": "per-subscriber deliveries replaced by a newer value of the key (max_hz, or a full queue collapsed)",
            "discarded_with_dropped_subscribers": "frames still queued when their subscriber was dropped",
            "state_keys": "keys the topic holds current state for now (at most MODELCAST_STATE_MAX_KEYS)",
            "state_evicted": "keys whose state left because the topic held MODELCAST_STATE_MAX_KEYS keys; their subscribers got state_cleared",
            "connections": "open connections, WebSocket and Server-Sent Events together (WEBSOCKET_MAX_CONNECTIONS bounds them together)",
            "sse_connections": "open Server-Sent Events streams (GET /sse), counted in connections too",
            "keys": "distinct keys and filter ids the server holds now, all topics and subscriptions together; each is freed with its last user",
            "connections_dropped": "connections the server closed: too slow (4001), or replaced by the same id (4002)",
            "connections_ended": "connections closed by their owner or by a shutdown",
            "compression": "permessage-deflate (MODELCAST_COMPRESSION): WebSocket connections that agreed on it, frames compressed (once each, however many connections get them), frames written compressed and their bytes before and after compression",
        },
    })
}
