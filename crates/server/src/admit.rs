//! [`admit`]: the one admission of a long-lived connection — a WebSocket or an event stream —
//! so both transports are checked alike, in one order: the shutdown, the page's origin, the
//! address's connection rate, the credential (each transport's own), the address's open
//! connections, the server's connection cap.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::header::HeaderMap;
use modelcast_protocol::ApiErrorCode::{
    OriginNotAllowed, RateLimited, ShuttingDown, TooManyConnections, TooManyConnectionsFromAddress,
};
use modelcast_protocol::ErrorCode;

use crate::error::{ApiError, ApiResult};
use crate::state::{AddressSlot, App};

/// An admitted connection's places: counted against `WEBSOCKET_MAX_CONNECTIONS` and its
/// address's `MODELCAST_MAX_CONNECTIONS_PER_IP` until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    app: Arc<App>,
    _address: AddressSlot,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.app.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// 401 for a token that is missing or refused (counted), asking for a Bearer token.
pub(crate) fn refuse_token(app: &App, reason: impl Into<String>) -> ApiError {
    app.metrics.error(&ErrorCode::Unauthorized);
    ApiError::unauthorized(reason)
}

/// Admits a connection from `peer` with `headers`, `authenticate` being the transport's own
/// credential check. Refused with `shutting_down`, `origin_not_allowed`, `rate_limited`,
/// `too_many_connections_from_address` or `too_many_connections` (with `Retry-After`), or as
/// `authenticate` refuses.
pub(crate) fn admit<T>(
    app: &Arc<App>,
    headers: &HeaderMap,
    peer: IpAddr,
    authenticate: impl FnOnce() -> ApiResult<T>,
) -> ApiResult<(Admitted, T)> {
    if app.shutdown.is_cancelled() {
        return Err(ApiError::new(ShuttingDown, "the server is shutting down").retry_after(5));
    }
    if !app.security.origin_allowed(headers) {
        return Err(ApiError::new(OriginNotAllowed, "this page's origin may not connect"));
    }
    let client = app.security.client_ip(peer, headers);
    if !app.security.admit_ip(client) {
        let message = "too many connection attempts from this address; retry with backoff";
        return Err(ApiError::new(RateLimited, message).retry_after(1));
    }
    let authenticated = authenticate()?;
    let Some(address) = app.streams_per_ip.admit(client) else {
        let max = app.streams_per_ip.max();
        app.metrics.error(&ErrorCode::Other(TooManyConnectionsFromAddress.as_str().into()));
        let message = format!(
            "this address holds its maximum of {max} connections \
             (MODELCAST_MAX_CONNECTIONS_PER_IP); close some or retry later"
        );
        return Err(ApiError::new(TooManyConnectionsFromAddress, message).retry_after(5));
    };
    let max = app.config.max_connections;
    if app.active.fetch_add(1, Ordering::Relaxed) >= max {
        app.active.fetch_sub(1, Ordering::Relaxed);
        app.metrics.error(&ErrorCode::Other(TooManyConnections.as_str().into()));
        let message = format!("the server holds its maximum of {max} connections; retry later");
        let refused = ApiError::new(TooManyConnections, message).with("max_connections", max);
        return Err(refused.retry_after(5));
    }
    Ok((Admitted { app: app.clone(), _address: address }, authenticated))
}
