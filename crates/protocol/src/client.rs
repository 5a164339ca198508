//! Messages a client sends: `{"action": "...", ...}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Topic};

/// A message from a client, one JSON object per text frame.
///
/// `{"action":"subscribe","topic":"model_status"}` and
/// `{"action":"unsubscribe","topic":"model_status"}` are the seed's forms; every other field is
/// optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMessage {
    /// Start receiving a topic's messages.
    Subscribe(SubscribeRequest),
    /// Stop receiving a topic's messages.
    Unsubscribe(UnsubscribeRequest),
    /// Ask for a `pong`, to measure latency or keep a proxy's connection open.
    Ping(PingRequest),
    /// Authenticate (or refresh an expiring token) when the server requires tokens.
    Auth(AuthRequest),
    /// Publish a message, as `POST /api/publish` does, on a connection allowed to publish (a
    /// backend's persistent publish channel).
    Publish(PublishRequest),
}

impl ClientMessage {
    /// The actions a client may send, as they appear on the wire.
    pub const ACTIONS: &'static [&'static str] =
        &["subscribe", "unsubscribe", "ping", "auth", "publish"];

    /// The request's `id`, if it has one.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Self::Subscribe(r) => r.id.as_ref(),
            Self::Unsubscribe(r) => r.id.as_ref(),
            Self::Ping(r) => r.id.as_ref(),
            Self::Auth(r) => r.id.as_ref(),
            Self::Publish(r) => r.id.as_ref(),
        }
    }

    /// Parses one text frame from a client, with the error a client should get: `invalid_json`,
    /// `unknown_action`, `unknown_topic`, or `invalid_message` naming the field. Never panics,
    /// whatever the input.
    pub fn parse_frame(text: &str) -> Result<ClientMessage, FrameError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FrameError {
            code: ErrorCode::InvalidJson,
            message: format!("not valid JSON: {e}"),
            request_id: None,
        })?;
        let request_id =
            value.get("id").and_then(|id| serde_json::from_value::<RequestId>(id.clone()).ok());
        let fail = |code: ErrorCode, message: String| FrameError {
            code,
            message,
            request_id: request_id.clone(),
        };
        if let Some(path) = crate::first_duplicate_key(text) {
            return Err(fail(
                ErrorCode::InvalidMessage,
                format!("`{path}` appears twice; send each key once"),
            ));
        }
        let Some(obj) = value.as_object() else {
            return Err(fail(
                ErrorCode::InvalidMessage,
                "a message is a JSON object with an `action`".into(),
            ));
        };
        let action = match obj.get("action") {
            None => return Err(fail(ErrorCode::InvalidMessage, "missing field `action`".into())),
            Some(serde_json::Value::String(a)) => a.as_str(),
            Some(_) => {
                return Err(fail(ErrorCode::InvalidMessage, "action: expected a string".into()));
            }
        };
        if !Self::ACTIONS.contains(&action) {
            return Err(fail(
                ErrorCode::UnknownAction,
                format!("unknown action `{action}`; expected one of: {}", Self::ACTIONS.join(", ")),
            ));
        }
        if let Some(serde_json::Value::String(topic)) = obj.get("topic")
            && let Err(err) = topic.parse::<Topic>()
        {
            return Err(fail(ErrorCode::UnknownTopic, err.to_string()));
        }
        serde_path_to_error::deserialize::<_, ClientMessage>(value).map_err(|err| {
            let path = err.path().to_string();
            let message = if path == "." {
                err.inner().to_string()
            } else {
                format!("{path}: {}", err.inner())
            };
            fail(ErrorCode::InvalidMessage, message)
        })
    }
}

/// Why a client frame was refused, as the `error` reply should say it.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// The frame's `id`, if one could be read.
    pub request_id: Option<RequestId>,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for FrameError {}

/// `{"action":"auth","token":...}`: authenticates the connection, or refreshes its token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuthRequest {
    /// The token (a JWT).
    pub token: String,
    /// An id echoed in an error reply as `request_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
}

/// `{"action":"publish","type":...,"data":{...}}`: the frame `POST /api/publish` takes, sent
/// over the WebSocket. Allowed on connections opened with a publish key
/// (`Authorization: Bearer <key>`), or by any non-browser client when the server has no
/// publish keys. Answered with `published` only when it has an `id`; refused ones get `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PublishRequest {
    /// The message type, e.g. `download_progress_update`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The message's fields, as in the server frame (`timestamp` may be omitted).
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The topic, if given: it must be the type's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Topic>,
    /// Who the message is for (users and/or roles); without it, every subscriber of the topic.
    /// Checked by the server like `data`; subscribers never see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::Audience>")]
    pub audience: Option<serde_json::Value>,
    /// An id echoed in the `published` reply (or an `error`) as `request_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
}

/// An id the client chooses for a request; the reply echoes it as `request_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RequestId {
    /// A numeric id.
    Number(i64),
    /// A string id.
    String(String),
}

/// `{"action":"subscribe","topic":...}` with its optional fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubscribeRequest {
    /// The topic to subscribe to.
    pub topic: Topic,
    /// An id echoed in the reply as `request_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Recover missed messages: the epoch and the last `seq` received on this topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
    /// Receive only the messages that match (e.g. some models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<SubscriptionFilter>,
    /// At most this many updates per second per model; the newest value wins and state changes
    /// are never dropped. From 0.01 (one update per model per 100 s) up: nothing is held back
    /// longer than that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hz: Option<f64>,
}

impl SubscribeRequest {
    /// A plain subscription to `topic`, as the seed sends it.
    pub fn new(topic: Topic) -> Self {
        Self { topic, id: None, since: None, filter: None, max_hz: None }
    }
}

/// `{"action":"unsubscribe","topic":...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnsubscribeRequest {
    /// The topic to unsubscribe from.
    pub topic: Topic,
    /// An id echoed in the reply as `request_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
}

/// `{"action":"ping"}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct PingRequest {
    /// An id echoed in the `pong` as `request_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
}

/// A position in a topic's stream: the `epoch` and `seq` of the last message received.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Since {
    /// The epoch from `subscribed` (or `welcome`).
    pub epoch: String,
    /// The `seq` of the last message received on the topic.
    pub seq: u64,
}

/// Which of a topic's messages a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFilter {
    /// Only messages about these models (by `model_id`). Messages about no particular model
    /// (e.g. a batch or system stats) are always delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ids: Option<Vec<String>>,
}
