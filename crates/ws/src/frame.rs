//! Server frames: [`Header`] (unmasked, final, 2 to 10 bytes) and close payloads. A frame on
//! the wire is its header followed by the payload as it is, so a payload shared by many
//! connections is written from where it lies.

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A further fragment of a message.
    Continuation,
    /// The first frame of a text message.
    Text,
    /// The first frame of a binary message.
    Binary,
    /// The closing handshake.
    Close,
    /// A ping, to be answered with a pong of the same payload.
    Ping,
    /// A pong.
    Pong,
}

impl OpCode {
    pub(crate) fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub(crate) fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Whether this is a control frame (close, ping, pong): at most 125 bytes, never
    /// fragmented, allowed between the fragments of a message.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The header of a final, unmasked frame a server sends: what precedes the payload on the wire.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a frame of `opcode` whose payload is `payload_len` bytes; `compressed`
    /// sets RSV1 (permessage-deflate: the first frame of a compressed message).
    pub fn new(opcode: OpCode, compressed: bool, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | if compressed { 0x40 } else { 0 } | opcode.bits();
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Header").field(&self.as_bytes()).finish()
    }
}

/// A close frame's payload: the code, then `reason` cut at a character boundary to fit the
/// 125 bytes a control frame may carry.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(Header::new(OpCode::Text, false, 0).as_bytes(), [0x81, 0]);
        assert_eq!(Header::new(OpCode::Text, true, 125).as_bytes(), [0xC1, 125]);
        assert_eq!(Header::new(OpCode::Binary, false, 126).as_bytes(), [0x82, 126, 0, 126]);
        assert_eq!(Header::new(OpCode::Text, false, 65535).as_bytes(), [0x81, 126, 0xFF, 0xFF]);
        assert_eq!(
            Header::new(OpCode::Text, false, 65536).as_bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(Header::new(OpCode::Pong, false, 3).as_bytes(), [0x8A, 3]);
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        let payload = close_payload(1000, &"é".repeat(100));
        assert!(payload.len() <= 125);
        assert_eq!(&payload[..2], &1000u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(payload.len(), 2 + 122);
    }
}
