//! The seed's JSON examples against the Rust types and the committed schemas.

use modelcast_protocol::{ClientMessage, ServerFrame, ServerMessage, Topic};
use modelcast_tests::{fixtures, validator};
use serde_json::{Value, json};

/// Every example of the seed deserializes into the variant its `type` names, re-serializes to
/// an equal JSON value, and validates against the union schema and its per-type schema.
#[test]
fn seed_examples_round_trip_and_validate() {
    let seed = fixtures("seed");
    assert_eq!(seed.len(), 13, "the seed has 13 message examples");
    let union = validator("server-message.schema.json");
    for (name, value) in seed {
        let msg: ServerMessage = serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{name}: does not deserialize: {e}"));
        assert_eq!(msg.type_name(), name, "{name}: wrong variant");
        assert!(msg.topic().is_some(), "{name}: a seed message belongs to a topic");
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            value,
            "{name}: not an identity round trip"
        );

        let frame: ServerFrame = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&frame).unwrap(), value, "{name}: frame round trip");

        assert_valid(&union, &value, &name);
        assert_valid(&validator(&format!("messages/{name}.schema.json")), &value, &name);
    }
}

/// The frames the seed's JavaScript sends parse as the actions they name.
#[test]
fn seed_client_frames_parse() {
    let client = validator("client-message.schema.json");
    let frames = fixtures("client");
    assert_eq!(frames.len(), 4);
    for (name, value) in frames {
        let msg: ClientMessage = serde_json::from_value(value.clone()).unwrap();
        let topic = match &msg {
            ClientMessage::Subscribe(s) => s.topic,
            ClientMessage::Unsubscribe(u) => u.topic,
            other => panic!("{name}: unexpected {other:?}"),
        };
        assert!(name.ends_with(topic.as_str()), "{name}: parsed topic {topic}");
        assert_eq!(serde_json::to_value(&msg).unwrap(), value);
        assert_valid(&client, &value, &name);
    }
}

/// Topic messages carry `topic` and `seq` beside `type`/`data`; a reader that knows only
/// `type`/`data` (the seed's) still reads the message.
#[test]
fn topic_and_seq_are_additive() {
    let (_, value) =
        fixtures("seed").into_iter().find(|(n, _)| n == "download_progress_update").unwrap();
    let msg: ServerMessage = serde_json::from_value(value.clone()).unwrap();
    let frame = ServerFrame::topic(msg.clone(), 42);
    let wire = serde_json::to_value(&frame).unwrap();
    assert_eq!(wire["topic"], "download_progress");
    assert_eq!(wire["seq"], 42);
    assert_eq!(wire["type"], value["type"]);
    assert_eq!(wire["data"], value["data"]);
    let seed_reader: ServerMessage = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(seed_reader, msg);
    assert_valid(&validator("server-message.schema.json"), &wire, "framed");
    assert_valid(&validator("messages/download_progress_update.schema.json"), &wire, "framed");
}

/// Every message type maps to the topic its schema says, and control messages to none.
#[test]
fn every_type_has_one_topic_or_is_control() {
    let control = [
        "welcome",
        "subscribed",
        "unsubscribed",
        "pong",
        "lagging",
        "error",
        "state_cleared",
        "published",
    ];
    for ty in ServerMessage::TYPES {
        let schema = modelcast_tests::committed_schema(&format!("messages/{ty}.schema.json"));
        let topic = ServerMessage::topic_of(ty);
        assert_eq!(topic.is_none(), control.contains(ty), "{ty}");
        let in_schema = schema["properties"]["topic"]["const"].as_str();
        assert_eq!(in_schema, topic.map(Topic::as_str), "{ty}");
    }
    // Every topic has at least one message type.
    for topic in Topic::ALL {
        assert!(
            ServerMessage::TYPES.iter().any(|t| ServerMessage::topic_of(t) == Some(topic)),
            "{topic}"
        );
    }
}

/// Broken variants of every seed example: serde and the schema agree on every one, and the ones
/// that must fail (a missing required field, a wrong type, an unknown `type`) fail in both.
#[test]
fn broken_messages_are_rejected_by_serde_and_schema_alike() {
    let union = validator("server-message.schema.json");
    let mut checked = 0;
    for (name, value) in fixtures("seed") {
        let per_type = modelcast_tests::committed_schema(&format!("messages/{name}.schema.json"));
        let required: Vec<String> = data_def(&per_type)["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let data = value["data"].as_object().unwrap();
        for (field, field_value) in data {
            // 1. Missing field: rejected exactly when the field is required.
            let mut missing = value.clone();
            missing["data"].as_object_mut().unwrap().remove(field);
            let must_fail = required.contains(field);
            check(&union, &missing, !must_fail, &format!("{name} without {field}"));

            // 2. Wrong JSON type: always rejected.
            let mut wrong = value.clone();
            wrong["data"][field] = wrong_type(field_value);
            check(
                &union,
                &wrong,
                false,
                &format!("{name} with {field} = {}", wrong["data"][field]),
            );
            checked += 2;
        }
        // 3. Unknown type, and a missing or non-object data.
        let mut unknown = value.clone();
        unknown["type"] = json!("model_status_updat");
        check(&union, &unknown, false, &format!("{name} with unknown type"));
        let mut no_data = value.clone();
        no_data.as_object_mut().unwrap().remove("data");
        check(&union, &no_data, false, &format!("{name} without data"));
        checked += 2;
    }
    assert!(checked > 100, "checked only {checked} variants");
}

/// An unknown value of a closed vocabulary is accepted by both, for forward compatibility.
#[test]
fn unknown_vocabulary_values_are_accepted_and_kept() {
    let (_, mut value) =
        fixtures("seed").into_iter().find(|(n, _)| n == "download_status_change").unwrap();
    value["data"]["new_status"] = json!("throttled_by_isp");
    check(&validator("server-message.schema.json"), &value, true, "future status");
    let msg: ServerMessage = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_value(msg).unwrap(), value);
}

/// Client frames: the seed's forms, the optional fields, and the errors.
#[test]
fn client_messages_accept_options_and_reject_bad_input() {
    let schema = validator("client-message.schema.json");
    let good = [
        json!({"action": "subscribe", "topic": "alerts", "id": 7}),
        json!({"action": "subscribe", "topic": "download_progress", "id": "a",
               "since": {"epoch": "e1", "seq": 10}, "filter": {"model_ids": ["t2v-a14b"]}, "max_hz": 2.0}),
        json!({"action": "unsubscribe", "topic": "alerts", "id": "x"}),
        json!({"action": "ping"}),
        json!({"action": "ping", "id": 1}),
    ];
    for v in good {
        check(&schema, &v, true, &v.to_string());
        check_client_round_trip(&v);
    }
    let bad = [
        json!({"action": "subscribe"}),
        json!({"action": "subscribe", "topic": "weather"}),
        json!({"action": "subscribe", "topic": 3}),
        json!({"action": "publish", "topic": "alerts"}),
        json!({"topic": "alerts"}),
        json!({"action": "subscribe", "topic": "alerts", "since": {"epoch": "e"}}),
        json!({"action": "subscribe", "topic": "alerts", "filter": {"model": ["x"]}}),
        json!({"action": "subscribe", "topic": "alerts", "id": true}),
    ];
    for v in bad {
        check(&schema, &v, false, &v.to_string());
    }
}

fn check_client_round_trip(v: &Value) {
    let msg: ClientMessage = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(&serde_json::to_value(&msg).unwrap(), v);
}

/// The `data` definition in a per-type schema.
fn data_def(per_type: &Value) -> &Value {
    let r = per_type["properties"]["data"]["$ref"].as_str().unwrap();
    &per_type["$defs"][r.strip_prefix("#/$defs/").unwrap()]
}

/// A value of another JSON type than `v`.
fn wrong_type(v: &Value) -> Value {
    match v {
        Value::String(_) => json!(12),
        Value::Number(_) => json!("12"),
        Value::Bool(_) => json!("true"),
        Value::Array(_) => json!({"0": 1}),
        Value::Object(_) => json!([1]),
        Value::Null => json!(false),
    }
}

/// Asserts that serde (as a frame) and the schema both accept, or both reject, `v`.
fn check(schema: &jsonschema::Validator, v: &Value, accept: bool, what: &str) {
    let serde_ok =
        if v.get("action").is_some() || v.get("type").is_none() && v.get("topic").is_some() {
            serde_json::from_value::<ClientMessage>(v.clone()).is_ok()
        } else {
            serde_json::from_value::<ServerFrame>(v.clone()).is_ok()
        };
    let schema_ok = schema.is_valid(v);
    assert_eq!(
        serde_ok,
        accept,
        "{what}: serde {}",
        if serde_ok { "accepted" } else { "rejected" }
    );
    assert_eq!(
        schema_ok,
        accept,
        "{what}: schema {}",
        if schema_ok { "accepted" } else { "rejected" }
    );
}

fn assert_valid(schema: &jsonschema::Validator, v: &Value, what: &str) {
    let errors: Vec<String> =
        schema.iter_errors(v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}
