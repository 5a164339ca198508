//! A change to `schemas/` that would break an existing frontend fails unless the protocol
//! version is raised: the current schemas are compared with the baseline frozen for the
//! current `PROTOCOL_VERSION` in `tests/fixtures/schema-baseline/v<N>/`.
//!
//! Frontends *read* server messages: a removed message type or field, a field that is no
//! longer always present, or a widened type breaks them. Frontends *write* client messages: a
//! removed action or field, a new required field, or a narrowed type breaks them.

use std::collections::BTreeSet;

use modelcast_protocol::PROTOCOL_VERSION;
use modelcast_tests::{committed_schema, read_json, root};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The server writes, frontends read.
    Read,
    /// Frontends write, the server reads.
    Write,
}

/// The breaking differences from `old` to `new` (union schemas with `oneOf` on `tag`).
fn breaking_changes(old: &Value, new: &Value, tag: &str, dir: Direction) -> Vec<String> {
    let mut problems = Vec::new();
    let branches = |schema: &Value| -> Vec<(String, Value)> {
        schema["oneOf"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|b| {
                        Some((b["properties"][tag]["const"].as_str()?.to_owned(), b.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let new_branches = branches(new);
    for (name, old_branch) in branches(old) {
        let Some((_, new_branch)) = new_branches.iter().find(|(n, _)| *n == name) else {
            problems.push(format!("{tag} `{name}` was removed"));
            continue;
        };
        let mut seen = BTreeSet::new();
        compare(old, new, &old_branch, new_branch, dir, &name, &mut seen, &mut problems);
    }
    problems
}

/// The definition a `"#/$defs/Name"` reference names.
fn def_of<'a>(root: &'a Value, reference: &Value) -> &'a Value {
    let name = reference.as_str().and_then(|r| r.strip_prefix("#/$defs/")).unwrap_or_default();
    &root["$defs"][name]
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
        // An object that is only a `$ref` (or a `$ref` beside a tag) continues in the definition.
        Some(name) if schema.get("properties").is_none() => &root["$defs"][name],
        _ => schema,
    }
}

fn types(schema: &Value) -> Option<BTreeSet<String>> {
    match &schema["type"] {
        Value::String(t) => Some(BTreeSet::from([t.clone()])),
        Value::Array(ts) => Some(ts.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn compare(
    old_root: &Value,
    new_root: &Value,
    old: &Value,
    new: &Value,
    dir: Direction,
    path: &str,
    seen: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) {
    if !seen.insert(path.to_owned()) {
        return;
    }
    // A `$ref` beside properties (schemars' tagged variants): compare the definitions too.
    if old.get("properties").is_some() && old["$ref"].is_string() && new["$ref"].is_string() {
        let (o, n) = (def_of(old_root, &old["$ref"]), def_of(new_root, &new["$ref"]));
        compare(old_root, new_root, o, n, dir, &format!("{path}.$ref"), seen, problems);
    }
    let (old, new) = (resolve(old_root, old), resolve(new_root, new));
    if let (Some(o), Some(n)) = (types(old), types(new)) {
        let ok = match dir {
            Direction::Read => n.is_subset(&o),
            Direction::Write => o.is_subset(&n),
        };
        if !ok {
            problems.push(format!("{path}: type {o:?} became {n:?}"));
        }
    }
    let required = |s: &Value| -> BTreeSet<String> {
        s["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let (old_required, new_required) = (required(old), required(new));
    match dir {
        Direction::Read => {
            for f in old_required.difference(&new_required) {
                problems.push(format!("{path}.{f} is no longer always present"));
            }
        }
        Direction::Write => {
            for f in new_required.difference(&old_required) {
                problems.push(format!("{path}.{f} is a new required field"));
            }
        }
    }
    if let Some(props) = old["properties"].as_object() {
        for (name, old_prop) in props {
            match new["properties"].get(name) {
                None => problems.push(format!("{path}.{name} was removed")),
                Some(new_prop) => compare(
                    old_root,
                    new_root,
                    old_prop,
                    new_prop,
                    dir,
                    &format!("{path}.{name}"),
                    seen,
                    problems,
                ),
            }
        }
    }
    if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
        compare(
            old_root,
            new_root,
            old_items,
            new_items,
            dir,
            &format!("{path}[]"),
            seen,
            problems,
        );
    }
}

fn baseline(file: &str) -> Value {
    let path = root().join(format!("tests/fixtures/schema-baseline/v{PROTOCOL_VERSION}/{file}"));
    assert!(
        path.exists(),
        "no schema baseline for protocol version {PROTOCOL_VERSION}: run `cargo xtask schema-baseline` and commit {}",
        path.display()
    );
    read_json(&path)
}

#[test]
fn schemas_stay_compatible_within_a_protocol_version() {
    let mut problems = breaking_changes(
        &baseline("server-message.schema.json"),
        &committed_schema("server-message.schema.json"),
        "type",
        Direction::Read,
    );
    problems.extend(breaking_changes(
        &baseline("client-message.schema.json"),
        &committed_schema("client-message.schema.json"),
        "action",
        Direction::Write,
    ));
    assert!(
        problems.is_empty(),
        "these schema changes would break frontends built against protocol version {PROTOCOL_VERSION}:\n  {}\n\
         make the change additive (new optional fields, new message types), or raise \
         PROTOCOL_VERSION in crates/protocol and run `cargo xtask schema-baseline`",
        problems.join("\n  ")
    );
}

/// The check fails on each kind of breaking change, and passes an additive one.
#[test]
fn the_compatibility_check_catches_breaking_changes() {
    let server = committed_schema("server-message.schema.json");
    let client = committed_schema("client-message.schema.json");
    let mut removed = server.clone();
    removed["$defs"]["DownloadProgressUpdate"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("speed_mbps");
    assert!(
        breaking_changes(&server, &removed, "type", Direction::Read)
            .iter()
            .any(|p| p.contains("speed_mbps was removed"))
    );

    let mut optional = server.clone();
    optional["$defs"]["DownloadProgressUpdate"]["required"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f != "model_id");
    assert!(
        breaking_changes(&server, &optional, "type", Direction::Read)
            .iter()
            .any(|p| p.contains("model_id is no longer always present"))
    );

    let mut widened = server.clone();
    widened["$defs"]["DownloadRetry"]["properties"]["retry_count"]["type"] =
        json!(["integer", "string"]);
    assert!(
        breaking_changes(&server, &widened, "type", Direction::Read)
            .iter()
            .any(|p| p.contains("retry_count: type"))
    );

    let mut no_type = server.clone();
    no_type["oneOf"]
        .as_array_mut()
        .unwrap()
        .retain(|b| b["properties"]["type"]["const"] != "alert");
    assert!(
        breaking_changes(&server, &no_type, "type", Direction::Read)
            .iter()
            .any(|p| p.contains("`alert` was removed"))
    );

    let mut new_required = client.clone();
    new_required["$defs"]["SubscribeRequest"]["required"]
        .as_array_mut()
        .unwrap()
        .push(json!("max_hz"));
    assert!(
        breaking_changes(&client, &new_required, "action", Direction::Write)
            .iter()
            .any(|p| p.contains("max_hz is a new required field"))
    );

    let mut additive = server.clone();
    additive["$defs"]["DownloadRetry"]["properties"]["jitter_seconds"] = json!({"type": "number"});
    assert_eq!(breaking_changes(&server, &additive, "type", Direction::Read), Vec::<String>::new());
}
