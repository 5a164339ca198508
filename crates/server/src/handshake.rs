//! The WebSocket handshake: id, upgrade headers, shutdown, origin, per-IP rate, URL token,
//! connection limit; then the 101 and the session task.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use modelcast_protocol::ApiErrorCode;

use modelcast_ws::Deflate;

use crate::admit::{Admitted, admit, refuse_token};
use crate::error::{ApiError, ApiResult};
use crate::response::Resp;
use crate::security::Identity;
use crate::session::{Socket, run};
use crate::state::{App, Publisher};
use crate::stream::Stream;

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64, which is 22 characters of the alphabet and `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
}

fn header_has(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers a WebSocket handshake: 101 and a session task, or the refusal.
pub(crate) fn upgrade(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    id: Option<String>,
    peer: std::net::IpAddr,
) -> ApiResult {
    let id = connection_id(id)?;
    let key = websocket_key(&req)?;
    let (admitted, (identity, publisher)) =
        admit(app, req.headers(), peer, || authenticate(app, &req))?;
    // permessage-deflate when the client offers it in a form this server accepts (RFC 7692:
    // a declined offer means an uncompressed connection, not a refusal).
    let offers = req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS);
    let deflate = app
        .config
        .compression
        .then(|| modelcast_ws::negotiate(offers.iter().map(HeaderValue::as_bytes)))
        .flatten();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session = Session { app: app.clone(), id, admitted, identity, publisher, deflate };
    app.tracker.spawn(session.start(on_upgrade));
    Ok(switching_protocols(&key, deflate))
}

/// The connection id from the path (checked), or a server-made one for `/ws`.
fn connection_id(id: Option<String>) -> ApiResult<String> {
    match id {
        Some(id) if valid_id(&id) => Ok(id),
        Some(_) => Err(ApiError::new(
            ApiErrorCode::InvalidConnectionId,
            "a connection id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
        )),
        None => Ok(format!("c-{:016x}", rand_u64())),
    }
}

/// The request is a WebSocket upgrade (RFC 6455 §4.2.1–4.2.2): `Upgrade` and `Connection`,
/// one version, 13 (another gets 426 naming the one spoken), and one key that is 16 bytes in
/// base64. Returns the key.
fn websocket_key(req: &Request<Incoming>) -> ApiResult<HeaderValue> {
    if !(header_has(req, UPGRADE, "websocket") && header_has(req, CONNECTION, "upgrade")) {
        let message = "this endpoint speaks WebSocket: connect with a WebSocket client";
        let refused = ApiError::new(ApiErrorCode::WebsocketRequired, message);
        return Err(refused.header(UPGRADE, HeaderValue::from_static("websocket")));
    }
    let thirteen = HeaderValue::from_static("13");
    let versions: Vec<&HeaderValue> = req.headers().get_all(SEC_WEBSOCKET_VERSION).iter().collect();
    match versions.as_slice() {
        [version] if version.as_bytes() == b"13" => {}
        [_] => {
            let message = "only WebSocket version 13 is supported";
            let refused = ApiError::new(ApiErrorCode::UnsupportedWebsocketVersion, message);
            return Err(refused.header(SEC_WEBSOCKET_VERSION, thirteen));
        }
        _ => {
            let message = "send exactly one Sec-WebSocket-Version header: 13";
            let refused = ApiError::new(ApiErrorCode::InvalidWebsocketVersion, message);
            return Err(refused.header(SEC_WEBSOCKET_VERSION, thirteen));
        }
    }
    let keys: Vec<&HeaderValue> = req.headers().get_all(SEC_WEBSOCKET_KEY).iter().collect();
    match keys.as_slice() {
        [key] if valid_key(key.as_bytes()) => Ok((*key).clone()),
        _ => Err(ApiError::new(
            ApiErrorCode::InvalidWebsocketKey,
            "send exactly one Sec-WebSocket-Key: 16 random bytes in base64 (24 characters)",
        )),
    }
}

/// The WebSocket's credentials: a URL token (where tokens are required; without one the
/// session waits for an `auth` frame), and whether it may publish (a publish key makes a
/// trusted backend; a wrong one is refused).
fn authenticate(app: &App, req: &Request<Incoming>) -> ApiResult<(Option<Identity>, Publisher)> {
    let identity = match (app.security.auth_required(), query_token(req.uri())) {
        (false, _) | (true, None) => None,
        (true, Some(token)) => {
            Some(app.security.verify(&token).map_err(|reason| refuse_token(app, reason))?)
        }
    };
    let publisher = match app.security.check_publish_key(req.headers()) {
        Err(false) => {
            let message = "that publish key is not valid here";
            return Err(ApiError::new(ApiErrorCode::Forbidden, message));
        }
        Err(true) => Publisher::No,
        Ok(()) if app.security.has_publish_keys() => Publisher::Key,
        Ok(()) if app.security.browser_may_publish(req.headers()).is_ok() => Publisher::Open,
        Ok(()) => Publisher::No,
    };
    Ok((identity, publisher))
}

/// An admitted WebSocket, waiting for hyper to hand over its socket.
struct Session {
    app: Arc<App>,
    id: String,
    admitted: Admitted,
    identity: Option<Identity>,
    publisher: Publisher,
    deflate: Option<Deflate>,
}

impl Session {
    /// Takes the upgraded socket and runs the session on it.
    async fn start(self, on_upgrade: hyper::upgrade::OnUpgrade) {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "websocket upgrade failed");
                return;
            }
        };
        // The server's connections are `Stream`s (app.rs: TCP or TLS), which is what hyper
        // hands back with the bytes it read past the request.
        let Ok(parts) = upgraded.downcast::<TokioIo<Stream>>() else {
            tracing::error!("websocket upgrade on a connection that is not the server's own");
            return;
        };
        let Session { app, id, admitted, identity, publisher, deflate } = self;
        let socket =
            Socket { stream: parts.io.into_inner(), already_read: parts.read_buf, deflate };
        run(app, socket, id, admitted, identity, publisher).await;
    }
}

/// The 101 answering the client's `key` (with the agreed permessage-deflate parameters).
fn switching_protocols(key: &HeaderValue, deflate: Option<Deflate>) -> Resp {
    let mut resp = Response::new(Default::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = modelcast_ws::accept_key(key.as_bytes());
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    if let Some(deflate) = deflate {
        let parameters = HeaderValue::from_str(&deflate.response()).expect("ASCII parameters");
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, parameters);
    }
    resp
}

/// The `token` query parameter, decoded as a browser encodes a query.
fn query_token(uri: &hyper::Uri) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}
