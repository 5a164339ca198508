//! [`Frame`]: one serialized server frame, shared by every subscriber that receives it (with
//! its compressed form, once made), and the only place the hub turns messages into bytes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use modelcast_protocol::ServerFrame;

use crate::reach::Reach;
use crate::stats::Stats;

/// One serialized JSON frame (UTF-8 text). Cloning shares it: a message published to 10,000
/// subscribers is serialized once and reference-counted, never copied.
///
/// A frame also holds its compressed form once a writer has asked for it
/// ([`Frame::compressed_with`]): compressed at most once, however many connections send it.
#[derive(Clone)]
pub struct Frame(Arc<Shared>);

struct Shared {
    text: Box<str>,
    /// The compressed form (`None` inside: not worth compressing), made on first demand.
    compressed: OnceLock<Option<Box<[u8]>>>,
    /// Who the message is for (`None`: everyone), shared with the frame rather than copied
    /// into every delivery: what waits in a queue can be checked again when a connection's
    /// viewer changes, at no cost per delivery.
    reach: Option<Arc<Reach>>,
}

impl Frame {
    /// Wraps JSON text.
    fn from_json(json: String) -> Self {
        Self::for_reach(json, None)
    }

    /// Wraps JSON text of a message for `reach`.
    fn for_reach(json: String, reach: Option<Arc<Reach>>) -> Self {
        Self(Arc::new(Shared { text: json.into_boxed_str(), compressed: OnceLock::new(), reach }))
    }

    /// Who the message is for (`None`: everyone, and every control frame).
    pub(crate) fn reach(&self) -> Option<&Reach> {
        self.0.reach.as_deref()
    }

    /// The frame's bytes (valid UTF-8 JSON).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.text.as_bytes()
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The frame as a [`Bytes`] sharing this frame's memory (for an HTTP body), without a copy.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.text.len()
    }

    /// Whether the frame is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.0.text.is_empty()
    }

    /// The frame's compressed form: made by `compress` the first time any clone asks (a
    /// concurrent caller waits for that one), then shared by every clone for as long as the
    /// frame lives. `None` when `compress` found the frame not worth compressing. The hub
    /// does not know the format; the writer that sends the frame does, and every writer must
    /// pass the same `compress`.
    ///
    /// The compressed form is kept only when smaller than the frame, so a frame held in
    /// history or state takes at most twice its length once compressed.
    pub fn compressed_with(
        &self,
        compress: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Option<&[u8]> {
        self.0
            .compressed
            .get_or_init(|| compress(self.as_bytes()).map(Vec::into_boxed_slice))
            .as_deref()
    }

    /// This frame with `"late":true` added: delivered below a position the subscriber already
    /// holds (see the crate docs' ordering contract). One small copy, made only for the
    /// frames that need it.
    pub(crate) fn late(&self) -> Frame {
        splice(self.as_str(), LATE, self.0.reach.clone())
    }

    /// This frame without its `"late":true` mark (itself when it has none): a released
    /// `max_hz` update whose newer frames were taken back before they went out is in order
    /// after all.
    pub(crate) fn on_time(&self) -> Frame {
        match self.as_str().strip_prefix('{').and_then(|rest| rest.strip_prefix(LATE)) {
            Some(rest) => Frame::for_reach(format!("{{{rest}"), self.0.reach.clone()),
            None => self.clone(),
        }
    }

    /// A topic frame's `seq`, which the hub writes first (after `"late":true` on a late frame);
    /// `None` for a control frame.
    pub fn seq(&self) -> Option<u64> {
        let bytes = self.as_bytes().get(1..)?;
        let bytes = bytes.strip_prefix(LATE.as_bytes()).unwrap_or(bytes);
        let digits = bytes.strip_prefix(b"\"seq\":")?;
        let end = digits.iter().position(|b| !b.is_ascii_digit())?;
        std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
    }

    /// Whether the frame is marked `"late":true` (the hub marks late frames by putting that
    /// field first).
    pub fn is_late(&self) -> bool {
        self.as_bytes().get(1..1 + LATE.len()) == Some(LATE.as_bytes())
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for Frame {}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
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
/// serialization once the topic's lock has given the message its `seq`. The frame of a
/// message for `reach`.
pub(crate) fn with_seq(unsequenced: &str, seq: u64, reach: Option<Arc<Reach>>) -> Frame {
    splice(unsequenced, &format!("\"seq\":{seq},"), reach)
}

/// Inserts `fields` (ending in a comma) right after the opening brace of a JSON object.
fn splice(object: &str, fields: &str, reach: Option<Arc<Reach>>) -> Frame {
    debug_assert!(object.starts_with('{') && fields.ends_with(','));
    let mut out = String::with_capacity(object.len() + fields.len());
    out.push('{');
    out.push_str(fields);
    out.push_str(&object[1..]);
    Frame::for_reach(out, reach)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_is_read_back_from_live_and_late_frames() {
        let live = with_seq(r#"{"topic":"alerts","type":"alert","data":{}}"#, 42, None);
        assert_eq!(live.seq(), Some(42));
        assert_eq!(live.late().seq(), Some(42));
        assert!(live.late().is_late() && !live.is_late());
        assert_eq!(Frame::from_json(r#"{"type":"pong","data":{}}"#.into()).seq(), None);
    }

    #[test]
    fn a_frame_is_compressed_once_for_all_its_clones() {
        let frame = with_seq(r#"{"topic":"alerts","type":"alert","data":{}}"#, 1, None);
        let clone = frame.clone();
        let calls = std::cell::Cell::new(0);
        let compress = |bytes: &[u8]| {
            calls.set(calls.get() + 1);
            Some(bytes[..4].to_vec())
        };
        assert_eq!(frame.compressed_with(compress), Some(&b"{\"se"[..]));
        assert_eq!(clone.compressed_with(compress), Some(&b"{\"se"[..]));
        assert_eq!(calls.get(), 1);
        // Not worth it is remembered too.
        let control = Frame::from_json(r#"{"type":"pong","data":{}}"#.into());
        assert_eq!(control.compressed_with(|_| None), None);
        assert_eq!(control.compressed_with(|_| unreachable!()), None);
        assert_eq!(&control.clone().into_bytes()[..], control.as_bytes());
    }
}
