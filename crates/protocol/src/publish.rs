//! [`PublishFrame`]: a frame as a publisher sends it, read in one pass over the body.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::value::RawValue;

use crate::ServerMessage;

/// A frame a backend publishes: the same `{"type": ..., "data": {...}}` clients receive, with an
/// optional `topic` (which must then be the type's topic). A publisher's `seq` and `late`, if
/// any, are ignored: the hub assigns them.
///
/// Reading a body is one pass: deserializing this envelope checks `type` and only *delimits*
/// `data` (borrowed, not parsed), then [`PublishFrame::message`] parses `data` once, straight
/// into the type `type` names, so an error names its field whatever the key order.
#[derive(Debug, Deserialize)]
pub struct PublishFrame<'a> {
    /// The message type, one of [`ServerMessage::TYPES`].
    #[serde(rename = "type", deserialize_with = "known_type")]
    pub type_name: String,
    /// The `data` object as sent, not yet parsed.
    #[serde(borrow)]
    pub data: &'a RawValue,
    /// The `topic` the publisher claimed, as sent.
    #[serde(default)]
    pub topic: Option<String>,
    /// Who the message is for, as sent (read with [`crate::Audience::from_value`]); `None`:
    /// every subscriber of the topic.
    #[serde(default, borrow)]
    pub audience: Option<&'a RawValue>,
}

fn known_type<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    if ServerMessage::TYPES.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(de::Error::unknown_variant(&name, publishable()))
    }
}

/// The message types a publisher may send (those with a topic), for error messages.
fn publishable() -> &'static [&'static str] {
    static TYPES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    TYPES.get_or_init(|| {
        ServerMessage::TYPES
            .iter()
            .copied()
            .filter(|t| ServerMessage::topic_of(t).is_some())
            .collect()
    })
}

impl PublishFrame<'_> {
    /// As [`PublishFrame::message`], from `data` already parsed (e.g. after the server stamped
    /// a missing `timestamp`).
    pub fn message_from(
        &self,
        data: serde_json::Value,
    ) -> Result<ServerMessage, serde_path_to_error::Error<serde_json::Error>> {
        let mut track = serde_path_to_error::Track::new();
        let deserializer = serde_path_to_error::Deserializer::new(data, &mut track);
        match ServerMessage::from_type_and_data(&self.type_name, deserializer) {
            Ok(Some(message)) => Ok(message),
            Ok(None) => unreachable!("`type` was checked to be a known type"),
            Err(err) => Err(serde_path_to_error::Error::new(track.path(), err)),
        }
    }

    /// Parses `data` as the message `type` names. The error's path is relative to `data`
    /// (e.g. `progress_percent`).
    pub fn message(&self) -> Result<ServerMessage, serde_path_to_error::Error<serde_json::Error>> {
        let mut track = serde_path_to_error::Track::new();
        let mut inner = serde_json::Deserializer::from_str(self.data.get());
        let data = serde_path_to_error::Deserializer::new(&mut inner, &mut track);
        match ServerMessage::from_type_and_data(&self.type_name, data) {
            Ok(Some(message)) => Ok(message),
            Ok(None) => unreachable!("`type` was checked to be a known type"),
            Err(err) => Err(serde_path_to_error::Error::new(track.path(), err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERT_DATA: &str = r#"{"alert_id":"a","level":"warning","title":"t","message":"m","timestamp":"2025-08-27T10:30:00Z"}"#;

    #[test]
    fn the_envelope_checks_type_and_data_errors_name_the_field_in_any_key_order() {
        let text = format!(r#"{{"data":{ALERT_DATA},"topic":"alerts","type":"alert"}}"#);
        let frame: PublishFrame<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(frame.message().unwrap().type_name(), "alert");
        assert_eq!(frame.topic.as_deref(), Some("alerts"));

        let bad = ALERT_DATA.replace(r#""message":"m""#, r#""message":5"#);
        let text = format!(r#"{{"data":{bad},"type":"alert"}}"#);
        let frame: PublishFrame<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(frame.message().unwrap_err().path().to_string(), "message");

        let mut de = serde_json::Deserializer::from_str(r#"{"type":"nope","data":{}}"#);
        let err = serde_path_to_error::deserialize::<_, PublishFrame<'_>>(&mut de).unwrap_err();
        assert_eq!(err.path().to_string(), "type");
        assert!(err.inner().to_string().contains("unknown variant `nope`"), "{err}");
    }
}
