//! `POST /api/publish` (exactly the frames clients receive, checked by `validate.rs`, published
//! through the policy), `DELETE /api/state/{topic}/{key}` and the publish preflight: each a
//! list of steps, each step's refusal an [`ApiError`].

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use modelcast_notifiers::{Outcome, Outgoing};
use modelcast_protocol::{ApiErrorCode, ErrorCode, Topic};
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::response::{Resp, json_response};
use crate::state::{App, PublishPermit};
use crate::validate::{self, Checked};

/// `POST /api/publish`: one message or an array of them.
pub(crate) async fn handle(app: &Arc<App>, req: Request<Incoming>) -> ApiResult {
    authorize(app, req.headers(), "publishing")?;
    let key = validate::idempotency_key(req.headers())?;
    // Held until the answer: the drain closes subscribers only after the last publish it
    // acknowledged reached their queues.
    let _publishing = permit(app)?;
    engine_available(app, "cannot publish now")?;
    let body = read_body(app, req).await?;
    let (messages, _single) = validate::messages(&body)?;
    // HTTP-published downloads feed the same stale watchdog as in-process ones.
    let downloads = app.notifiers.downloads();
    for (message, audience) in &messages {
        downloads.with_audience(audience.clone()).observe(message);
    }
    let type_names: Vec<&'static str> = messages.iter().map(|(m, _)| m.type_name()).collect();
    let outcomes = publish(app, messages, key.as_deref(), &body).await?;
    answer(app, type_names, outcomes).await
}

/// A browser page may publish only from an allowed origin, and with a publish key where the
/// server has keys (401 without one, 403 with a wrong one).
fn authorize(app: &App, headers: &HeaderMap, what: &str) -> ApiResult<()> {
    if let Err(message) = app.security.browser_may_publish(headers) {
        return Err(ApiError::new(ApiErrorCode::ForbiddenOrigin, message));
    }
    match app.security.check_publish_key(headers) {
        Ok(()) => Ok(()),
        Err(true) => Err(ApiError::unauthorized(format!(
            "{what} needs `Authorization: Bearer <key>` with one of the server's publish keys"
        ))),
        Err(false) => {
            Err(ApiError::new(ApiErrorCode::Forbidden, "that publish key is not valid here"))
        }
    }
}

/// A publish may go ahead: refused (503 `shutting_down`) once the server drains.
fn permit(app: &App) -> ApiResult<PublishPermit<'_>> {
    app.publish_permit().ok_or_else(|| {
        let message = "the server is shutting down; publish to another node or retry shortly";
        ApiError::new(ApiErrorCode::ShuttingDown, message).retry_after(1)
    })
}

/// The engine (Redis) takes messages now: else 503 with `Retry-After`; nothing is made up
/// locally, so a retry is safe (with `Idempotency-Key`, even one that overlaps).
fn engine_available(app: &App, what: &str) -> ApiResult<()> {
    match app.hub.unavailable() {
        None => Ok(()),
        Some(reason) => Err(unavailable(format!("{what}: {reason}"))),
    }
}

/// 503 `unavailable`, retry in a second.
fn unavailable(message: String) -> ApiError {
    ApiError::new(ApiErrorCode::Unavailable, message).retry_after(1)
}

/// The body of a publish: within `MODELCAST_MAX_PUBLISH_BYTES` (a larger declared length is
/// refused before a byte of it is read) and `MODELCAST_BODY_TIMEOUT`.
pub(crate) async fn read_body(app: &App, req: Request<Incoming>) -> ApiResult<Bytes> {
    let limit = app.config.max_publish_bytes;
    let too_large = || {
        let message = format!(
            "the body is larger than {limit} bytes (MODELCAST_MAX_PUBLISH_BYTES); publish in \
             smaller arrays"
        );
        ApiError::new(ApiErrorCode::PayloadTooLarge, message)
    };
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH);
    if declared.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        > Some(limit as u64)
    {
        // Refused before a byte of it is read; the unread body ends the connection.
        return Err(too_large().closing());
    }
    let timeout = app.config.body_timeout;
    let body = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect());
    match body.await {
        Err(_elapsed) => {
            let message =
                format!("the body did not arrive within {timeout:?} (MODELCAST_BODY_TIMEOUT)");
            Err(ApiError::new(ApiErrorCode::BodyTimeout, message).closing())
        }
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(err)) => {
            Err(ApiError::new(ApiErrorCode::BadBody, format!("reading the body failed: {err}")))
        }
    }
}

/// Publishes the checked messages through the policy, in order. Without a key the whole body
/// goes in one call: consecutive messages of a topic are fanned out together. With one, the
/// key names this request (its body): claimed before anything is published, so another body
/// under it publishes nothing; then one key per element, made with a space, which a header's
/// key cannot hold, so no two requests' keys ever meet, and a retry of the same body maps
/// element to element.
async fn publish(
    app: &App,
    messages: Vec<Checked>,
    key: Option<&str>,
    body: &[u8],
) -> ApiResult<Vec<Option<Outcome>>> {
    let outgoing =
        messages.into_iter().map(|(message, audience)| Outgoing::new(message).to(audience));
    let Some(key) = key else { return Ok(app.policy.publish(outgoing)) };
    if let Err(err) = app.hub.claim(key, &validate::digest(body)).wait().await {
        return Err(refused(app, &err));
    }
    let keyed = outgoing.enumerate().map(|(i, out)| out.idempotency_key(format!("{key} {i}")));
    Ok(app.policy.publish(keyed))
}

/// A publish the hub refused: 409 when the idempotency key names another request, 503 with
/// `Retry-After` when the key table is full or the engine is down. Counted.
fn refused(app: &App, err: &modelcast_hub::Error) -> ApiError {
    let (code, retry_after) = match err {
        modelcast_hub::Error::IdempotencyConflict { .. } => {
            (ApiErrorCode::IdempotencyKeyReused, None)
        }
        modelcast_hub::Error::IdempotencyFull { retry_after, .. } => {
            (ApiErrorCode::IdempotencyKeysFull, Some(*retry_after))
        }
        _ => (ApiErrorCode::Unavailable, Some(1)),
    };
    app.metrics.error(&ErrorCode::Other(code.as_str().into()));
    let error = ApiError::new(code, err.to_string());
    match retry_after {
        Some(seconds) => error.retry_after(seconds),
        None => error,
    }
}

/// 202 with what became of each message, once the engine stored them (their positions); or,
/// if it refused some, 503 with what was accepted (a retry with the same `Idempotency-Key`
/// publishes the rest without duplicates).
async fn answer(
    app: &App,
    type_names: Vec<&'static str>,
    outcomes: Vec<Option<Outcome>>,
) -> ApiResult {
    let mut accepted = Vec::with_capacity(outcomes.len());
    let mut failure: Option<modelcast_hub::Error> = None;
    for (type_name, outcome) in type_names.into_iter().zip(outcomes) {
        let (topic, status, at) = match outcome {
            Some(Outcome::Sent { topic, at }) => (Some(topic), "sent", Some(at)),
            Some(Outcome::Appending { topic, pending }) => match pending.wait().await {
                Ok(at) => (Some(topic), "sent", Some(at)),
                Err(err) => {
                    failure.get_or_insert(err);
                    (Some(topic), "failed", None)
                }
            },
            Some(Outcome::Held { topic }) => (Some(topic), "held", None),
            Some(Outcome::Filtered { topic }) => (Some(topic), "filtered", None),
            _ => (None, "rejected", None),
        };
        accepted.push(element(type_name, topic, status, at.as_ref()));
    }
    if let Some(reason) = failure {
        let message = format!(
            "not every message was stored: {reason}; retry with the same Idempotency-Key to \
             publish the rest without duplicates"
        );
        return Err(refused(app, &reason).say(message).with("accepted", accepted));
    }
    Ok(json_response(StatusCode::ACCEPTED, &json!({ "accepted": accepted })))
}

/// One element of the answer: the message's type, topic and status, and for a message
/// sequenced now its epoch and `seq` (a publisher sees a fenced rollback as a new epoch).
fn element(
    type_name: &str,
    topic: Option<Topic>,
    status: &str,
    at: Option<&modelcast_hub::Sequenced>,
) -> Value {
    let mut element = json!({"type": type_name, "status": status});
    if let Some(topic) = topic {
        element["topic"] = json!(topic);
    }
    if let Some(at) = at {
        element["epoch"] = json!(&*at.epoch);
        element["seq"] = json!(at.seq);
    }
    element
}

/// `DELETE /api/state/{topic}/{key}[?user=…&role=…]`: removes a key's current state (e.g. a
/// download a vanished publisher left "in progress") and tells the topic's subscribers. With
/// `user`/`role` parameters (each may repeat), the state of the key published to that
/// audience. Guarded like a publish: browser origins and publish keys.
pub(crate) async fn clear_state(
    app: &App,
    headers: &HeaderMap,
    rest: &str,
    query: Option<&str>,
) -> ApiResult {
    authorize(app, headers, "clearing state")?;
    let _publishing = permit(app)?;
    let (topic, key) = validate::state_path(rest)?;
    let audience = validate::audience_of_query(query)?;
    let cleared = app.hub.clear_state(topic, &key, audience.as_ref()).await;
    match cleared.map_err(|err| unavailable(err.to_string()))? {
        true => {
            let mut cleared = json!({"topic": topic, "key": key});
            if let Some(audience) = &audience {
                cleared["audience"] = validate::audience_json(audience);
            }
            Ok(json_response(StatusCode::OK, &json!({ "cleared": cleared })))
        }
        false => Err(ApiError::new(
            ApiErrorCode::NoState,
            format!("{topic} holds no state for `{key}` (GET /api/state?topic={topic} lists it)"),
        )),
    }
}

/// A browser's CORS preflight for `POST /api/publish`: allowed origins (as for the publish
/// itself) may send JSON with a publish key; others get 403.
pub(crate) fn preflight(app: &App, headers: &HeaderMap) -> ApiResult {
    use hyper::header::{
        ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_MAX_AGE, ORIGIN, VARY,
    };
    if let Err(message) = app.security.browser_may_publish(headers) {
        return Err(ApiError::new(ApiErrorCode::ForbiddenOrigin, message));
    }
    let Some(origin) = headers.get(ORIGIN).cloned() else {
        let message = "OPTIONS /api/publish is a CORS preflight: it needs an Origin header";
        return Err(ApiError::new(ApiErrorCode::NotAPreflight, message));
    };
    let mut resp = Resp::new(Default::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type, authorization"));
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(VARY, HeaderValue::from_static("Origin"));
    Ok(resp)
}
