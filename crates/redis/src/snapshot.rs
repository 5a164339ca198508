//! Reading Redis replies: a topic's snapshot (epoch, newest seq, log entries, retained state)
//! and the small value helpers.

use modelcast_hub::Logged;
use redis::Value;

/// A topic as Redis holds it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) epoch: String,
    pub(crate) top: u64,
    pub(crate) entries: Vec<Logged>,
    pub(crate) retained: Vec<Logged>,
}

pub(crate) fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(crate) fn number_of(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => std::str::from_utf8(bytes_of(other)?).ok()?.parse().ok(),
    }
}

fn array_of(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) => Some(items),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

/// The snapshot script's reply: `{epoch, seq, entries, state}`.
pub(crate) fn parse_snapshot(value: &Value) -> Option<Snapshot> {
    let parts = array_of(value)?;
    let epoch = String::from_utf8(bytes_of(parts.first()?)?.to_vec()).ok()?;
    let top = number_of(parts.get(1)?)? as u64;
    let mut entries = Vec::new();
    for entry in array_of(parts.get(2)?)? {
        let [id, fields] = array_of(entry)? else { return None };
        let id = std::str::from_utf8(bytes_of(id)?).ok()?;
        let seq: u64 = id.strip_prefix("0-")?.parse().ok()?;
        let fields = array_of(fields)?;
        let (mut payload, mut ms) = (None, 0);
        for pair in fields.chunks(2) {
            match (bytes_of(&pair[0])?, pair.get(1)) {
                (b"p", Some(v)) => payload = Some(bytes_of(v)?.to_vec()),
                (b"t", Some(v)) => ms = number_of(v)?,
                _ => {}
            }
        }
        entries.push(Logged { seq, published_ms: ms, payload: payload?.into() });
    }
    let mut retained = Vec::new();
    for pair in array_of(parts.get(3)?)?.chunks(2) {
        let value = bytes_of(pair.get(1)?)?;
        let mut fields = value.splitn(3, |b| *b == b'\n');
        let seq = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let ms = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        retained.push(Logged { seq, published_ms: ms, payload: fields.next()?.to_vec().into() });
    }
    retained.sort_by_key(|l| l.seq);
    Some(Snapshot { epoch, top, entries, retained })
}
