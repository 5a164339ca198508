//! What a publisher sends, read and checked once at the edge into typed values: messages (and
//! their audiences), the `Idempotency-Key` header, a state path and an audience in a query. A
//! leaf: `POST /api/publish`, `DELETE /api/state` and the WebSocket `publish` action all call
//! these, and none of them imports another handler for it.

use std::sync::Arc;

use modelcast_protocol::{ApiErrorCode, PublishFrame, ServerMessage, Topic};
use serde_json::{Value, json};
use serde_path_to_error::Segment;

use crate::error::{ApiError, ApiResult};

/// A message checked for publishing, with its audience in the hub's form (`None`: everyone).
pub(crate) type Checked = (ServerMessage, Option<Arc<modelcast_hub::Audience>>);

/// A problem of a message: the field (`data.<path>`, `type`, `topic`, `audience.<path>`) and
/// what is wrong with it.
pub(crate) type Problem = (String, String);

/// Every message of a `POST /api/publish` body (one object, or a non-empty array of them),
/// checked: all of them, or a 400 listing every problem of every element (`index`, `field`,
/// `message`), so a bad element publishes nothing. Also whether the body was one object.
pub(crate) fn messages(body: &[u8]) -> ApiResult<(Vec<Checked>, bool)> {
    if let Some(path) = modelcast_protocol::first_duplicate_key(&String::from_utf8_lossy(body)) {
        let message = format!("`{path}` appears twice; send each key once");
        return Err(invalid(vec![(None, (path, message))]));
    }
    let (frames, single) = frames(body)?;
    if frames.is_empty() {
        let message = "the array is empty: send one message or a non-empty array";
        return Err(ApiError::new(ApiErrorCode::InvalidMessage, message));
    }
    let mut checked = Vec::with_capacity(frames.len());
    let mut problems = Vec::new();
    for (i, frame) in frames.into_iter().enumerate() {
        let index = (!single).then_some(i);
        match check_frame(frame) {
            Ok(message) => checked.push(message),
            Err(found) => problems.extend(found.into_iter().map(|p| (index, p))),
        }
    }
    if problems.is_empty() { Ok((checked, single)) } else { Err(invalid(problems)) }
}

/// One publish frame: its `data` and `audience` read (the envelope delimited them as JSON;
/// reading them into values can still fail: a number out of range, a lone surrogate escape,
/// nesting too deep) and checked.
fn check_frame(frame: PublishFrame<'_>) -> Result<Checked, Vec<Problem>> {
    let data = read_value(frame.data.get(), "data");
    let audience = frame.audience.map(|a| read_value(a.get(), "audience")).transpose();
    match (data, audience) {
        (Ok(data), Ok(audience)) => {
            check_publish(&frame.type_name, frame.topic.as_deref(), data, audience.as_ref())
        }
        (data, audience) => Err([data.err(), audience.err()].into_iter().flatten().collect()),
    }
}

/// The 400 of a body with `problems` (each with its element's index in an array body): the
/// first one's field and message, and all of them in `errors`.
fn invalid(problems: Vec<(Option<usize>, Problem)>) -> ApiError {
    let errors: Vec<Value> = problems
        .iter()
        .map(|(index, (field, message))| {
            let mut problem = json!({"field": field, "message": message});
            if let Some(i) = index {
                problem["index"] = json!(i);
            }
            problem
        })
        .collect();
    let (index, (field, message)) = problems.into_iter().next().unwrap_or_default();
    let mut error = ApiError::new(ApiErrorCode::InvalidMessage, message)
        .with("field", field)
        .with("errors", errors);
    if let Some(i) = index {
        error = error.with("index", i);
    }
    error
}

/// The body as publish frames: one object, or an array of them (`true` for one object). A
/// body that is not JSON is `invalid_json`; an envelope that is not a publish frame names the
/// element and the field.
fn frames(body: &[u8]) -> ApiResult<(Vec<PublishFrame<'_>>, bool)> {
    let not_json = |err: &serde_json::Error| {
        ApiError::new(ApiErrorCode::InvalidJson, format!("the body is not valid JSON: {err}"))
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
    let mut error = ApiError::new(ApiErrorCode::InvalidMessage, inner.to_string());
    if !field.is_empty() {
        error = error.with("field", field.join("."));
    }
    if let Some(i) = index {
        error = error.with("index", i);
    }
    Err(error)
}

/// A JSON value the envelope delimited, read for checking; what is wrong with it otherwise,
/// as (field, message): a number out of range, an invalid escape, nesting too deep.
fn read_value(raw: &str, field: &str) -> Result<Value, Problem> {
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

/// Checks one message and its audience for publishing (as [`check_message`]), every problem
/// of both at once.
pub(crate) fn check_publish(
    type_name: &str,
    claimed_topic: Option<&str>,
    data: Value,
    audience: Option<&Value>,
) -> Result<Checked, Vec<Problem>> {
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
fn check_message(
    type_name: &str,
    claimed_topic: Option<&str>,
    mut data: Value,
) -> Result<ServerMessage, Vec<Problem>> {
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

/// The `Idempotency-Key` header: 1 to 200 printable ASCII characters without spaces.
pub(crate) fn idempotency_key(headers: &hyper::HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    match value.to_str() {
        Ok(key)
            if !key.is_empty() && key.len() <= 200 && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::new(
            ApiErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces (e.g. a UUID)",
        )),
    }
}

/// A digest of a request's body: what its idempotency key names.
pub(crate) fn digest(body: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(body);
    hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// `DELETE /api/state/{topic}/{key}`'s path after `/api/state/`: the topic, and the key, one
/// path segment, percent-encoded (`sp%20ace`, `a%2Fb`; a `/` left in it is part of the key).
pub(crate) fn state_path(rest: &str) -> ApiResult<(Topic, String)> {
    let Some((topic, key)) = rest.split_once('/').filter(|(_, key)| !key.is_empty()) else {
        return Err(ApiError::new(
            ApiErrorCode::InvalidPath,
            "name the topic and the key: DELETE /api/state/download_progress/<model_id> (percent-encode the key)",
        ));
    };
    let key = percent_encoding::percent_decode_str(key).decode_utf8().map_err(|_| {
        ApiError::new(ApiErrorCode::InvalidPath, "the key is not UTF-8 once percent-decoded")
    })?;
    let topic = topic
        .parse::<Topic>()
        .map_err(|err| ApiError::new(ApiErrorCode::UnknownTopic, err.to_string()))?;
    Ok((topic, key.into_owned()))
}

/// The audience a query names with `user=` and `role=` parameters (`None` without any),
/// checked as a publish's audience is.
pub(crate) fn audience_of_query(query: Option<&str>) -> ApiResult<Option<modelcast_hub::Audience>> {
    let bad = |message: String| ApiError::new(ApiErrorCode::InvalidAudience, message);
    let mut users = Vec::new();
    let mut roles = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "user" => users.push(Value::String(value.into_owned())),
            "role" => roles.push(Value::String(value.into_owned())),
            other => {
                return Err(bad(format!("unknown parameter `{other}`; use `user` and `role`")));
            }
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
            bad(found
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
                .join("; "))
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
