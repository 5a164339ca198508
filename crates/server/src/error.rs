//! [`ApiError`]: every refusal of the HTTP edge, one type with one conversion to a response.
//! Its code is a [`ApiErrorCode`] (declared in the protocol, so the OpenAPI document lists
//! every code the server can answer); the status comes from the code, never written twice. A
//! leaf: handlers return `Result<Resp, ApiError>` and read as a list of `?`.

use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use modelcast_protocol::ApiErrorCode;
use serde_json::{Map, Value, json};

use crate::response::{Refusal, Resp, json_response};

/// A refused request: its code, what was wrong (for people), and what else the answer
/// carries.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ApiErrorCode,
    message: String,
    /// Rarely needed, so boxed: the error stays small on every `Result` path.
    extra: Option<Box<Extra>>,
}

/// What an error answer carries besides its code and message.
#[derive(Debug, Default)]
struct Extra {
    /// More fields of the `error` object (`field`, `index`, `errors`, `accepted`, …).
    fields: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The edge's `Result`.
pub(crate) type ApiResult<T = Resp> = Result<T, ApiError>;

impl ApiError {
    /// A refusal with `code`, saying `message`.
    pub(crate) fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), extra: None }
    }

    /// The same refusal, saying `message` instead.
    pub(crate) fn say(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Adds `name: value` to the answer's `error` object.
    pub(crate) fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra().fields.insert(name.to_owned(), value.into());
        self
    }

    /// Adds a header to the answer.
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.extra().headers.push((name, value));
        self
    }

    /// `Retry-After: seconds`, so clients and proxies back off.
    pub(crate) fn retry_after(self, seconds: u64) -> Self {
        self.header(hyper::header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    /// `Connection: close`: the rest of the request (an unread body) ends the connection.
    pub(crate) fn closing(self) -> Self {
        self.header(hyper::header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// 401 asking for a Bearer credential.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ApiErrorCode::Unauthorized, message)
            .header(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// The answer: the code's status, `{"error": {"code", "message", …}}`, the headers.
    pub(crate) fn into_response(self) -> Resp {
        let mut error = json!({"code": self.code.as_str(), "message": self.message});
        let mut headers = Vec::new();
        if let Some(extra) = self.extra {
            error.as_object_mut().expect("an object").extend(extra.fields);
            headers = extra.headers;
        }
        let status = StatusCode::from_u16(self.code.status()).expect("codes have valid statuses");
        let mut resp = json_response(status, &json!({ "error": error }));
        for (name, value) in headers {
            resp.headers_mut().insert(name, value);
        }
        let code = self.code.as_str().to_owned();
        resp.extensions_mut().insert(Refusal { code, message: self.message });
        resp
    }
}

impl From<ApiError> for Resp {
    fn from(error: ApiError) -> Self {
        error.into_response()
    }
}
