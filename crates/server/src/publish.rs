//! `POST /api/publish`: exactly the frames clients receive, validated by the typed protocol,
//! published through the policy.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use modelcast_notifiers::Outcome;
use modelcast_protocol::ServerMessage;
use serde_json::{Value, json};

use crate::app::App;
use crate::http::{Resp, error_response, json_response};

/// The largest publish body, whatever the frame size (a batch of frames is allowed).
const MIN_BODY_LIMIT: usize = 1 << 20;

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

pub(crate) async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Resp {
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
    let limit = app.config.max_frame_size.max(MIN_BODY_LIMIT);
    let body: Bytes = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!("the body is larger than {limit} bytes; publish in smaller arrays"),
            );
        }
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("reading the body failed: {err}"),
            );
        }
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                &format!("the body is not valid JSON: {err}"),
            );
        }
    };
    let (items, single) = match value {
        Value::Array(items) if items.is_empty() => {
            return invalid(
                None,
                None,
                "the array is empty: send one message or a non-empty array".into(),
            );
        }
        Value::Array(items) => (items, false),
        other => (vec![other], true),
    };
    // Validate everything first: a bad element publishes nothing.
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let index = (!single).then_some(i);
        let claimed_topic = item.get("topic").cloned();
        // Re-read as `{"type":…,"data":…}` text so serde meets the tag before `data` and the
        // error path names the field (a parsed map would yield `data` first, unlocated).
        let text = match (item.get("type"), item.get("data")) {
            (Some(t), Some(d)) => format!("{{\"type\":{t},\"data\":{d}}}"),
            _ => item.to_string(),
        };
        let mut de = serde_json::Deserializer::from_str(&text);
        let message: ServerMessage = match serde_path_to_error::deserialize(&mut de) {
            Ok(m) => m,
            Err(err) => {
                let path = err.path().to_string();
                let field = (path != ".").then_some(path);
                return invalid(index, field, err.inner().to_string());
            }
        };
        let Some(topic) = message.topic() else {
            return invalid(
                index,
                Some("type".into()),
                format!(
                    "`{}` is a control message; only topic messages can be published",
                    message.type_name()
                ),
            );
        };
        if let Some(claimed) = claimed_topic
            && claimed != json!(topic.as_str())
        {
            return invalid(
                index,
                Some("topic".into()),
                format!(
                    "`{}` messages belong to topic `{topic}`, not {claimed}",
                    message.type_name()
                ),
            );
        }
        messages.push(message);
    }
    let accepted: Vec<Value> = messages
        .into_iter()
        .map(|message| {
            let type_name = message.type_name();
            let outcome = app.policy.publish(message);
            match outcome {
                Some(Outcome::Sent { topic, seq }) => {
                    json!({"type": type_name, "topic": topic, "seq": seq, "status": "sent"})
                }
                Some(Outcome::Held { topic }) => {
                    json!({"type": type_name, "topic": topic, "status": "held"})
                }
                Some(Outcome::Filtered { topic }) => {
                    json!({"type": type_name, "topic": topic, "status": "filtered"})
                }
                _ => json!({"type": type_name, "status": "rejected"}),
            }
        })
        .collect();
    json_response(StatusCode::ACCEPTED, &json!({"accepted": accepted}))
}
