//! Proptest strategies that generate JSON values from a JSON Schema.
//!
//! Used to test the protocol in both directions at once: every value the *committed* schema
//! allows must deserialize into the Rust types, serialize back to the same JSON, and validate.
//! Supports the subset of draft 2020-12 that schemars emits for our types.

use chrono::{DateTime, SecondsFormat};
use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::{Map, Value};

/// A strategy for values valid against `schema`, resolving `$ref`s in `root`'s `$defs`.
pub fn value_for(schema: &Value, root: &Value) -> BoxedStrategy<Value> {
    let Some(obj) = schema.as_object() else {
        return Just(Value::Null).boxed();
    };
    if let Some(c) = obj.get("const") {
        return Just(c.clone()).boxed();
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array) {
        return proptest::sample::select(values.clone()).boxed();
    }
    // The parts a value must satisfy at once: its own `type`, a `$ref` beside it (schemars
    // writes internally tagged variants so), and one of its `oneOf`/`anyOf` branches.
    let mut parts: Vec<BoxedStrategy<Value>> = Vec::new();
    if let Some(own) = own_type(obj, root) {
        parts.push(own);
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").expect("local refs only");
        parts.push(value_for(&root["$defs"][name], root));
    }
    if let Some(branches) = obj.get("oneOf").or_else(|| obj.get("anyOf")).and_then(Value::as_array)
    {
        parts.push(Union::new(branches.iter().map(|b| value_for(b, root))).boxed());
    }
    assert!(!parts.is_empty(), "schema with no type this generator knows: {schema}");
    if parts.len() == 1 {
        return parts.pop().unwrap();
    }
    parts
        .prop_map(|values| {
            let mut merged = Map::new();
            for value in values {
                match value {
                    Value::Object(fields) => merged.extend(fields),
                    other => panic!("cannot merge non-object {other} into an object"),
                }
            }
            Value::Object(merged)
        })
        .boxed()
}

/// A strategy for the schema's own `type` (ignoring `oneOf`/`anyOf`), if it has one.
fn own_type(obj: &Map<String, Value>, root: &Value) -> Option<BoxedStrategy<Value>> {
    let types: Vec<&str> = match obj.get("type")? {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    Some(Union::new(types.into_iter().map(|t| of_type(t, obj, root))).boxed())
}

fn of_type(t: &str, obj: &Map<String, Value>, root: &Value) -> BoxedStrategy<Value> {
    match t {
        "null" => Just(Value::Null).boxed(),
        "boolean" => any::<bool>().prop_map(Value::from).boxed(),
        // Within the schema's `minimum`/`maximum` (the Rust width, in standard keywords).
        "integer" => {
            let min = obj.get("minimum").and_then(Value::as_i64).unwrap_or(i64::MIN);
            match obj.get("maximum") {
                Some(max) if max.as_i64().is_none() => {
                    let max = max.as_u64().expect("an integer maximum");
                    (u64::try_from(min.max(0)).unwrap_or(0)..=max).prop_map(Value::from).boxed()
                }
                max => {
                    let max = max.and_then(Value::as_i64).unwrap_or(i64::MAX);
                    (min..=max).prop_map(Value::from).boxed()
                }
            }
        }
        // Finite floats only: JSON has no NaN or infinity.
        "number" => {
            use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
            (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO).prop_map(Value::from).boxed()
        }
        "string" => match obj.get("format").and_then(Value::as_str) {
            Some("date-time") => timestamp().prop_map(Value::from).boxed(),
            // Within `minLength`, counted in characters as JSON Schema counts them.
            _ => {
                let min = obj.get("minLength").and_then(Value::as_u64).unwrap_or(0);
                let pattern = format!("\\PC{{{min},{}}}", min.max(12));
                proptest::string::string_regex(&pattern)
                    .expect("a valid pattern")
                    .prop_map(Value::from)
                    .boxed()
            }
        },
        "array" => {
            let items = value_for(obj.get("items").unwrap_or(&Value::Null), root);
            let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
            let max = obj.get("maxItems").and_then(Value::as_u64).map_or(min + 4, |m| m as usize);
            proptest::collection::vec(items, min..max.min(min + 4).max(min + 1))
                .prop_map(Value::from)
                .boxed()
        }
        "object" => object(obj, root),
        other => panic!("unsupported type {other}"),
    }
}

fn object(obj: &Map<String, Value>, root: &Value) -> BoxedStrategy<Value> {
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, schema) in props {
            let name = name.clone();
            let value = value_for(schema, root);
            if required.contains(&name.as_str()) {
                fields.push(value.prop_map(move |v| Some((name.clone(), v))).boxed());
            } else {
                fields.push(
                    proptest::option::of(value)
                        .prop_map(move |v| v.map(|v| (name.clone(), v)))
                        .boxed(),
                );
            }
        }
    }
    let extra = match obj.get("additionalProperties") {
        Some(schema @ Value::Object(_)) => {
            proptest::collection::btree_map("[a-z_]{1,10}", value_for(schema, root), 0..4).boxed()
        }
        _ => Just(Default::default()).boxed(),
    };
    let min = obj.get("minProperties").and_then(Value::as_u64).unwrap_or(0) as usize;
    (fields, extra)
        .prop_map(|(fields, extra)| {
            let mut map: Map<String, Value> = extra.into_iter().collect();
            map.extend(fields.into_iter().flatten());
            Value::Object(map)
        })
        .prop_filter("minProperties", move |v| v.as_object().is_some_and(|m| m.len() >= min))
        .boxed()
}

/// RFC 3339 timestamps in UTC, with 0, 3, 6 or 9 fractional digits, as chrono writes them.
fn timestamp() -> impl Strategy<Value = String> {
    (0i64..4_102_444_800, prop_oneof![Just(0u32), 0u32..1000, 0u32..1_000_000, 0u32..1_000_000_000])
        .prop_map(|(secs, frac)| {
            let nanos = match frac {
                f if f < 1000 => f * 1_000_000,
                f if f < 1_000_000 => f * 1000,
                f => f,
            };
            DateTime::from_timestamp(secs, nanos)
                .expect("in range")
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        })
}
