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
use modelcast_protocol::{ApiErrorCode, ErrorCode};
use tokio::net::TcpStream;

use crate::admit::admit;
use crate::error::ApiError;
use crate::response::{Resp, error_response};
use crate::session::{Socket, run};
use crate::state::{App, Publisher};

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

/// Answers a WebSocket handshake: 101 and a session task, or a JSON error.
pub(crate) fn upgrade(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    id: Option<String>,
    peer: std::net::IpAddr,
) -> Resp {
    let id = match id {
        Some(id) if valid_id(&id) => id,
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_connection_id",
                "a connection id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
            );
        }
        None => format!("c-{:016x}", rand_u64()),
    };
    let is_upgrade =
        header_has(&req, UPGRADE, "websocket") && header_has(&req, CONNECTION, "upgrade");
    if !is_upgrade {
        let mut resp = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "this endpoint speaks WebSocket: connect with a WebSocket client",
        );
        resp.headers_mut().insert(UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    // RFC 6455 §4.2.1–4.2.2: one version, 13 (another gets 426 naming the one spoken), and one
    // key that is 16 bytes in base64.
    let versions: Vec<&HeaderValue> = req.headers().get_all(SEC_WEBSOCKET_VERSION).iter().collect();
    match versions.as_slice() {
        [version] if version.as_bytes() == b"13" => {}
        [_] => {
            let mut resp = error_response(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_websocket_version",
                "only WebSocket version 13 is supported",
            );
            resp.headers_mut().insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return resp;
        }
        _ => {
            let mut resp = error_response(
                StatusCode::BAD_REQUEST,
                "invalid_websocket_version",
                "send exactly one Sec-WebSocket-Version header: 13",
            );
            resp.headers_mut().insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return resp;
        }
    }
    let keys: Vec<&HeaderValue> = req.headers().get_all(SEC_WEBSOCKET_KEY).iter().collect();
    let key = match keys.as_slice() {
        [key] if valid_key(key.as_bytes()) => (*key).clone(),
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_websocket_key",
                "send exactly one Sec-WebSocket-Key: 16 random bytes in base64 (24 characters)",
            );
        }
    };
    let authenticate = || {
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
    };
    let (admitted, (identity, publisher)) = match admit(app, req.headers(), peer, authenticate) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    // permessage-deflate when the client offers it in a form this server accepts (RFC 7692:
    // a declined offer means an uncompressed connection, not a refusal).
    let deflate = app
        .config
        .compression
        .then(|| {
            modelcast_ws::negotiate(
                req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS).iter().map(HeaderValue::as_bytes),
            )
        })
        .flatten();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = modelcast_ws::accept_key(key.as_bytes());
    let app = app.clone();
    app.tracker.clone().spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(%err, "websocket upgrade failed");
                return;
            }
        };
        // The server's connections are TCP streams (app.rs), which is what hyper hands back
        // with the bytes it read past the request.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let socket =
                    Socket { stream: parts.io.into_inner(), already_read: parts.read_buf, deflate };
                run(app, socket, id, admitted, identity, publisher).await;
            }
            Err(_) => tracing::error!("websocket upgrade on a connection that is not TCP"),
        }
    });
    let mut resp = Response::new(Default::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    if let Some(deflate) = deflate {
        headers.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(&deflate.response()).expect("ASCII parameters"),
        );
    }
    resp
}

/// 401 for a token that is missing or refused (counted), asking for a Bearer token.
pub(crate) fn refuse_token(app: &App, reason: impl Into<String>) -> ApiError {
    app.metrics.error(&ErrorCode::Unauthorized);
    ApiError::unauthorized(reason)
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
