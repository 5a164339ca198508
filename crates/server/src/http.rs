//! HTTP routing: the router depends on the handlers (`handshake`, `publish`) and on the
//! response helpers; no handler imports it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use modelcast_protocol::ApiErrorCode;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::handshake::refuse_token;
use crate::response::{Body, Refusal, Resp, error_response, json_response, method_not_allowed};
use crate::security::{Caller, Refused};
use crate::state::{App, HttpPermit};
use crate::{handshake, publish, sse};

/// The dashboard page (`/`): markup and style; its script is [`DASHBOARD_JS`].
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The dashboard's script: `clients/typescript/dashboard/main.ts` bundled with the TypeScript
/// client (`npm run build` there; committed, checked for staleness in CI), so running the
/// server needs no Node.js.
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");

/// The dashboard's style sheet (its own file: the page's Content-Security-Policy allows no
/// inline style).
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

/// An embedded file, revalidated by browsers on every load (a new binary may change it), with
/// the headers that keep a browser from reading it as anything else or leaking the URL.
fn static_asset(body: &'static str, content_type: &'static str) -> Resp {
    let mut resp = Response::new(Body::from(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(hyper::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(hyper::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// The dashboard page, with a Content-Security-Policy: its own scripts and styles only, no
/// framing, and connections to its own origin (HTTP, and the WebSocket on the same host, which
/// `'self'` does not cover in every browser).
fn dashboard(headers: &hyper::HeaderMap) -> Resp {
    let mut resp = static_asset(INDEX_HTML, "text/html; charset=utf-8");
    let host =
        headers.get(hyper::header::HOST).and_then(|h| h.to_str().ok()).filter(|h| valid_host(h));
    let connect = match host {
        Some(host) => format!("'self' ws://{host} wss://{host}"),
        None => "'self'".to_owned(),
    };
    let policy = format!(
        "default-src 'self'; connect-src {connect}; img-src 'self' data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        resp.headers_mut().insert(hyper::header::CONTENT_SECURITY_POLICY, value);
    }
    resp
}

/// A `Host` header that may go into a policy: a name or address and a port, nothing else.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// What a path is, whatever the method.
enum Route<'a> {
    WebSocket(Option<&'a str>),
    /// `GET /sse`: Server-Sent Events.
    Sse,
    Publish,
    /// `/api/state/{topic}/{key}` (the rest after `/api/state/`, still percent-encoded).
    StateKey(&'a str),
    State,
    Dashboard,
    DashboardJs,
    DashboardCss,
    Healthz,
    Readyz,
    Stats,
    OpenApi,
    Metrics,
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Option<Self> {
        Some(match path {
            "/ws" => Route::WebSocket(None),
            "/sse" => Route::Sse,
            "/api/publish" => Route::Publish,
            "/api/state" | "/api/state/" => Route::State,
            "/" => Route::Dashboard,
            "/assets/dashboard.js" => Route::DashboardJs,
            "/assets/dashboard.css" => Route::DashboardCss,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/api/stats" => Route::Stats,
            "/api/openapi.json" => Route::OpenApi,
            "/metrics" => Route::Metrics,
            p => {
                if let Some(id) = p.strip_prefix("/ws/") {
                    Route::WebSocket(Some(id))
                } else if let Some(rest) = p.strip_prefix("/api/state/") {
                    Route::StateKey(rest)
                } else {
                    return None;
                }
            }
        })
    }

    /// The methods the route answers (the `Allow` header of a 405).
    fn allow(&self) -> &'static str {
        match self {
            Route::WebSocket(_) => "GET",
            Route::Sse => "GET, OPTIONS",
            Route::Publish => "POST, OPTIONS",
            Route::StateKey(_) => "DELETE",
            _ => "GET, HEAD",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        self.allow().split(", ").any(|m| m == method.as_str())
    }
}

pub(crate) async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    permit: HttpPermit,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let response = match Route::of(&path) {
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {method} {path}"),
        ),
        Some(route) if !route.allows(&method) => method_not_allowed(route.allow()),
        Some(route) => respond(&app, route, req, peer, &permit).await,
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

/// Answers a request whose route allows its method (`HEAD` is answered as `GET`; hyper sends
/// the headers only).
async fn respond(
    app: &Arc<App>,
    route: Route<'_>,
    req: Request<Incoming>,
    peer: SocketAddr,
    permit: &HttpPermit,
) -> Resp {
    match route {
        Route::WebSocket(id) => {
            let id = id.map(str::to_owned);
            handshake::upgrade(app, req, id, peer.ip())
        }
        Route::Sse if req.method() == Method::OPTIONS => sse::preflight(app, req.headers()),
        Route::Sse => sse::open(app, req, peer.ip(), permit),
        Route::Publish if req.method() == Method::OPTIONS => publish::preflight(app, req.headers()),
        Route::Publish => {
            let origin = req.headers().get(hyper::header::ORIGIN).cloned();
            let mut resp = publish::handle(app, req).await;
            // An allowed browser page may read the answer (CORS).
            if let Some(origin) = origin.filter(|_| resp.status() != StatusCode::FORBIDDEN) {
                resp.headers_mut().insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                resp.headers_mut().insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
            }
            resp
        }
        Route::StateKey(rest) => {
            publish::clear_state(app, req.headers(), rest, req.uri().query()).await
        }
        Route::Dashboard => dashboard(req.headers()),
        Route::DashboardJs => static_asset(DASHBOARD_JS, "text/javascript; charset=utf-8"),
        Route::DashboardCss => static_asset(DASHBOARD_CSS, "text/css; charset=utf-8"),
        Route::Healthz => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Route::Readyz => {
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
        Route::Stats => match operator(app, &req) {
            Ok(()) => json_response(StatusCode::OK, &stats(app)),
            Err(refused) => refused.into_response(),
        },
        Route::OpenApi => {
            static OPENAPI: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
            json_response(StatusCode::OK, OPENAPI.get_or_init(modelcast_protocol::schema::openapi))
        }
        Route::State => match caller(app, &req) {
            Ok(caller) => state(app, req.uri().query(), &caller),
            Err(refused) => refused.into_response(),
        },
        Route::Metrics => {
            if let Err(refused) = operator(app, &req) {
                return refused.into_response();
            }
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
                app.metrics
                    .engine_shard_up
                    .get_or_create(&crate::metrics::ShardLabel { primary })
                    .set(up);
            }
            let body = app.metrics.encode(&app.hub.stats());
            let mut resp = Response::new(Body::from(Bytes::from(body)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
    }
}

/// Who a request is ([`crate::security::Security::caller`]): its bearer credential, or a
/// `?token=` (a browser page's way to send one).
fn caller(app: &App, req: &Request<Incoming>) -> ApiResult<Caller> {
    let token = query_param(req.uri().query(), "token");
    app.security.caller(req.headers(), token.as_deref()).map_err(|refused| refusal(app, refused))
}

/// An operator endpoint's check: an operator credential, where they are guarded.
fn operator(app: &App, req: &Request<Incoming>) -> ApiResult<()> {
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
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The most frames one `GET /api/state` page holds, and the default.
const STATE_PAGE_MAX: usize = 10_000;
const STATE_PAGE_DEFAULT: usize = 1_000;

/// `GET /api/state?topic=…[&limit=N][&after=CURSOR]`: a page of the frames a new subscriber
/// to the topic receives first, as it receives them (marked `late`). The frames the hub holds
/// are written as they are, between a small head and tail: no value tree, no copy.
///
/// What `caller` sees is what it could subscribe to: an operator every key (with
/// `audiences`); a token's user the keys a subscription of that user receives (its topic
/// roles, its audience: the hub's one check); without a credential, where tokens are
/// required or a metrics token is set, nothing (401), else what an anonymous subscriber
/// receives.
fn state(app: &App, query: Option<&str>, caller: &Caller) -> Resp {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let topic = match param("topic").map(str::parse::<modelcast_protocol::Topic>) {
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
    let limit = match param("limit").map(str::parse::<usize>) {
        None => STATE_PAGE_DEFAULT,
        Some(Ok(n)) if (1..=STATE_PAGE_MAX).contains(&n) => n,
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                &format!("limit is a whole number from 1 to {STATE_PAGE_MAX}"),
            );
        }
    };
    let after = match param("after").map(str::parse::<u64>) {
        None => None,
        Some(Ok(cursor)) => Some(cursor),
        Some(Err(_)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "after is the `next` of the previous page (a whole number)",
            );
        }
    };
    let viewer = match caller {
        Caller::Operator => None,
        Caller::Viewer(identity) => {
            if !app.security.may_subscribe(Some(identity), topic) {
                let message =
                    format!("{topic} is open to the roles {} only", app.security.roles_for(topic));
                return error_response(StatusCode::FORBIDDEN, "forbidden", &message);
            }
            Some(identity.viewer())
        }
        Caller::Anonymous if app.security.operator_guarded() => {
            let message = "GET /api/state needs a token (?token= or Authorization: Bearer): it \
                           answers what that token could subscribe to";
            return refuse_token(app, message).into_response();
        }
        Caller::Anonymous => Some(modelcast_hub::Viewer::anonymous()),
    };
    let page = app.hub.state_page(topic, after, limit, viewer.as_ref());
    let mut head = json!({"topic": topic, "epoch": page.epoch, "seq": page.seq, "keys": page.keys,
        "next": page.next});
    if viewer.is_none() {
        // Who each frame is for (`null`: every subscriber), index for index with `state`:
        // for operators only (subscribers never see an audience's members).
        let audiences: Vec<Value> = page
            .audiences
            .iter()
            .map(|a| a.as_ref().map_or(Value::Null, publish::audience_json))
            .collect();
        head["audiences"] = json!(audiences);
    }
    // `{…head…,"state":[` frame `,` frame … `]}`: the head's closing brace makes way.
    let mut head = head.to_string();
    head.pop();
    head.push_str(",\"state\":[");
    let comma = Bytes::from_static(b",");
    let mut chunks = Vec::with_capacity(2 * page.frames.len() + 2);
    chunks.push(Bytes::from(head));
    for (i, frame) in page.frames.into_iter().enumerate() {
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
