//! Epochs and their order. An epoch names one numbering of a topic's `seq`s; a new one starts
//! whenever the numbers cannot continue (a Redis that may have lost acknowledged messages, a
//! rolled-back log). An epoch, once left, must never be current again — a client holding a
//! position in it would otherwise be told `recovered: true` over what it missed. So epochs are
//! ordered: 24 hex digits, a *generation* (8 digits, only ever growing: each new epoch of a
//! topic is one past the one it replaces, or past the highest a node has seen) then 16 random
//! ones. An epoch whose generation is below one already seen came back from the past (a
//! failback to a primary with older data) and is fenced. A leaf: the hub and the Redis engine
//! (whose scripts do the same in Lua) share it.

/// A new epoch of generation 1: the first of a topic.
pub fn new_epoch() -> String {
    epoch_of(1)
}

/// A new epoch of generation `generation`.
pub fn epoch_of(generation: u32) -> String {
    format!("{generation:08x}{}", epoch_random())
}

/// An epoch's random part: 16 hex digits (for a script that puts the generation first).
pub fn epoch_random() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// An epoch's generation: the first 8 hex digits of a 24-digit epoch; 0 for any other
/// (epochs made before generations existed are older than every new one).
pub fn generation(epoch: &str) -> u32 {
    match epoch.get(..8) {
        Some(head) if epoch.len() == 24 => u32::from_str_radix(head, 16).unwrap_or(0),
        _ => 0,
    }
}

/// The epoch after `previous`: one generation past it, and past `at_least - 1` (the highest a
/// node has seen).
pub fn next_epoch(previous: &str, at_least: u32) -> String {
    epoch_of(generation(previous).saturating_add(1).max(at_least))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_order_epochs_and_only_grow() {
        let first = new_epoch();
        assert_eq!((first.len(), generation(&first)), (24, 1));
        let second = next_epoch(&first, 0);
        assert_eq!(generation(&second), 2);
        assert_eq!(generation(&next_epoch(&second, 9)), 9, "past what a node has seen");
        assert_eq!(generation("6f7dfa8007d12674"), 0, "an epoch from before generations");
        assert_eq!(generation(&next_epoch("6f7dfa8007d12674", 0)), 1);
        assert_eq!(generation("zzzzzzzz0000000000000000"), 0, "not hex");
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "fits an event id");
    }
}
