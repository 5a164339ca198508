//! JSON Schema (draft 2020-12) generation for `schemas/`. Pure: returns file contents, writes
//! nothing; `cargo xtask codegen` writes them and a test compares them with the committed ones.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::{ClientMessage, PROTOCOL_VERSION, ServerFrame, messages};

/// The base URI of the schemas' `$id`s.
const ID_BASE: &str = "https://modelcast.dev/schemas";

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().with_transform(OptionalIsNeverNull).into_generator()
}

/// Every optional field of the protocol is omitted when absent, never written as `null`
/// (`skip_serializing_if = "Option::is_none"`), so the schema says exactly that: a property
/// that is not `required` loses the `null` alternative schemars gives an `Option`.
#[derive(Debug, Clone)]
struct OptionalIsNeverNull;

impl Transform for OptionalIsNeverNull {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        let required: Vec<String> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let Some(Value::Object(props)) = schema.get_mut("properties") else { return };
        for (name, prop) in props.iter_mut() {
            if !required.contains(name) {
                drop_null(prop);
            }
        }
    }
}

fn drop_null(prop: &mut Value) {
    let Value::Object(obj) = prop else { return };
    if let Some(Value::Array(types)) = obj.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.pop().expect("one type");
            obj.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(any_of)) = obj.get("anyOf") {
        let rest: Vec<Value> =
            any_of.iter().filter(|b| **b != json!({"type": "null"})).cloned().collect();
        if rest.len() == 1 {
            obj.remove("anyOf");
            if let Value::Object(only) = &rest[0] {
                for (k, v) in only {
                    obj.insert(k.clone(), v.clone());
                }
            }
        } else {
            obj.insert("anyOf".into(), Value::Array(rest));
        }
    }
}

fn root<T: JsonSchema>(file: &str, title: &str) -> Schema {
    let mut schema = generator().into_root_schema_for::<T>();
    decorate(&mut schema, file, title);
    schema
}

fn decorate(schema: &mut Schema, file: &str, title: &str) {
    schema.insert("$id".into(), json!(format!("{ID_BASE}/{file}")));
    schema.insert("title".into(), json!(title));
    schema.insert("x-protocol-version".into(), json!(PROTOCOL_VERSION));
}

/// The schema of any frame the server sends.
pub fn server_message() -> Schema {
    root::<ServerFrame>("server-message.schema.json", "ServerMessage")
}

/// The schema of any message a client sends.
pub fn client_message() -> Schema {
    root::<ClientMessage>("client-message.schema.json", "ClientMessage")
}

/// One schema per server message type, keyed by `type`: the full frame of that type.
pub fn message_types() -> BTreeMap<&'static str, Schema> {
    let mut generator = generator();
    let data = messages::data_schemas(&mut generator);
    let defs: serde_json::Map<String, Value> = generator.take_definitions(true);
    data.into_iter()
        .map(|(type_name, topic, data_schema)| {
            let mut properties = serde_json::Map::new();
            properties.insert(
                "type".into(),
                json!({ "const": type_name, "description": "The message type." }),
            );
            properties.insert("data".into(), data_schema.to_value());
            if let Some(topic) = topic {
                {
                    properties.insert(
                        "topic".into(),
                        json!({ "const": topic.as_str(), "description": "The topic the message was published on." }),
                    );
                    properties.insert(
                        "seq".into(),
                        json!({
                            "type": "integer", "format": "uint64", "minimum": 0,
                            "description": "The message's position in its topic within the epoch."
                        }),
                    );
                }
            }
            let mut schema = Schema::try_from(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": properties,
                "required": ["type", "data"],
            }))
            .expect("an object is a schema");
            // Keep only the definitions this type refers to, so each file stands alone.
            let used = referenced_defs(schema.as_value(), &defs);
            if !used.is_empty() {
                schema.insert("$defs".into(), Value::Object(used));
            }
            decorate(&mut schema, &format!("messages/{type_name}.schema.json"), type_name);
            (type_name, schema)
        })
        .collect()
}

/// The `$defs` entries `value` refers to, transitively.
fn referenced_defs(
    value: &Value,
    defs: &serde_json::Map<String, Value>,
) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let mut stack = vec![value.clone()];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let target = (k == "$ref")
                        .then(|| child.as_str().and_then(|r| r.strip_prefix("#/$defs/")))
                        .flatten();
                    match target {
                        Some(name) => {
                            if let (false, Some(def)) = (out.contains_key(name), defs.get(name)) {
                                out.insert(name.to_owned(), def.clone());
                                stack.push(def.clone());
                            }
                        }
                        None => stack.push(child),
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

/// Every generated file under `schemas/`: path relative to `schemas/` → contents.
/// Deterministic, pretty-printed, ending with a newline.
pub fn files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut put = |path: String, schema: &Schema| {
        let mut text = serde_json::to_string_pretty(schema).expect("schemas serialize");
        text.push('\n');
        files.insert(path, text);
    };
    put("server-message.schema.json".into(), &server_message());
    put("client-message.schema.json".into(), &client_message());
    for (type_name, schema) in message_types() {
        put(format!("messages/{type_name}.schema.json"), &schema);
    }
    files
}
