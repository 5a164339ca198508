//! The response type of every route and the JSON response helpers: a leaf that the router and
//! every handler import.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

/// The response type of every route.
pub(crate) type Resp = Response<Body>;

/// A response body of shared buffers, written as they are: an answer made of frames the hub
/// already holds (`GET /api/state`) is sent without copying them into one buffer; or a stream
/// of buffers sent as they come (`GET /sse`), ending when its sender is dropped.
#[derive(Debug, Default)]
pub(crate) struct Body {
    chunks: VecDeque<Bytes>,
    len: u64,
    stream: Option<tokio::sync::mpsc::Receiver<Bytes>>,
}

impl Body {
    /// A body of these buffers, in order.
    pub(crate) fn chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Self { chunks, len, stream: None }
    }

    /// A body of what `stream` sends, as it sends it (its length unknown: chunked). The
    /// channel's bound is the backpressure: a reader that does not read stops the sender.
    pub(crate) fn stream(stream: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self { chunks: VecDeque::new(), len: 0, stream: Some(stream) }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::chunks([bytes])
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let body = self.get_mut();
        if let Some(chunk) = body.chunks.pop_front() {
            body.len -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &mut body.stream {
            Some(stream) => stream.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.stream.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.stream {
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(self.len),
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(Body::from(Bytes::from(body.to_string())));
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
