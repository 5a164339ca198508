//! [`Audience`]: the optional envelope field of a publish that addresses a message to some
//! users or roles inside a shared topic, and its checks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::problem::Problem;

/// The most names one list of an audience may hold.
pub const AUDIENCE_MAX_NAMES: usize = 64;
/// The longest name (user or role) of an audience, in bytes.
pub const AUDIENCE_MAX_NAME_BYTES: usize = 256;

/// Who a published message is for: the connections whose token's `sub` is one of `users`, or
/// whose `roles` claim holds one of `roles`. Without an audience a message reaches every
/// subscriber of its topic; with one, connections without a token receive nothing of it.
/// Subscribers never see it: the frame they receive is the same either way.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1))]
pub struct Audience {
    /// Users (token `sub` claims), 1 to 64 names of 1 to 256 bytes without control characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    pub users: Vec<String>,
    /// Roles (token `roles` claim), 1 to 64 names of 1 to 256 bytes without control characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    pub roles: Vec<String>,
}

impl Audience {
    /// Reads the `audience` field of a publish (`path` is where it sits, e.g. `audience`),
    /// with every problem at once: not an object, an unknown field, neither list, a list that
    /// is empty, too long or not of strings, a name empty, too long or holding a control
    /// character.
    pub fn from_value(value: &Value, path: &str) -> Result<Audience, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| problems.push(Problem { path, message });
        let Some(fields) = value.as_object() else {
            problem(path.into(), "expected an object with `users` and/or `roles`".into());
            return Err(problems);
        };
        let mut audience = Audience::default();
        for (name, list) in fields {
            let into = match name.as_str() {
                "users" => &mut audience.users,
                "roles" => &mut audience.roles,
                other => {
                    problem(
                        format!("{path}.{other}"),
                        "unknown field; an audience has `users` and `roles`".into(),
                    );
                    continue;
                }
            };
            let here = format!("{path}.{name}");
            let Some(items) = list.as_array() else {
                problem(here, "expected an array of names".into());
                continue;
            };
            if items.is_empty() || items.len() > AUDIENCE_MAX_NAMES {
                problem(
                    here.clone(),
                    format!("expected 1 to {AUDIENCE_MAX_NAMES} names, got {}", items.len()),
                );
            }
            for (i, item) in items.iter().enumerate() {
                let here = format!("{here}[{i}]");
                match item.as_str() {
                    None => problem(here, "expected a string".into()),
                    Some("") => problem(here, "a name is never empty".into()),
                    Some(s) if s.len() > AUDIENCE_MAX_NAME_BYTES => problem(
                        here,
                        format!("longer than {AUDIENCE_MAX_NAME_BYTES} bytes ({})", s.len()),
                    ),
                    Some(s) if s.chars().any(char::is_control) => {
                        problem(here, "a name holds no control characters".into());
                    }
                    Some(s) => into.push(s.to_owned()),
                }
            }
        }
        if fields.is_empty() {
            problem(
                path.into(),
                "name `users`, `roles` or both (an empty audience reaches nobody)".into(),
            );
        }
        if problems.is_empty() { Ok(audience) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(value: Value) -> Vec<String> {
        let mut paths: Vec<String> = Audience::from_value(&value, "audience")
            .unwrap_err()
            .into_iter()
            .map(|p| p.path)
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn a_good_audience_reads_and_every_problem_is_named() {
        let ok = Audience::from_value(&json!({"users": ["alice"], "roles": ["ops"]}), "audience");
        assert_eq!(
            ok.unwrap(),
            Audience { users: vec!["alice".into()], roles: vec!["ops".into()] }
        );
        assert_eq!(paths(json!("alice")), ["audience"]);
        assert_eq!(paths(json!({})), ["audience"]);
        assert_eq!(
            paths(json!({"users": [], "roles": ["", 5, "a\u{0}b", "x".repeat(257)], "team": 1})),
            [
                "audience.roles[0]",
                "audience.roles[1]",
                "audience.roles[2]",
                "audience.roles[3]",
                "audience.team",
                "audience.users"
            ]
        );
        let many: Vec<String> = (0..65).map(|i| format!("u{i}")).collect();
        assert_eq!(paths(json!({"users": many})), ["audience.users"]);
    }
}
