//! The response type of every route and the JSON response helpers: a leaf that the router and
//! every handler import.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

/// The response type of every route.
pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The error code and message of an error response, kept beside its body for logging.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: String,
    pub(crate) message: String,
}

/// `{"error": {"code": ..., "message": ...}}` with `status`.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Resp {
    let mut resp = json_response(status, &json!({"error": {"code": code, "message": message}}));
    resp.extensions_mut().insert(Refusal { code: code.to_owned(), message: message.to_owned() });
    resp
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Resp {
    let mut resp = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this route accepts {allow} only"),
    );
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    resp
}
