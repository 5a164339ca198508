//! permessage-deflate's data (RFC 7692 §7.2): compressing one message with no context
//! takeover, so that its bytes are the same for every connection and are made once, and
//! inflating a client's message with a limit on what it may grow to.
//!
//! Neither side keeps a compressor per connection: the one compressor and the one inflater for
//! single-frame messages are per thread, reset per message; only a fragmented compressed
//! message holds an inflater of its own, while it is being received.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::failure::Failure;

/// The empty stored block that ends a sync flush; a compressed message goes without it
/// (§7.2.1) and the receiver adds it back (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Compression level: 1, the fastest. On modelcast's frames (200–350 bytes of JSON) higher
/// levels give the same size within a byte or two.
const LEVEL: u32 = 1;

thread_local! {
    static COMPRESSOR: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static INFLATER: RefCell<Option<Inflater>> = const { RefCell::new(None) };
}

/// `payload` compressed for a permessage-deflate frame with no context takeover (raw DEFLATE,
/// a sync flush, the `00 00 ff ff` tail removed), or `None` when that would not be smaller.
///
/// The result depends on the payload only, so one compression serves every connection that
/// negotiated permessage-deflate (within its window: see [`crate::Deflate::fits`]).
pub fn deflate(payload: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = slot.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        compressor.reset();
        // Room for a result one byte smaller than the payload, plus the tail: an output that
        // fills it is not worth sending.
        let capacity = payload.len() + TAIL.len() - 1;
        let mut out = Vec::with_capacity(capacity);
        compressor.compress_vec(payload, &mut out, FlushCompress::Sync).ok()?;
        let done = usize::try_from(compressor.total_in()).ok()? == payload.len();
        if !done || out.len() >= capacity || !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        Some(out)
    })
}

/// Inflates one compressed message, frame by frame, never holding more than `limit` bytes of
/// output.
#[derive(Debug)]
pub(crate) struct Inflater {
    state: Decompress,
    scratch: Box<[u8]>,
    ended: bool,
}

impl Inflater {
    pub(crate) fn new() -> Self {
        Self { state: Decompress::new(false), scratch: vec![0; 16 * 1024].into(), ended: false }
    }

    /// Inflates a whole single-frame message with this thread's inflater.
    pub(crate) fn message(input: &[u8], limit: usize) -> Result<Vec<u8>, Failure> {
        INFLATER.with_borrow_mut(|slot| {
            let inflater = slot.get_or_insert_with(Inflater::new);
            inflater.state.reset(false);
            inflater.ended = false;
            let mut out = Vec::with_capacity(input.len().saturating_mul(3).min(limit));
            inflater.push(input, &mut out, limit)?;
            inflater.finish(&mut out, limit)?;
            Ok(out)
        })
    }

    /// Inflates `input` (one frame's payload) onto `out`.
    pub(crate) fn push(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Failure> {
        self.run(input, out, limit, FlushDecompress::None)
    }

    /// Ends the message: inflates the tail the sender removed.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), Failure> {
        self.run(&TAIL, out, limit, FlushDecompress::Sync)
    }

    fn run(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        flush: FlushDecompress,
    ) -> Result<(), Failure> {
        // A message may end with a final block (BFINAL): what follows it is ignored.
        while !self.ended {
            let (before_in, before_out) = (self.state.total_in(), self.state.total_out());
            let status = self
                .state
                .decompress(input, &mut self.scratch, flush)
                .map_err(|err| Failure::invalid(format!("invalid compressed data: {err}")))?;
            let consumed = usize::try_from(self.state.total_in() - before_in).unwrap_or(0);
            let produced = usize::try_from(self.state.total_out() - before_out).unwrap_or(0);
            input = &input[consumed.min(input.len())..];
            if out.len() + produced > limit {
                return Err(Failure::too_big(format!(
                    "message larger than {limit} bytes once inflated"
                )));
            }
            out.extend_from_slice(&self.scratch[..produced]);
            match status {
                Status::StreamEnd => self.ended = true,
                Status::BufError => break,
                Status::Ok if consumed == 0 && produced == 0 => break,
                Status::Ok if input.is_empty() && produced < self.scratch.len() => break,
                Status::Ok => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate(compressed: &[u8]) -> Vec<u8> {
        Inflater::message(compressed, 1 << 20).unwrap()
    }

    #[test]
    fn a_message_round_trips_and_drops_the_tail() {
        let json = br#"{"seq":1,"topic":"models","type":"model_status_update","data":{"model_id":"llama-3-8b","status":"available","status":"available"}}"#;
        let compressed = deflate(json).expect("JSON compresses");
        assert!(compressed.len() < json.len());
        assert!(!compressed.ends_with(&TAIL));
        assert_eq!(inflate(&compressed), json);
        // Twice in a row on one thread: the compressor is reset between messages.
        assert_eq!(deflate(json).unwrap(), compressed);
    }

    #[test]
    fn incompressible_or_empty_payloads_are_not_compressed() {
        assert_eq!(deflate(b""), None);
        assert_eq!(deflate(b"x"), None);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert_eq!(deflate(&noise), None);
    }

    #[test]
    fn inflation_stops_at_the_limit() {
        let bomb = deflate(&vec![b'a'; 1 << 20]).unwrap();
        assert!(bomb.len() < 1 << 14, "{} bytes", bomb.len());
        let err = Inflater::message(&bomb, 64 * 1024).unwrap_err();
        assert_eq!(err.code, crate::code::MESSAGE_TOO_BIG);
        assert_eq!(inflate(&bomb).len(), 1 << 20);
    }

    #[test]
    fn garbage_is_invalid_payload() {
        let err = Inflater::message(&[0xFF, 0xFF, 0xFF, 0xFF], 1024).unwrap_err();
        assert_eq!(err.code, crate::code::INVALID_PAYLOAD);
    }

    #[test]
    fn a_message_inflated_in_pieces_equals_the_whole() {
        let text: Vec<u8> = (0..50_000u32).flat_map(|i| format!("{i},").into_bytes()).collect();
        let compressed = deflate(&text).unwrap();
        let mut inflater = Inflater::new();
        let mut out = Vec::new();
        for piece in compressed.chunks(7) {
            inflater.push(piece, &mut out, usize::MAX).unwrap();
        }
        inflater.finish(&mut out, usize::MAX).unwrap();
        assert_eq!(out, text);
    }
}
