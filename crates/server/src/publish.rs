//! `POST /api/publish`: exactly the frames clients receive, validated by the typed protocol,
//! published through the policy.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use modelcast_notifiers::Outcome;
use modelcast_protocol::{ApiErrorCode, PublishFrame, ServerMessage};
use serde_json::{Value, json};
use serde_path_to_error::Segment;

use crate::error::{ApiError, ApiResult};
use crate::response::{Resp, error_response, json_response};
use crate::state::App;

fn invalid(index: Option<usize>, field: Option<String>, message: String) -> Resp {
    let mut error = json!({"code": "invalid_message", "message": message});
    if let Some(i) = index {
        error["index"] = json!(i);
    }
    if let Some(f) = field {
        error["field"] = json!(f);
    }
    json_response(StatusCode::BAD_REQUEST, &json!({"error": error}))
}

/// A browser's CORS preflight for `POST /api/publish`: allowed origins (as for the publish
/// itself) may send JSON with a publish key; others get 403.
pub(crate) fn preflight(app: &App, headers: &hyper::HeaderMap) -> Resp {
    use hyper::header::{
        ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_MAX_AGE, HeaderValue, ORIGIN, VARY,
    };
    let origin = headers.get(ORIGIN).cloned();
    match (app.security.browser_may_publish(headers), origin) {
        (Ok(()), Some(origin)) => {
            let mut resp = Resp::new(Default::default());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            let h = resp.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, authorization"),
            );
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            h.insert(VARY, HeaderValue::from_static("Origin"));
            resp
        }
        (Err(message), _) => error_response(StatusCode::FORBIDDEN, "forbidden_origin", &message),
        (Ok(()), None) => error_response(
            StatusCode::BAD_REQUEST,
            "not_a_preflight",
            "OPTIONS /api/publish is a CORS preflight: it needs an Origin header",
        ),
    }
}

/// `DELETE /api/state/{topic}/{key}[?user=…&role=…]`: removes a key's current state (e.g. a
/// download a vanished publisher left "in progress") and tells the topic's subscribers. With
/// `user`/`role` parameters (each may repeat), the state of the key published to that
/// audience. Guarded like a publish: browser origins and publish keys.
pub(crate) async fn clear_state(
    app: &App,
    headers: &hyper::HeaderMap,
    rest: &str,
    query: Option<&str>,
) -> Resp {
    if let Err(message) = app.security.browser_may_publish(headers) {
        return error_response(StatusCode::FORBIDDEN, "forbidden_origin", &message);
    }
    match app.security.check_publish_key(headers) {
        Ok(()) => {}
        Err(true) => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "clearing state needs `Authorization: Bearer <key>` with one of the server's publish keys",
            );
        }
        Err(false) => {
            return error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "that publish key is not valid here",
            );
        }
    }
    let Some(_publishing) = app.publish_permit() else { return shutting_down() };
    // The key is one path segment, percent-encoded (`sp%20ace`, `a%2Fb`); a `/` left in it
    // is part of the key too.
    let decoded = rest.split_once('/').map(|(topic, key)| {
        (topic, percent_encoding::percent_decode_str(key).decode_utf8().map(|k| k.into_owned()))
    });
    let (topic, key) = match decoded {
        Some((topic, Ok(key))) if !key.is_empty() => (topic, key),
        Some((_, Err(_))) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "the key is not UTF-8 once percent-decoded",
            );
        }
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "name the topic and the key: DELETE /api/state/download_progress/<model_id> (percent-encode the key)",
            );
        }
    };
    let key = key.as_str();
    let topic: modelcast_protocol::Topic = match topic.parse() {
        Ok(t) => t,
        Err(err) => {
            return error_response(StatusCode::BAD_REQUEST, "unknown_topic", &err.to_string());
        }
    };
    let audience = match audience_of_query(query) {
        Ok(audience) => audience,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, "invalid_audience", &message);
        }
    };
    match app.hub.clear_state(topic, key, audience.as_ref()).await {
        Ok(true) => {
            let mut cleared = json!({"topic": topic, "key": key});
            if let Some(audience) = &audience {
                cleared["audience"] = audience_json(audience);
            }
            json_response(StatusCode::OK, &json!({ "cleared": cleared }))
        }
        Ok(false) => error_response(
            StatusCode::NOT_FOUND,
            "no_state",
            &format!("{topic} holds no state for `{key}` (GET /api/state?topic={topic} lists it)"),
        ),
        Err(err) => unavailable(&err.to_string()),
    }
}

/// The audience a `DELETE /api/state` names with `user=` and `role=` parameters (`None`
/// without any), checked as a publish's audience is.
fn audience_of_query(query: Option<&str>) -> Result<Option<modelcast_hub::Audience>, String> {
    let mut users = Vec::new();
    let mut roles = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "user" => users.push(Value::String(value.into_owned())),
            "role" => roles.push(Value::String(value.into_owned())),
            other => return Err(format!("unknown parameter `{other}`; use `user` and `role`")),
        }
    }
    if users.is_empty() && roles.is_empty() {
        return Ok(None);
    }
    let mut value = json!({});
    if !users.is_empty() {
        value["users"] = Value::Array(users);
    }
    if !roles.is_empty() {
        value["roles"] = Value::Array(roles);
    }
    let audience =
        modelcast_protocol::Audience::from_value(&value, "audience").map_err(|found| {
            found
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    Ok(Some(audience.into()))
}

/// An audience as the HTTP API shows it: `{"users": [...], "roles": [...]}`.
pub(crate) fn audience_json(audience: &modelcast_hub::Audience) -> Value {
    let mut value = json!({});
    if !audience.user_names().is_empty() {
        value["users"] = json!(audience.user_names());
    }
    if !audience.role_names().is_empty() {
        value["roles"] = json!(audience.role_names());
    }
    value
}

/// 503 with `Retry-After`: the engine (Redis) cannot store messages now; nothing was made up
/// locally, so a retry is safe (with `Idempotency-Key`, even one that overlaps).
fn unavailable(message: &str) -> Resp {
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    resp
}

/// The `Idempotency-Key` header: printable ASCII, at most 200 bytes.
fn idempotency_key(headers: &hyper::HeaderMap) -> Result<Option<String>, Box<Resp>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key)
            if !key.is_empty() && key.len() <= 200 && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces (e.g. a UUID)",
        ))),
    }
}

pub(crate) async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Resp {
    if let Err(message) = app.security.browser_may_publish(req.headers()) {
        return error_response(StatusCode::FORBIDDEN, "forbidden_origin", &message);
    }
    match app.security.check_publish_key(req.headers()) {
        Ok(()) => {}
        Err(true) => {
            let mut resp = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "publishing needs `Authorization: Bearer <key>` with one of the server's publish keys",
            );
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return resp;
        }
        Err(false) => {
            return error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "that publish key is not valid here",
            );
        }
    }
    let idempotency = match idempotency_key(req.headers()) {
        Ok(key) => key,
        Err(resp) => return *resp,
    };
    // Held until the answer: the drain closes subscribers only after the last publish it
    // acknowledged reached their queues.
    let Some(_publishing) = app.publish_permit() else { return shutting_down() };
    if let Some(reason) = app.hub.unavailable() {
        return unavailable(&format!("cannot publish now: {reason}"));
    }
    let body = match read_body(app, req).await {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    if let Some(path) = modelcast_protocol::first_duplicate_key(&String::from_utf8_lossy(&body)) {
        return invalid(
            None,
            Some(path.clone()),
            format!("`{path}` appears twice; send each key once"),
        );
    }
    // The envelopes delimit each `data`; each `data` is parsed once (to a value that is
    // checked, then read into its type); an error names the element and the field.
    let (frames, single) = match parse(&body) {
        Ok(parsed) => parsed,
        Err(resp) => return *resp,
    };
    if frames.is_empty() {
        return invalid(
            None,
            None,
            "the array is empty: send one message or a non-empty array".into(),
        );
    }
    // Validate everything first: a bad element publishes nothing, and every problem of every
    // element is reported at once.
    let mut messages = Vec::with_capacity(frames.len());
    let mut problems: Vec<Value> = Vec::new();
    for (i, frame) in frames.into_iter().enumerate() {
        let index = (!single).then_some(i);
        let mut report = |field: String, message: String| {
            let mut problem = json!({"field": field, "message": message});
            if let Some(i) = index {
                problem["index"] = json!(i);
            }
            problems.push(problem);
        };
        // The envelope delimited them as JSON; reading them into values can still fail (a
        // number out of range, a lone surrogate escape, nesting too deep): say so.
        let data = read_value(frame.data.get(), "data");
        let audience = frame.audience.map(|a| read_value(a.get(), "audience")).transpose();
        let (data, audience) = match (data, audience) {
            (Ok(data), Ok(audience)) => (data, audience),
            (data, audience) => {
                for (field, message) in [data.err(), audience.err()].into_iter().flatten() {
                    report(field, message);
                }
                continue;
            }
        };
        let topic = frame.topic.as_deref();
        match check_publish(&frame.type_name, topic, data, audience.as_ref()) {
            Ok(addressed) => messages.push(addressed),
            Err(found) => found.into_iter().for_each(|(field, message)| report(field, message)),
        }
    }
    if let Some(first) = problems.first() {
        let mut error = json!({
            "code": "invalid_message",
            "message": first["message"],
            "field": first["field"],
            "errors": problems,
        });
        if let Some(i) = first.get("index") {
            error["index"] = i.clone();
        }
        return json_response(StatusCode::BAD_REQUEST, &json!({"error": error}));
    }
    let type_names: Vec<&'static str> = messages.iter().map(|(m, _)| m.type_name()).collect();
    // HTTP-published downloads feed the same stale watchdog as in-process ones.
    let downloads = app.notifiers.downloads();
    for (message, audience) in &messages {
        match audience {
            None => downloads.observe(message),
            Some(_) => downloads.with_audience(audience.clone()).observe(message),
        }
    }
    let outcomes: Vec<Option<Outcome>> = match &idempotency {
        // Without a key the whole body goes in one call: consecutive messages of a topic are
        // fanned out together (one lock per subscriber per run, not per message).
        None => app.policy.publish_many_to(messages),
        // The key names this request (its body): claimed before anything is published, so
        // another body under it publishes nothing. Then one key per element, made with a
        // space, which a header's key cannot hold, so no two requests' keys ever meet: a
        // retry of the same body maps element to element.
        Some(k) => {
            if let Err(err) = app.hub.claim(k, &digest(&body)).wait().await {
                return idempotency_refused(app, &err);
            }
            messages
                .into_iter()
                .enumerate()
                .map(|(i, (message, audience))| {
                    let key = format!("{k} {i}");
                    app.policy.with_audience(audience).publish_with(message, Some(&key))
                })
                .collect()
        }
    };
    // Appends were all handed to the engine in order above; now wait for their positions.
    let mut accepted = Vec::with_capacity(outcomes.len());
    let mut failure: Option<modelcast_hub::Error> = None;
    for (type_name, outcome) in type_names.into_iter().zip(outcomes) {
        accepted.push(match outcome {
            Some(Outcome::Sent { topic, at }) => sent(type_name, topic, &at),
            Some(Outcome::Appending { topic, pending }) => match pending.wait().await {
                Ok(at) => sent(type_name, topic, &at),
                Err(err) => {
                    failure.get_or_insert(err);
                    json!({"type": type_name, "topic": topic, "status": "failed"})
                }
            },
            Some(Outcome::Held { topic }) => {
                json!({"type": type_name, "topic": topic, "status": "held"})
            }
            Some(Outcome::Filtered { topic }) => {
                json!({"type": type_name, "topic": topic, "status": "filtered"})
            }
            _ => json!({"type": type_name, "status": "rejected"}),
        });
    }
    if let Some(reason) = failure {
        // Refused by the idempotency table (full of unexpired keys) or the engine (down): a
        // retry with the same key publishes the rest without duplicates.
        let (code, retry_after) = match &reason {
            modelcast_hub::Error::IdempotencyFull { retry_after, .. } => {
                ("idempotency_keys_full", *retry_after)
            }
            _ => ("unavailable", 1),
        };

        app.metrics.error(&modelcast_protocol::ErrorCode::Other(code.into()));
        let mut resp = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": {
                "code": code,
                "message": format!("not every message was stored: {reason}; retry with the same Idempotency-Key to publish the rest without duplicates"),
                "accepted": accepted,
            }}),
        );
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, retry_after.into());
        return resp;
    }
    json_response(StatusCode::ACCEPTED, &json!({"accepted": accepted}))
}

/// The body of a publish: within `MODELCAST_MAX_PUBLISH_BYTES` (a larger declared length is
/// refused before a byte of it is read) and `MODELCAST_BODY_TIMEOUT`.
async fn read_body(app: &App, req: Request<Incoming>) -> ApiResult<Bytes> {
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

/// 503 `shutting_down`: the server takes no publishes while it drains (another node does).
fn shutting_down() -> Resp {
    let mut resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down; publish to another node or retry shortly",
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    resp
}

/// A digest of a request's body: what its idempotency key names.
fn digest(body: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(body);
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The answer when a request's idempotency key cannot be claimed: 409 when it names another
/// request, 503 with `Retry-After` when the table is full or the engine is down. Nothing was
/// published.
fn idempotency_refused(app: &App, err: &modelcast_hub::Error) -> Resp {
    let (status, code, retry_after) = match err {
        modelcast_hub::Error::IdempotencyConflict { .. } => {
            (StatusCode::CONFLICT, "idempotency_key_reused", None)
        }
        modelcast_hub::Error::IdempotencyFull { retry_after, .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "idempotency_keys_full", Some(*retry_after))
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Some(1)),
    };
    app.metrics.error(&modelcast_protocol::ErrorCode::Other(code.into()));
    let mut resp = error_response(status, code, &err.to_string());
    if let Some(seconds) = retry_after {
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, seconds.into());
    }
    resp
}

/// A JSON value the envelope delimited, read for checking; what is wrong with it otherwise,
/// as (field, message): a number out of range, an invalid escape, nesting too deep.
fn read_value(raw: &str, field: &str) -> Result<Value, (String, String)> {
    serde_json::from_str(raw).map_err(|err| {
        let what = err.to_string();
        let what = what.split(" at line ").next().unwrap_or(&what).to_owned();
        let hint = if what.contains("recursion limit") {
            " (nested deeper than 128 levels)"
        } else if what.contains("out of range") {
            " (larger than a 64-bit float holds)"
        } else if what.contains("surrogate") || what.contains("escape") {
            " (a lone UTF-16 surrogate or another invalid \\u escape)"
        } else {
            ""
        };
        (field.to_owned(), format!("{what}{hint}"))
    })
}

/// A `202` element for a message sequenced at `at`: its epoch too, so a publisher sees a fenced
/// rollback (the numbering started again under a new epoch).
fn sent(type_name: &str, topic: modelcast_protocol::Topic, at: &modelcast_hub::Sequenced) -> Value {
    json!({"type": type_name, "topic": topic, "epoch": &*at.epoch, "seq": at.seq, "status": "sent"})
}

/// A publish's audience, read and checked, in the hub's form.
type Addressed = Option<Arc<modelcast_hub::Audience>>;

/// Checks one message and its audience for publishing (as [`check_message`]), every problem of
/// both at once.
pub(crate) fn check_publish(
    type_name: &str,
    claimed_topic: Option<&str>,
    data: Value,
    audience: Option<&Value>,
) -> Result<(ServerMessage, Addressed), Vec<(String, String)>> {
    let message = check_message(type_name, claimed_topic, data);
    let audience = audience.map(|a| modelcast_protocol::Audience::from_value(a, "audience"));
    match (message, audience) {
        (Ok(message), None) => Ok((message, None)),
        (Ok(message), Some(Ok(a))) => Ok((message, Some(Arc::new(a.into())))),
        (message, audience) => {
            let mut problems = message.err().unwrap_or_default();
            if let Some(Err(found)) = audience {
                problems.extend(found.into_iter().map(|p| (p.path, p.message)));
            }
            Err(problems)
        }
    }
}

/// Checks one message for publishing, as `POST /api/publish` and the WebSocket `publish`
/// action take it: a missing `timestamp` is stamped now; every problem is returned as
/// (field, message), fields named `data.<path>`, `type` or `topic`.
pub(crate) fn check_message(
    type_name: &str,
    claimed_topic: Option<&str>,
    mut data: Value,
) -> Result<ServerMessage, Vec<(String, String)>> {
    let Some(topic) = ServerMessage::topic_of(type_name) else {
        let message = if ServerMessage::TYPES.contains(&type_name) {
            format!("`{type_name}` is a control message; only topic messages can be published")
        } else {
            format!("unknown message type `{type_name}`")
        };
        return Err(vec![("type".into(), message)]);
    };
    // A publisher may leave the time to the server: stamped on arrival (the schemas say so).
    if let Some(fields) = data.as_object_mut()
        && !fields.contains_key("timestamp")
    {
        fields.insert("timestamp".into(), json!(chrono::Utc::now()));
    }
    let found = modelcast_protocol::publish_problems(type_name, &data);
    let mut track = serde_path_to_error::Track::new();
    let parsed = ServerMessage::from_type_and_data(
        type_name,
        serde_path_to_error::Deserializer::new(data, &mut track),
    );
    if !found.is_empty() {
        return Err(found.into_iter().map(|p| (p.path, p.message)).collect());
    }
    let message = match parsed {
        Ok(Some(message)) => message,
        Ok(None) => {
            return Err(vec![("type".into(), format!("unknown message type `{type_name}`"))]);
        }
        Err(err) => {
            // The schema walk found nothing the parser minds: report the parser's error.
            let path = track.path().to_string();
            let field = if path == "." { "data".to_owned() } else { format!("data.{path}") };
            let mut message = err.to_string();
            if field.ends_with("timestamp") {
                message.push_str(" (expected RFC 3339, e.g. 2025-08-27T10:30:00Z)");
            }
            return Err(vec![(field, message)]);
        }
    };
    if let Some(claimed) = claimed_topic
        && claimed != topic.as_str()
    {
        let message =
            format!("`{type_name}` messages belong to topic `{topic}`, not \"{claimed}\"");
        return Err(vec![("topic".into(), message)]);
    }
    Ok(message)
}

/// The body as publish frames: one object, or an array of them (`true` for one object).
fn parse(body: &[u8]) -> Result<(Vec<PublishFrame<'_>>, bool), Box<Resp>> {
    let not_json = |err: &serde_json::Error| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("the body is not valid JSON: {err}"),
        ))
    };
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = if array {
        serde_path_to_error::deserialize::<_, Vec<PublishFrame<'_>>>(&mut de).map(|v| (v, false))
    } else {
        serde_path_to_error::deserialize::<_, PublishFrame<'_>>(&mut de).map(|f| (vec![f], true))
    };
    let err = match parsed {
        Ok(parsed) => return de.end().map(|()| parsed).map_err(|e| not_json(&e)),
        Err(err) => err,
    };
    let inner = err.inner();
    if inner.is_syntax() || inner.is_eof() {
        return Err(not_json(inner));
    }
    let mut segments = err.path().iter().peekable();
    let index = match segments.peek() {
        Some(Segment::Seq { index }) if array => {
            let index = *index;
            segments.next();
            Some(index)
        }
        _ => None,
    };
    let field: Vec<String> = segments.map(ToString::to_string).collect();
    let field = (!field.is_empty()).then(|| field.join("."));
    Err(Box::new(invalid(index, field, inner.to_string())))
}
