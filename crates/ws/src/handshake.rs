//! The handshake's WebSocket parts: the accept key (RFC 6455 §4.2.2) and the permessage-deflate
//! negotiation (RFC 7692 §5, §7.1). The HTTP around them is the caller's.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// permessage-deflate as agreed with one client: this server compresses without context
/// takeover and asks the client to do the same (§7.1.1.1 lets a server add
/// `client_no_context_takeover` to its answer), so neither side keeps a compressor between
/// messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The window the client offered to inflate with (`server_max_window_bits`; 15 if it set
    /// none), and whether it asked for the parameter (it is then echoed).
    window_bits: u8,
    window_asked: bool,
}

impl Deflate {
    /// Whether a compressed message of `len` bytes (uncompressed) suits this client's window.
    /// Without context takeover a message's back-references reach at most to its own start,
    /// so a message no longer than the window is valid for it whatever window compressed it;
    /// a longer one goes uncompressed to a client that asked for a smaller window.
    pub fn fits(&self, len: usize) -> bool {
        self.window_bits >= 15 || len <= 1 << self.window_bits
    }

    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub fn response(&self) -> String {
        let mut response = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.window_asked {
            response.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        response
    }
}

/// The first permessage-deflate offer among the `Sec-WebSocket-Extensions` header values
/// that this server accepts, or `None` (the connection then goes uncompressed). An offer with
/// an unknown, repeated or malformed parameter is declined, as §7.1 asks.
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> Option<Deflate> {
    header_values
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| split_outside_quotes(value, ','))
        .find_map(accept_offer)
}

fn accept_offer(extension: &str) -> Option<Deflate> {
    let mut parts = split_outside_quotes(extension, ';').into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut deflate = Deflate { window_bits: 15, window_asked: false };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) => {
                deflate.window_bits = window_bits(&bits)?;
                deflate.window_asked = true;
            }
            // The client may use any window up to the one it names: inflating with 15 bits
            // reads them all.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(&bits)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(deflate)
}

/// A window size parameter: 8 to 15, no leading zero (§7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse::<u8>().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter value: a token or a quoted string (RFC 7230 §3.2.6).
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.is_empty()).then(|| value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Splits on `separator` where it is not inside a quoted string.
fn split_outside_quotes(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<Deflate> {
        negotiate(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn the_rfc_example_key() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn browser_node_and_python_offers_are_accepted_without_context_takeover() {
        for value in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate",
            "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
        ] {
            let deflate = offer(&[value]).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(
                deflate.response(),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            );
            assert!(deflate.fits(1 << 20));
        }
    }

    #[test]
    fn a_smaller_server_window_is_echoed_and_bounds_what_is_compressed() {
        let deflate = offer(&["permessage-deflate; server_max_window_bits=\"10\""]).unwrap();
        assert!(deflate.response().ends_with("; server_max_window_bits=10"));
        assert!(deflate.fits(1024) && !deflate.fits(1025));
    }

    #[test]
    fn malformed_offers_are_declined_and_the_next_one_taken() {
        for value in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown",
            "deflate-frame",
        ] {
            assert_eq!(offer(&[value]), None, "{value}");
        }
        let second =
            offer(&["permessage-deflate; x=1, permessage-deflate; server_max_window_bits=9"]);
        assert!(second.unwrap().response().ends_with("server_max_window_bits=9"));
        assert!(offer(&["foo", "permessage-deflate"]).is_some());
    }
}
