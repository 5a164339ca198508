//! [`Frame`]: one serialized server frame, shared by every subscriber that receives it, and the
//! only place the hub turns messages into bytes.

use bytes::Bytes;
use modelcast_protocol::ServerFrame;

use crate::stats::Stats;

/// One serialized JSON frame (UTF-8 text). Cloning shares the bytes: a message published to
/// 10,000 subscribers is serialized once and its bytes are reference-counted, never copied.
///
/// The bytes are [`bytes::Bytes`], the buffer tokio-tungstenite's text messages are made of,
/// so the server turns a frame into a WebSocket message without copying.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Wraps JSON text.
    fn from_json(json: String) -> Self {
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

    /// This frame with `"late":true` added: delivered below a position the subscriber already
    /// holds (see the crate docs' ordering contract). One small copy, made only for the
    /// frames that need it.
    pub(crate) fn late(&self) -> Frame {
        splice(self.as_str(), LATE)
    }

    /// A topic frame's `seq`, which the hub writes first (after `"late":true` on a late frame);
    /// `None` for a control frame.
    pub fn seq(&self) -> Option<u64> {
        let bytes = self.0.get(1..)?;
        let bytes = bytes.strip_prefix(LATE.as_bytes()).unwrap_or(bytes);
        let digits = bytes.strip_prefix(b"\"seq\":")?;
        let end = digits.iter().position(|b| !b.is_ascii_digit())?;
        std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
    }

    /// Whether the frame is marked `"late":true` (the hub marks late frames by putting that
    /// field first).
    pub fn is_late(&self) -> bool {
        self.0.get(1..1 + LATE.len()) == Some(LATE.as_bytes())
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.as_str()).finish()
    }
}

/// What [`Frame::late`] inserts.
const LATE: &str = "\"late\":true,";

/// Serializes a whole frame (control frames, notices).
pub(crate) fn encode(frame: &ServerFrame, stats: &Stats) -> Frame {
    Frame::from_json(encode_text(frame, stats))
}

/// Serializes a frame to text, to be completed by [`with_seq`].
pub(crate) fn encode_text(frame: &ServerFrame, stats: &Stats) -> String {
    stats.serialized();
    serde_json::to_string(frame).expect("protocol types always serialize")
}

/// `{"topic":...}` + seq → `{"seq":N,"topic":...}`: one small copy instead of a second
/// serialization once the topic's lock has given the message its `seq`.
pub(crate) fn with_seq(unsequenced: &str, seq: u64) -> Frame {
    splice(unsequenced, &format!("\"seq\":{seq},"))
}

/// Inserts `fields` (ending in a comma) right after the opening brace of a JSON object.
fn splice(object: &str, fields: &str) -> Frame {
    debug_assert!(object.starts_with('{') && fields.ends_with(','));
    let mut out = String::with_capacity(object.len() + fields.len());
    out.push('{');
    out.push_str(fields);
    out.push_str(&object[1..]);
    Frame::from_json(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_is_read_back_from_live_and_late_frames() {
        let live = with_seq(r#"{"topic":"alerts","type":"alert","data":{}}"#, 42);
        assert_eq!(live.seq(), Some(42));
        assert_eq!(live.late().seq(), Some(42));
        assert!(live.late().is_late() && !live.is_late());
        assert_eq!(Frame::from_json(r#"{"type":"pong","data":{}}"#.into()).seq(), None);
    }
}
