//! [`publish_problems`]: what is wrong with a message a backend publishes, all at once.
//!
//! Readers stay lenient (an unknown status is kept as `Other`, as the schemas promise); the
//! server, as the newest writer, is strict: every field the schema requires is present with
//! its type, closed vocabularies hold known values only, and numbers are in their range
//! (percentages 0–100, scores 0–1, sizes and durations ≥ 0, downloaded ≤ total), and ids
//! (`model_id`, `task_id`…) are not empty. The walk is
//! driven by the generated per-type schema, so it covers every type without a list to keep.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::problem::Problem;

/// Every problem of `data` as the `data` of a `type_name` message; empty when it may be
/// published. An unknown `type_name` has no problems here (the parser reports it).
pub fn publish_problems(type_name: &str, data: &Value) -> Vec<Problem> {
    let Some(schema) = schemas().get(type_name) else { return Vec::new() };
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let Some(node) = schema.pointer("/properties/data") else { return Vec::new() };
    let mut problems = Vec::new();
    Walk { defs: &defs, problems: &mut problems }.value(node, data, "data", None);
    problems
}

fn schemas() -> &'static BTreeMap<&'static str, Value> {
    static SCHEMAS: OnceLock<BTreeMap<&'static str, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crate::schema::message_types().into_iter().map(|(t, s)| (t, s.to_value())).collect()
    })
}

struct Walk<'a> {
    defs: &'a Value,
    problems: &'a mut Vec<Problem>,
}

impl Walk<'_> {
    fn problem(&mut self, path: &str, message: String) {
        self.problems.push(Problem { path: path.to_owned(), message });
    }

    /// Checks `value` at `path` against the schema `node`; `field` is the property name.
    fn value(&mut self, node: &Value, value: &Value, path: &str, field: Option<&str>) {
        if let Some(target) = node.get("$ref").and_then(Value::as_str) {
            let name = target.trim_start_matches("#/$defs/");
            let defs = self.defs;
            if let Some(def) = defs.get(name) {
                self.value(def, value, path, field);
            }
            return;
        }
        if let Some(branches) =
            node.get("anyOf").or_else(|| node.get("oneOf")).and_then(Value::as_array)
        {
            self.branches(branches, value, path, field);
            return;
        }
        if let Some(expected) = node.get("const") {
            if value != expected {
                self.problem(path, format!("expected {expected}, got {value}"));
            }
            return;
        }
        let types: Vec<&str> = match node.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return,
        };
        let fits = |t: &str| match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        };
        if !types.iter().any(|t| fits(t)) {
            let shown = if value.is_string() {
                "a string"
            } else if value.is_number() {
                "a number"
            } else if value.is_object() {
                "an object"
            } else if value.is_array() {
                "an array"
            } else if value.is_boolean() {
                "a boolean"
            } else {
                "null"
            };
            self.problem(path, format!("expected {}, got {shown}", types.join(" or ")));
            return;
        }
        match value {
            Value::Object(map) => self.object(node, map, path),
            Value::Array(items) => {
                if let Some(item) = node.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.value(item, v, &format!("{path}[{i}]"), None);
                    }
                }
            }
            Value::Number(n) => self.number(node, n.as_f64().unwrap_or(f64::NAN), path, field),
            Value::String(s)
                if node.get("format").and_then(Value::as_str) == Some("date-time")
                    && chrono::DateTime::parse_from_rfc3339(s).is_err() =>
            {
                self.problem(
                    path,
                    format!(
                        "`{s}` is not a timestamp: expected RFC 3339, e.g. 2025-08-27T10:30:00Z"
                    ),
                );
            }
            // An id names what the message is about (the state key, the filter subject): a
            // message about nothing nameable cannot be shown, filtered or cleared.
            Value::String(s) if s.is_empty() && field.is_some_and(|f| f.ends_with("_id")) => {
                self.problem(path, "must not be empty: it names what the message is about".into());
            }
            _ => {}
        }
    }

    /// `anyOf`/`oneOf`. An open vocabulary (known constants plus "any other string") is closed
    /// here: only the known values may be published.
    fn branches(&mut self, branches: &[Value], value: &Value, path: &str, field: Option<&str>) {
        let known: Vec<&str> =
            branches.iter().filter_map(|b| b.get("const").and_then(Value::as_str)).collect();
        if !known.is_empty() && known.len() + 1 == branches.len() {
            match value.as_str() {
                Some(s) if known.contains(&s) => {}
                Some(s) => self.problem(
                    path,
                    format!("`{s}` is not a known value; expected one of: {}", known.join(", ")),
                ),
                None => self.problem(path, format!("expected one of: {}", known.join(", "))),
            }
            return;
        }
        // Otherwise: the branch with the fewest problems decides.
        let mut best: Option<Vec<Problem>> = None;
        for branch in branches {
            let mut found = Vec::new();
            Walk { defs: self.defs, problems: &mut found }.value(branch, value, path, field);
            if best.as_ref().is_none_or(|b| found.len() < b.len()) {
                best = Some(found);
            }
        }
        self.problems.extend(best.unwrap_or_default());
    }

    fn object(&mut self, node: &Value, map: &serde_json::Map<String, Value>, path: &str) {
        let required = node.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                self.problem(&format!("{path}.{name}"), format!("missing field `{name}`"));
            }
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                if let Some(v) = map.get(name) {
                    self.value(prop, v, &format!("{path}.{name}"), Some(name));
                }
            }
        }
        let number = |name: &str| map.get(name).and_then(Value::as_f64);
        if let (Some(done), Some(total)) = (number("downloaded_mb"), number("total_mb"))
            && total > 0.0
            && done > total
        {
            self.problem(
                &format!("{path}.downloaded_mb"),
                format!("{done} is more than total_mb ({total})"),
            );
        }
    }

    /// Ranges by what a field measures (its name), beyond the schema's own bounds.
    fn number(&mut self, node: &Value, n: f64, path: &str, field: Option<&str>) {
        if let Some(min) = node.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            self.problem(path, format!("{n} is below the minimum {min}"));
        }
        if let Some(max) = node.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            self.problem(path, format!("{n} is above the maximum {max}"));
        }
        let Some(field) = field else { return };
        let range = if matches!(
            field,
            "progress_percent" | "cpu_percent" | "memory_percent" | "gpu_percent"
        ) {
            Some((0.0, 100.0))
        } else if field.ends_with("_score") {
            Some((0.0, 1.0))
        } else if field.ends_with("_mb")
            || field.ends_with("_mbps")
            || field.ends_with("_seconds")
            || field.ends_with("_percent")
            || matches!(field, "estimated_wait_time" | "usage_frequency")
        {
            Some((0.0, f64::INFINITY))
        } else {
            None
        };
        if let Some((low, high)) = range
            && !(low..=high).contains(&n)
        {
            let expected = if high.is_infinite() {
                format!("at least {low}")
            } else {
                format!("from {low} to {high}")
            };
            self.problem(path, format!("{n} is out of range: expected {expected}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::publish_problems;

    fn paths(type_name: &str, data: serde_json::Value) -> Vec<String> {
        publish_problems(type_name, &data)
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = paths("alert", json!({"level": "warning", "message": "m"}));
        assert_eq!(
            found,
            [
                "data.alert_id: missing field `alert_id`",
                "data.title: missing field `title`",
                "data.timestamp: missing field `timestamp`"
            ]
        );
        let found = paths(
            "download_progress_update",
            json!({"model_id": "m", "status": "downloadin", "progress_percent": 150.0,
                   "downloaded_mb": -1.0, "total_mb": 10.0, "speed_mbps": 1.0,
                   "can_pause": true, "can_resume": true, "can_cancel": true,
                   "timestamp": "yesterday"}),
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("data.downloaded_mb: -1 is out of range"), "{found:#?}");
        assert!(
            found.iter().any(|p| p.starts_with("data.status: `downloadin` is not a known value"))
        );
        assert!(found.iter().any(|p| p.starts_with("data.progress_percent: 150 is out of range")));
        assert!(found.iter().any(|p| p.contains("RFC 3339")));
    }

    #[test]
    fn ids_must_name_something() {
        let found = paths(
            "alert",
            json!({"alert_id": "", "level": "warning", "title": "t", "message": "m",
                   "model_id": "", "timestamp": "2025-08-27T10:30:00Z"}),
        );
        assert_eq!(
            found,
            [
                "data.alert_id: must not be empty: it names what the message is about",
                "data.model_id: must not be empty: it names what the message is about"
            ]
        );
    }
}
