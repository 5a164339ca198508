//! HTTP routing: the router depends on the handlers (`handshake`, `publish`) and on the
//! response helpers; no handler imports it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::response::{Refusal, Resp, error_response, json_response, method_not_allowed};
use crate::state::App;
use crate::{handshake, publish};

/// The dashboard page (`/`): markup and style; its script is [`DASHBOARD_JS`].
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The dashboard's script: `clients/typescript/dashboard/main.ts` bundled with the TypeScript
/// client (`npm run build` there; committed, checked for staleness in CI), so running the
/// server needs no Node.js.
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");

/// An embedded file, revalidated by browsers on every load (a new binary may change it).
fn static_asset(body: &'static str, content_type: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let metrics_denied = match app.security.check_metrics_token(req.headers()) {
        Ok(()) => None,
        Err(true) => Some(StatusCode::UNAUTHORIZED),
        Err(false) => Some(StatusCode::FORBIDDEN),
    };
    let response = match (path.as_str(), &method) {
        ("/ws", &Method::GET) => handshake::upgrade(&app, req, None, peer.ip()),
        (p, &Method::GET) if p.starts_with("/ws/") => {
            let id = p["/ws/".len()..].to_owned();
            handshake::upgrade(&app, req, Some(id), peer.ip())
        }
        ("/api/publish", &Method::POST) => {
            let origin = req.headers().get(hyper::header::ORIGIN).cloned();
            let mut resp = publish::handle(&app, req).await;
            // An allowed browser page may read the answer (CORS).
            if let Some(origin) = origin.filter(|_| resp.status() != StatusCode::FORBIDDEN) {
                resp.headers_mut().insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                resp.headers_mut().insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
            }
            resp
        }
        ("/api/publish", &Method::OPTIONS) => publish::preflight(&app, req.headers()),
        (p, &Method::DELETE) if p.starts_with("/api/state/") => {
            publish::clear_state(&app, req.headers(), &p["/api/state/".len()..]).await
        }
        ("/", &Method::GET) => static_asset(INDEX_HTML, "text/html; charset=utf-8"),
        ("/assets/dashboard.js", &Method::GET) => {
            static_asset(DASHBOARD_JS, "text/javascript; charset=utf-8")
        }
        ("/healthz", &Method::GET) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        ("/readyz", &Method::GET) => {
            if app.shutdown.is_cancelled() {
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"status": "shutting_down"}))
            } else if let Some(reason) = app.hub.unavailable() {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "engine_unavailable", "reason": reason}),
                )
            } else {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            }
        }
        ("/api/stats" | "/metrics", &Method::GET) if metrics_denied.is_some() => error_response(
            metrics_denied.unwrap_or(StatusCode::UNAUTHORIZED),
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <MODELCAST_METRICS_TOKEN>`",
        ),
        ("/api/stats", &Method::GET) => json_response(StatusCode::OK, &stats(&app)),
        ("/api/openapi.json", &Method::GET) => {
            static OPENAPI: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
            json_response(StatusCode::OK, OPENAPI.get_or_init(modelcast_protocol::schema::openapi))
        }
        ("/api/state" | "/api/state/", &Method::GET) if metrics_denied.is_some() => error_response(
            metrics_denied.unwrap_or(StatusCode::UNAUTHORIZED),
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <MODELCAST_METRICS_TOKEN>`",
        ),
        ("/api/state" | "/api/state/", &Method::GET) => state(&app, req.uri().query()),
        ("/metrics", &Method::GET) => {
            app.metrics.engine_up.set(i64::from(app.hub.unavailable().is_none()));
            let body = app.metrics.encode(&app.hub.stats());
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        ("/ws" | "/healthz" | "/readyz" | "/api/stats" | "/api/state" | "/metrics", _) => {
            method_not_allowed("GET")
        }
        (p, _) if p.starts_with("/ws/") => method_not_allowed("GET"),
        ("/api/publish", _) => method_not_allowed("POST"),
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {method} {path}"),
        ),
    };
    let status = response.status().as_u16();
    match response.extensions().get::<Refusal>() {
        // A refused WebSocket handshake says why, for the operator looking at a client that
        // cannot connect.
        Some(refusal) if path.starts_with("/ws") => tracing::info!(
            %peer, %path, status, code = %refusal.code, reason = %refusal.message,
            "websocket handshake refused"
        ),
        _ => tracing::debug!(%peer, %method, %path, status, "http"),
    }
    Ok(response)
}

/// `GET /api/state?topic=…`: the frames a new subscriber to the topic receives first, as it
/// receives them (marked `late`).
fn state(app: &App, query: Option<&str>) -> Resp {
    let topic = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("topic="))
        .map(|t| t.parse::<modelcast_protocol::Topic>());
    let topic = match topic {
        Some(Ok(topic)) => topic,
        Some(Err(err)) => {
            return error_response(StatusCode::BAD_REQUEST, "unknown_topic", &err.to_string());
        }
        None => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "missing_topic",
                "name the topic: GET /api/state?topic=download_progress",
            );
        }
    };
    let frames: Vec<Value> = app
        .hub
        .retained(topic)
        .iter()
        .filter_map(|f| serde_json::from_slice(f.as_bytes()).ok())
        .collect();
    let (epoch, seq) = app.hub.position(topic);
    json_response(
        StatusCode::OK,
        &json!({"topic": topic, "epoch": epoch, "seq": seq, "state": frames}),
    )
}

/// The engine's part of `/api/stats`.
fn engine(app: &App) -> Value {
    let Some(engine) = &app.engine else { return json!({"kind": "memory", "up": true}) };
    let h = &engine.health;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "kind": "redis",
        "up": h.is_up(),
        "following": h.following.load(Ordering::Relaxed),
        "unavailable_reason": app.hub.unavailable(),
        "append_failures": n(&h.append_failures),
        "topic_repairs": n(&h.repairs),
        "topic_resets": n(&h.resets),
        "pubsub_reconnects": n(&h.reconnects),
    })
}

/// `GET /api/stats`. Every figure is named for what it counts, and `help` says it, so a
/// person can read the document without the source.
fn stats(app: &App) -> Value {
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
                }),
            )
        })
        .collect();
    let count =
        |reason: DropReason| stats.drops.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n);
    json!({
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
        "connections": app.active.load(Ordering::Relaxed),
        "epoch": app.hub.epoch(),
        "node_id": app.node_id,
        "engine": engine(app),
        "topics": topics,
        "connections_dropped": {
            "slow_consumer": count(DropReason::SlowConsumer),
            "replaced": count(DropReason::Replaced),
        },
        "connections_ended": {
            "closed": count(DropReason::Closed),
            "shutdown": count(DropReason::Shutdown),
        },
        "help": {
            "published": "messages sequenced on the topic (after throttling and batching)",
            "absorbed_before_publish": "updates replaced by a newer value of their key before they were published: never sequenced, never sent",
            "delivered": "frames queued to subscribers: each publish once per subscriber that receives it, plus replayed and current-state frames",
            "skipped_per_subscriber": "per-subscriber deliveries replaced by a newer value of the key (max_hz, or a full queue collapsed)",
            "discarded_with_dropped_subscribers": "frames still queued when their subscriber was dropped",
            "connections_dropped": "connections the server closed: too slow (4001), or replaced by the same id (4002)",
            "connections_ended": "connections closed by their owner or by a shutdown",
        },
    })
}
