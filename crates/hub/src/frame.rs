//! [`Frame`]: one serialized server frame, shared by every subscriber that receives it.

use bytes::Bytes;

/// One serialized JSON frame (UTF-8 text). Cloning shares the bytes: a message published to
/// 10,000 subscribers is serialized once and its bytes are reference-counted, never copied.
///
/// The bytes are [`bytes::Bytes`], the buffer tokio-tungstenite's text messages are made of,
/// so the server turns a frame into a WebSocket message without copying.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Wraps JSON text.
    pub(crate) fn from_json(json: String) -> Self {
        Self(Bytes::from(json))
    }

    /// The frame's bytes (valid UTF-8 JSON).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        // Frames are only made from `String`s, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The shared buffer, for handing to a writer without a copy.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.as_str()).finish()
    }
}
