//! HTTP routing: a [`Route`] per path with its methods, each answered by its handler
//! (`handshake`, `sse`, `publish`, `inspect`) or here (the dashboard's files, `/healthz`,
//! the OpenAPI document). The router depends on the handlers; no handler imports it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use modelcast_protocol::ApiErrorCode;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::response::{Body, Refusal, Resp, json_response};
use crate::state::{App, HttpPermit};
use crate::{handshake, inspect, manage, publish, push, sse};

/// The dashboard page (`/`): markup and style; its script is [`DASHBOARD_JS`].
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The dashboard's script: `clients/typescript/dashboard/main.ts` bundled with the TypeScript
/// client (`npm run build` there; committed, checked for staleness in CI), so running the
/// server needs no Node.js.
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");

/// The dashboard's service worker, which shows pushes as notifications:
/// `clients/typescript/dashboard/sw.ts` bundled (`npm run build` there; committed).
const PUSH_SW_JS: &str = include_str!("../assets/push-sw.js");

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
    /// `/api/push/vapid-public-key`.
    VapidKey,
    /// `/push-sw.js`: the dashboard's service worker (at the root: its scope is the site).
    PushWorker,
    /// `/api/push/subscriptions`.
    PushDevices,
    /// `GET /api/connections`.
    Connections,
    /// `GET /api/presence`.
    Presence,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `POST /api/revoke`.
    Revoke,
    /// `POST`, `DELETE /api/subscriptions`.
    Subscriptions,
    /// `GET /api/demand`.
    Demand,
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
            "/api/push/vapid-public-key" => Route::VapidKey,
            "/api/push/subscriptions" => Route::PushDevices,
            "/push-sw.js" => Route::PushWorker,
            "/api/connections" => Route::Connections,
            "/api/presence" => Route::Presence,
            "/api/disconnect" => Route::Disconnect,
            "/api/revoke" => Route::Revoke,
            "/api/subscriptions" => Route::Subscriptions,
            "/api/demand" => Route::Demand,
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
            Route::VapidKey => "GET, HEAD, OPTIONS",
            Route::PushDevices => "GET, POST, DELETE, OPTIONS",
            Route::Disconnect | Route::Revoke => "POST",
            Route::Subscriptions => "POST, DELETE",
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
    let answer = match Route::of(&path) {
        None => Err(ApiError::new(ApiErrorCode::NotFound, format!("no route for {method} {path}"))),
        Some(route) if !route.allows(&method) => Err(ApiError::new(
            ApiErrorCode::MethodNotAllowed,
            format!("this route accepts {} only", route.allow()),
        )
        .header(hyper::header::ALLOW, HeaderValue::from_static(route.allow()))),
        Some(route) => respond(&app, route, req, peer, &permit).await,
    };
    let response = answer.unwrap_or_else(ApiError::into_response);
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
) -> ApiResult {
    let preflight = req.method() == Method::OPTIONS;
    match route {
        Route::WebSocket(id) => handshake::upgrade(app, req, id.map(str::to_owned), peer.ip()),
        Route::Sse if preflight => Ok(sse::preflight(app, req.headers())),
        Route::Sse => Ok(sse::open(app, req, peer.ip(), permit)),
        Route::Publish if preflight => publish::preflight(app, req.headers()),
        Route::Publish => {
            // An allowed browser page may read the answer (CORS), refusals included but for
            // its origin's own.
            let origin = req.headers().get(hyper::header::ORIGIN).cloned();
            let resp = publish::handle(app, req).await.unwrap_or_else(ApiError::into_response);
            Ok(match origin.filter(|_| resp.status() != StatusCode::FORBIDDEN) {
                Some(origin) => allow_origin(resp, origin),
                None => resp,
            })
        }
        Route::StateKey(rest) => {
            publish::clear_state(app, req.headers(), rest, req.uri().query()).await
        }
        Route::Dashboard => Ok(dashboard(req.headers())),
        Route::DashboardJs => Ok(static_asset(DASHBOARD_JS, "text/javascript; charset=utf-8")),
        Route::DashboardCss => Ok(static_asset(DASHBOARD_CSS, "text/css; charset=utf-8")),
        Route::Healthz => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Route::Readyz => Ok(inspect::readyz(app)),
        Route::Stats => inspect::stats(app, &req),
        Route::OpenApi => {
            static OPENAPI: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
            let document = OPENAPI.get_or_init(modelcast_protocol::schema::openapi);
            Ok(json_response(StatusCode::OK, document))
        }
        Route::State => inspect::state(app, &req),
        Route::Metrics => inspect::metrics(app, &req),
        Route::VapidKey => push::handle(app, req, push::Endpoint::VapidKey).await,
        Route::PushDevices => push::handle(app, req, push::Endpoint::Devices).await,
        Route::PushWorker => Ok(static_asset(PUSH_SW_JS, "text/javascript; charset=utf-8")),
        Route::Connections => manage::connections(app, &req).await,
        Route::Presence => manage::presence(app, &req).await,
        Route::Disconnect => manage::disconnect(app, req).await,
        Route::Revoke => manage::revoke(app, req).await,
        Route::Subscriptions => manage::subscriptions(app, req).await,
        Route::Demand => manage::demand(app, &req),
    }
}

/// `resp` readable by a page from `origin` (CORS).
fn allow_origin(mut resp: Resp, origin: HeaderValue) -> Resp {
    resp.headers_mut().insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    resp.headers_mut().insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
    resp
}
