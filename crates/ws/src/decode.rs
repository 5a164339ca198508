//! [`Decoder`]: client frames to messages, without IO. It checks everything RFC 6455 and RFC
//! 7692 require of a client's frames before it waits for a frame's payload, so a frame that
//! cannot be accepted (too large, unmasked, a reserved bit) fails the connection at once.

use bytes::{Buf, Bytes, BytesMut};

use crate::deflate::Inflater;
use crate::failure::Failure;
use crate::frame::OpCode;

/// The most frames a message may be cut into unless [`Decoder::max_fragments`] says otherwise.
/// Browsers send every message in one frame; libraries that fragment cut at several KiB.
pub const DEFAULT_MAX_FRAGMENTS: usize = 128;

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (checked UTF-8; inflated if it came compressed).
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping: answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The client's close frame; `None` when it carried no code.
    Close(Option<CloseFrame>),
}

/// The code and reason of a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code (a valid one: RFC 6455 §7.4).
    pub code: u16,
    /// The reason (UTF-8, possibly empty).
    pub reason: String,
}

/// Turns the bytes a client sends into [`Message`]s.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// The most frames one message may be cut into: bytes alone do not bound the work a
    /// message costs (a stream of empty continuation frames is endless work for no bytes).
    max_fragments: usize,
    inflate: bool,
    partial: Option<Partial>,
    wanted: usize,
    peek: Peek,
}

/// How far the text of a frame still arriving has been checked (see [`Decoder::peek_text`]).
#[derive(Debug, Default)]
struct Peek {
    /// Payload bytes checked.
    checked: usize,
    /// The start of a character whose other bytes have not arrived yet.
    carry: Vec<u8>,
}

/// A fragmented message being received.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// The message so far (inflated, for a compressed one).
    data: Vec<u8>,
    /// Payload bytes received (compressed ones, for a compressed message).
    received: usize,
    /// Frames received.
    fragments: usize,
    /// `data[..validated]` is UTF-8 (text only).
    validated: usize,
    inflater: Option<Box<Inflater>>,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes (compressed or inflated); `inflate`
    /// when permessage-deflate was negotiated (RSV1 marks a compressed message).
    pub fn new(max_message: usize, inflate: bool) -> Self {
        Self {
            max_message,
            max_fragments: DEFAULT_MAX_FRAGMENTS,
            inflate,
            partial: None,
            wanted: 0,
            peek: Peek::default(),
        }
    }

    /// Refuses a message cut into more than `max` frames (default
    /// [`DEFAULT_MAX_FRAGMENTS`]), closing with 1008 at the first frame over.
    pub fn max_fragments(mut self, max: usize) -> Self {
        self.max_fragments = max.max(1);
        self
    }

    /// How many bytes the buffer needs for the frame that [`Decoder::decode`] last waited
    /// for, when known (0 otherwise): a reader reserves that much before it reads.
    pub fn wanted(&self) -> usize {
        self.wanted
    }

    /// Takes the next message out of `buf`: `Ok(None)` until one is complete. Control frames
    /// come out as they arrive, also between the fragments of a message.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, Failure> {
        loop {
            let Some(head) = self.head(buf)? else {
                return Ok(None);
            };
            let total = head.header_len + head.len;
            if buf.len() < total {
                self.wanted = total;
                self.peek_text(buf, &head)?;
                return Ok(None);
            }
            self.wanted = 0;
            self.peek = Peek::default();
            let mask = [
                buf[head.header_len - 4],
                buf[head.header_len - 3],
                buf[head.header_len - 2],
                buf[head.header_len - 1],
            ];
            buf.advance(head.header_len);
            let mut payload = buf.split_to(head.len);
            unmask(&mut payload, mask);
            match head.opcode {
                OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
                OpCode::Close => return close(&payload).map(|c| Some(Message::Close(c))),
                OpCode::Text | OpCode::Binary if head.fin => {
                    let text = head.opcode == OpCode::Text;
                    let data = if head.rsv1 {
                        Inflater::message(&payload, self.max_message)?
                    } else {
                        payload.to_vec()
                    };
                    return complete(text, data).map(Some);
                }
                OpCode::Text | OpCode::Binary => {
                    let mut partial = Partial {
                        text: head.opcode == OpCode::Text,
                        data: Vec::new(),
                        received: 0,
                        fragments: 0,
                        validated: 0,
                        inflater: head.rsv1.then(|| Box::new(Inflater::new())),
                    };
                    partial.append(&payload, self.max_message)?;
                    self.partial = Some(partial);
                }
                OpCode::Continuation => {
                    let Some(mut partial) = self.partial.take() else {
                        unreachable!("checked by head()");
                    };
                    partial.append(&payload, self.max_message)?;
                    if head.fin {
                        if let Some(inflater) = &mut partial.inflater {
                            inflater.finish(&mut partial.data, self.max_message)?;
                        }
                        return complete(partial.text, partial.data).map(Some);
                    }
                    self.partial = Some(partial);
                }
            }
        }
    }

    /// Reads and checks the next frame's header, if it has arrived.
    fn head(&mut self, buf: &[u8]) -> Result<Option<Head>, Failure> {
        let Some(&[b0, b1]) = buf.get(..2) else {
            self.wanted = 2;
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(Failure::protocol("reserved bits RSV2/RSV3 set"));
        }
        let opcode = OpCode::from_bits(b0 & 0x0F)
            .ok_or_else(|| Failure::protocol(format!("reserved opcode {:#x}", b0 & 0x0F)))?;
        if b1 & 0x80 == 0 {
            return Err(Failure::protocol("a client frame must be masked"));
        }
        let (len, header_len) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 8),
                _ => {
                    self.wanted = 4;
                    return Ok(None);
                }
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(bytes) => (u64::from_be_bytes(bytes), 14),
                None => {
                    self.wanted = 10;
                    return Ok(None);
                }
            },
            n => (u64::from(n), 6),
        };
        if len >> 63 != 0 {
            return Err(Failure::protocol("a frame length with its most significant bit set"));
        }
        if opcode.is_control() {
            if !fin {
                return Err(Failure::protocol("a fragmented control frame"));
            }
            if len > 125 {
                return Err(Failure::protocol("a control frame longer than 125 bytes"));
            }
            if rsv1 {
                return Err(Failure::protocol("RSV1 set on a control frame"));
            }
        } else {
            match (opcode, &self.partial) {
                (OpCode::Continuation, None) => {
                    return Err(Failure::protocol(
                        "a continuation frame without a message to continue",
                    ));
                }
                (OpCode::Continuation, Some(_)) if rsv1 => {
                    return Err(Failure::protocol("RSV1 set on a continuation frame"));
                }
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(Failure::protocol(
                        "a new message began before the previous one was finished",
                    ));
                }
                _ => {}
            }
            if rsv1 && !self.inflate {
                return Err(Failure::protocol(
                    "RSV1 set but permessage-deflate was not negotiated",
                ));
            }
            let (received, fragments) =
                self.partial.as_ref().map_or((0, 0), |p| (p.received, p.fragments));
            if fragments >= self.max_fragments {
                return Err(Failure::policy(format!(
                    "a message cut into more than {} frames",
                    self.max_fragments
                )));
            }
            if len > self.max_message.saturating_sub(received) as u64 {
                return Err(Failure::too_big(format!(
                    "message larger than {} bytes",
                    self.max_message
                )));
            }
        }
        // Within the limit checked above (control frames: 125 bytes).
        let len = usize::try_from(len).map_err(|_| Failure::too_big("frame too large"))?;
        Ok(Some(Head { fin, rsv1, opcode, len, header_len }))
    }
}

impl Decoder {
    /// Checks the UTF-8 of an uncompressed text frame's payload as it arrives, so that text
    /// that cannot be UTF-8 fails the connection before the rest of a long frame (Autobahn
    /// 6.4.3–6.4.4: strict, not merely at the end). What is checked here is checked again
    /// when the frame is complete; this only fails earlier.
    fn peek_text(&mut self, buf: &[u8], head: &Head) -> Result<(), Failure> {
        let continues_text = |p: &Partial| p.text && p.inflater.is_none();
        let text = !head.rsv1
            && match head.opcode {
                OpCode::Text => true,
                OpCode::Continuation => self.partial.as_ref().is_some_and(continues_text),
                _ => false,
            };
        let available = buf.len().saturating_sub(head.header_len).min(head.len);
        if !text || available <= self.peek.checked {
            return Ok(());
        }
        let mut chunk = if self.peek.checked == 0 {
            // A continuation starts with what the previous fragment left of a character.
            self.partial.as_ref().map(|p| p.data[p.validated..].to_vec()).unwrap_or_default()
        } else {
            std::mem::take(&mut self.peek.carry)
        };
        let start = chunk.len();
        let from = head.header_len + self.peek.checked;
        chunk.extend_from_slice(&buf[from..head.header_len + available]);
        let mask = &buf[head.header_len - 4..head.header_len];
        let offset = self.peek.checked;
        for (i, byte) in chunk[start..].iter_mut().enumerate() {
            *byte ^= mask[(offset + i) % 4];
        }
        match std::str::from_utf8(&chunk) {
            Ok(_) => {}
            Err(err) if err.error_len().is_none() => {
                self.peek.carry = chunk[err.valid_up_to()..].to_vec();
            }
            Err(_) => return Err(not_utf8()),
        }
        self.peek.checked = available;
        Ok(())
    }
}

/// A frame's header, checked.
#[derive(Debug)]
struct Head {
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    len: usize,
    /// Including the 4-byte mask.
    header_len: usize,
}

impl Partial {
    fn append(&mut self, payload: &[u8], max_message: usize) -> Result<(), Failure> {
        self.received += payload.len();
        self.fragments += 1;
        match &mut self.inflater {
            Some(inflater) => inflater.push(payload, &mut self.data, max_message)?,
            None => self.data.extend_from_slice(payload),
        }
        if self.text {
            // Fail as soon as the text cannot be UTF-8, not at the end of the message; a
            // character cut between two fragments is completed by the next.
            match std::str::from_utf8(&self.data[self.validated..]) {
                Ok(_) => self.validated = self.data.len(),
                Err(err) if err.error_len().is_none() => self.validated += err.valid_up_to(),
                Err(_) => return Err(not_utf8()),
            }
        }
        Ok(())
    }
}

fn not_utf8() -> Failure {
    Failure::invalid("a text message that is not UTF-8")
}

fn complete(text: bool, data: Vec<u8>) -> Result<Message, Failure> {
    if text {
        String::from_utf8(data).map(Message::Text).map_err(|_| not_utf8())
    } else {
        Ok(Message::Binary(Bytes::from(data)))
    }
}

/// A close frame's payload: nothing, or a valid code and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Option<CloseFrame>, Failure> {
    match payload {
        [] => Ok(None),
        [_] => Err(Failure::protocol("a close frame with a one-byte payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !valid_close_code(code) {
                return Err(Failure::protocol(format!("invalid close code {code}")));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| Failure::invalid("a close reason that is not UTF-8"))?;
            Ok(Some(CloseFrame { code, reason: reason.to_owned() }))
        }
    }
}

/// Codes a peer may send (RFC 6455 §7.4.1–7.4.2: the defined ones meant to be sent, and
/// 3000–4999 for libraries and applications).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Applies (or removes) a client's mask, eight bytes at a time.
fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, hence of 4.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: FIN, RSV1 and opcode in `b0`, masked `payload`.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        let mut masked = payload.to_vec();
        unmask(&mut masked, MASK);
        out.extend_from_slice(&masked);
        out
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Message>, Failure> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(message) = decoder.decode(&mut buf)? {
            out.push(message);
        }
        Ok(out)
    }

    #[test]
    fn a_text_frame_arriving_byte_by_byte_decodes_once_complete() {
        let bytes = frame(0x81, "héllo".as_bytes());
        let mut decoder = Decoder::new(1024, false);
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let decoded = decoder.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(decoded, None);
                assert!(decoder.wanted() > buf.len());
            } else {
                assert_eq!(decoded, Some(Message::Text("héllo".into())));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn fragments_join_with_control_frames_between_them() {
        let mut bytes = frame(0x01, b"frag");
        bytes.extend(frame(0x89, b"ping"));
        bytes.extend(frame(0x00, b"men"));
        bytes.extend(frame(0x80, b"ted"));
        let mut decoder = Decoder::new(1024, false);
        assert_eq!(
            decode_all(&mut decoder, &bytes).unwrap(),
            [Message::Ping(Bytes::from_static(b"ping")), Message::Text("fragmented".into())]
        );
    }

    #[test]
    fn a_character_split_between_fragments_is_fine_and_invalid_text_fails_early() {
        let euro = "€".as_bytes();
        let mut bytes = frame(0x01, &euro[..1]);
        bytes.extend(frame(0x80, &euro[1..]));
        assert_eq!(
            decode_all(&mut Decoder::new(1024, false), &bytes).unwrap(),
            [Message::Text("€".into())]
        );
        // An invalid byte in the first fragment fails before the message ends.
        let err = decode_all(&mut Decoder::new(1024, false), &frame(0x01, b"ok\xff")).unwrap_err();
        assert_eq!(err.code, code::INVALID_PAYLOAD);
        // A truncated character at the end of the message fails too.
        let err = decode_all(&mut Decoder::new(1024, false), &frame(0x81, &euro[..2])).unwrap_err();
        assert_eq!(err.code, code::INVALID_PAYLOAD);
    }

    #[test]
    fn invalid_text_fails_before_the_rest_of_its_frame_arrives() {
        let mut payload = "κόσμε".as_bytes().to_vec();
        payload.extend_from_slice(b"\xce\xbd\xed\xa0\x80edited");
        payload.extend(std::iter::repeat_n(b'x', 200));
        let bytes = frame(0x81, &payload);
        let mut decoder = Decoder::new(1024, false);
        let mut buf = BytesMut::new();
        // Chops of 5 bytes: the frame's first 40 bytes hold the invalid sequence.
        let mut failed_at = None;
        for (i, chop) in bytes.chunks(5).enumerate() {
            buf.extend_from_slice(chop);
            if let Err(err) = decoder.decode(&mut buf) {
                assert_eq!(err.code, code::INVALID_PAYLOAD);
                failed_at = Some(i);
                break;
            }
        }
        assert!(failed_at.is_some_and(|i| i < 8), "failed at chop {failed_at:?}");
        // Valid text in chops, with a character cut between chops, decodes whole.
        let text = "€uro ".repeat(30);
        let bytes = frame(0x81, text.as_bytes());
        let mut decoder = Decoder::new(1024, false);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chop in bytes.chunks(3) {
            buf.extend_from_slice(chop);
            out.extend(decoder.decode(&mut buf).unwrap());
        }
        assert_eq!(out, [Message::Text(text)]);
    }

    #[test]
    fn protocol_violations_carry_1002() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("RSV2", frame(0xA1, b"x")),
            ("reserved opcode", frame(0x83, b"x")),
            ("unmasked", vec![0x81, 0x01, b'x']),
            ("fragmented ping", frame(0x09, b"x")),
            ("long ping", frame(0x89, &[0; 126])),
            ("continuation first", frame(0x80, b"x")),
            ("RSV1 without deflate", frame(0xC1, b"x")),
            ("one-byte close", frame(0x88, &[3])),
            ("close code 1005", frame(0x88, &1005u16.to_be_bytes())),
            ("new message inside another", [frame(0x01, b"a"), frame(0x81, b"b")].concat()),
        ];
        for (name, bytes) in cases {
            let err = decode_all(&mut Decoder::new(1024, false), &bytes).unwrap_err();
            assert_eq!(err.code, code::PROTOCOL_ERROR, "{name}: {err}");
        }
    }

    #[test]
    fn a_frame_over_the_limit_fails_before_its_payload_arrives() {
        let bytes = frame(0x82, &[0; 2000]);
        let mut decoder = Decoder::new(1000, false);
        // The header alone (2 + 2 + 4 bytes) is enough to refuse it.
        let err = decoder.decode(&mut BytesMut::from(&bytes[..8])).unwrap_err();
        assert_eq!(err.code, code::MESSAGE_TOO_BIG);
        // Fragments count together.
        let mut bytes = frame(0x02, &[0; 600]);
        bytes.extend(frame(0x80, &[0; 600]));
        let err = decode_all(&mut Decoder::new(1000, false), &bytes).unwrap_err();
        assert_eq!(err.code, code::MESSAGE_TOO_BIG);
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let mut payload = 4001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_eq!(
            decode_all(&mut Decoder::new(1024, false), &frame(0x88, &payload)).unwrap(),
            [Message::Close(Some(CloseFrame { code: 4001, reason: "bye".into() }))]
        );
        assert_eq!(
            decode_all(&mut Decoder::new(1024, false), &frame(0x88, b"")).unwrap(),
            [Message::Close(None)]
        );
        let mut bad = 1000u16.to_be_bytes().to_vec();
        bad.push(0xff);
        let err = decode_all(&mut Decoder::new(1024, false), &frame(0x88, &bad)).unwrap_err();
        assert_eq!(err.code, code::INVALID_PAYLOAD);
    }

    #[test]
    fn compressed_messages_inflate_whole_or_fragmented() {
        let text = r#"{"action":"subscribe","topics":["models","downloads","alerts"]}"#.repeat(4);
        let compressed = crate::deflate(text.as_bytes()).unwrap();
        let mut decoder = Decoder::new(4096, true);
        assert_eq!(
            decode_all(&mut decoder, &frame(0xC1, &compressed)).unwrap(),
            [Message::Text(text.clone())]
        );
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut bytes = frame(0x41, a);
        bytes.extend(frame(0x89, b""));
        bytes.extend(frame(0x80, b));
        assert_eq!(
            decode_all(&mut decoder, &bytes).unwrap(),
            [Message::Ping(Bytes::new()), Message::Text(text)]
        );
        // RSV1 belongs on the first frame only.
        let mut bytes = frame(0x41, a);
        bytes.extend(frame(0xC0, b));
        let err = decode_all(&mut Decoder::new(4096, true), &bytes).unwrap_err();
        assert_eq!(err.code, code::PROTOCOL_ERROR);
    }

    #[test]
    fn a_small_compressed_frame_that_inflates_past_the_limit_is_too_big() {
        let bomb = crate::deflate(&vec![b' '; 1 << 20]).unwrap();
        let err = decode_all(&mut Decoder::new(64 * 1024, true), &frame(0xC1, &bomb)).unwrap_err();
        assert_eq!(err.code, code::MESSAGE_TOO_BIG);
    }

    #[test]
    fn unmasking_matches_the_bytewise_definition() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, MASK);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect();
            assert_eq!(fast, slow);
        }
    }

    /// One message of a generated client stream, and how it is sent.
    #[derive(Debug, Clone)]
    enum Sent {
        /// Text or binary, split into `fragments` frames, compressed or not.
        Data {
            text: bool,
            payload: Vec<u8>,
            fragments: usize,
            compressed: bool,
        },
        Ping(Vec<u8>),
    }

    impl Sent {
        /// The client frames for it.
        fn frames(&self) -> Vec<u8> {
            match self {
                Sent::Ping(payload) => frame(0x89, payload),
                Sent::Data { text, payload, fragments, compressed } => {
                    let (body, rsv1) = match compressed.then(|| crate::deflate(payload)).flatten() {
                        Some(deflated) => (deflated, 0x40),
                        None => (payload.clone(), 0),
                    };
                    let opcode = if *text { 0x1 } else { 0x2 };
                    let pieces = (*fragments).clamp(1, body.len().max(1));
                    let size = body.len().div_ceil(pieces).max(1);
                    let chunks: Vec<&[u8]> =
                        if body.is_empty() { vec![&[]] } else { body.chunks(size).collect() };
                    let mut out = Vec::new();
                    for (i, chunk) in chunks.iter().enumerate() {
                        let first = if i == 0 { opcode | rsv1 } else { 0 };
                        let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
                        out.extend(frame(fin | first, chunk));
                    }
                    out
                }
            }
        }

        fn expected(&self) -> Message {
            match self {
                Sent::Ping(payload) => Message::Ping(Bytes::copy_from_slice(payload)),
                Sent::Data { text: true, payload, .. } => {
                    Message::Text(String::from_utf8(payload.clone()).unwrap())
                }
                Sent::Data { payload, .. } => Message::Binary(Bytes::copy_from_slice(payload)),
            }
        }
    }

    fn sent() -> impl proptest::strategy::Strategy<Value = Sent> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<String>(), 1..5usize, any::<bool>()).prop_map(|(t, fragments, compressed)| {
                Sent::Data { text: true, payload: t.into_bytes(), fragments, compressed }
            }),
            // Repetitive text: what deflate makes smaller, so the compressed path is taken.
            ("[a-c]{0,8}", 0..300usize, 1..5usize).prop_map(|(unit, times, fragments)| {
                Sent::Data {
                    text: true,
                    payload: unit.repeat(times).into_bytes(),
                    fragments,
                    compressed: true,
                }
            }),
            (proptest::collection::vec(any::<u8>(), 0..300), 1..5usize, any::<bool>()).prop_map(
                |(payload, fragments, compressed)| Sent::Data {
                    text: false,
                    payload,
                    fragments,
                    compressed
                }
            ),
            proptest::collection::vec(any::<u8>(), 0..125).prop_map(Sent::Ping),
        ]
    }

    /// Feeds `bytes` to a decoder in pieces of the given sizes (cycled), decoding after each.
    fn decode_in_pieces(
        decoder: &mut Decoder,
        bytes: &[u8],
        pieces: &[usize],
    ) -> Result<Vec<Message>, Failure> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for size in pieces.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + size.max(&1)).min(bytes.len());
            buf.extend_from_slice(&bytes[at..end]);
            at = end;
            while let Some(message) = decoder.decode(&mut buf)? {
                out.push(message);
            }
        }
        Ok(out)
    }

    proptest::proptest! {
        /// Any valid client stream — text with any characters (fragments may split them),
        /// binary, pings between fragments' messages, compressed or not — decodes to the same
        /// messages however the bytes are cut up as they arrive.
        #[test]
        fn a_valid_stream_decodes_the_same_in_any_pieces(
            messages in proptest::collection::vec(sent(), 0..12),
            pieces in proptest::collection::vec(1..64usize, 1..8),
        ) {
            let bytes: Vec<u8> = messages.iter().flat_map(Sent::frames).collect();
            let expected: Vec<Message> = messages.iter().map(Sent::expected).collect();
            let whole = decode_all(&mut Decoder::new(1 << 20, true), &bytes).unwrap();
            proptest::prop_assert_eq!(&whole, &expected);
            let cut = decode_in_pieces(&mut Decoder::new(1 << 20, true), &bytes, &pieces).unwrap();
            proptest::prop_assert_eq!(&cut, &expected);
        }

        /// Arbitrary bytes, in arbitrary pieces, with or without permessage-deflate: the
        /// decoder answers each piece with messages, "more", or a failure, and never panics.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            pieces in proptest::collection::vec(1..300usize, 1..8),
            inflate in proptest::prelude::any::<bool>(),
        ) {
            let _ = decode_in_pieces(&mut Decoder::new(4096, inflate), &bytes, &pieces);
        }

        /// Arbitrary bytes behind a valid masked header (so the payload is reached): the same.
        #[test]
        fn arbitrary_payloads_behind_valid_headers_never_panic(
            b0 in proptest::prelude::any::<u8>(),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            inflate in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = frame(b0, &payload);
            bytes.extend(frame(0x80 | (b0 & 0x7f), &payload));
            let _ = decode_all(&mut Decoder::new(4096, inflate), &bytes);
        }
    }

    /// Probe finding: 62 M empty continuation frames in 9 s cost 3 s of server CPU and were
    /// never refused (no bytes, so no size limit). A message may have so many frames only.
    #[test]
    fn a_message_cut_into_too_many_frames_fails_with_1008() {
        let mut decoder = Decoder::new(1024, false).max_fragments(4);
        let mut bytes = frame(0x01, b"a");
        for _ in 0..3 {
            bytes.extend(frame(0x00, b""));
        }
        bytes.extend(frame(0x80, b"z"));
        let err = decode_all(&mut decoder, &bytes).unwrap_err();
        assert_eq!(err.code, code::POLICY_VIOLATION, "{err}");
        assert!(err.reason.contains("more than 4 frames"), "{err}");
        // Within the limit (pings between fragments do not count), the message arrives.
        let mut decoder = Decoder::new(1024, false).max_fragments(4);
        let mut bytes = frame(0x01, b"a");
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x00, b"b"));
        bytes.extend(frame(0x00, b""));
        bytes.extend(frame(0x80, b"c"));
        let out = decode_all(&mut decoder, &bytes).unwrap();
        assert_eq!(out, [Message::Ping(Bytes::from_static(b"p")), Message::Text("abc".into())]);
    }
}
