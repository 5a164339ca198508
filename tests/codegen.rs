//! The committed `schemas/` are exactly what `cargo xtask codegen` would write.

use modelcast_tests::root;

#[test]
fn committed_schemas_are_fresh() {
    let mut stale = Vec::new();
    let expected = modelcast_protocol::schema::files();
    for (rel, contents) in &expected {
        let path = root().join("schemas").join(rel);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(contents.as_str()) {
            stale.push(rel.clone());
        }
    }
    for entry in std::fs::read_dir(root().join("schemas/messages")).unwrap() {
        let rel = format!("messages/{}", entry.unwrap().file_name().to_string_lossy());
        if !expected.contains_key(&rel) {
            stale.push(rel);
        }
    }
    assert!(
        stale.is_empty(),
        "stale or extra files under schemas/: {stale:?}; run `cargo xtask codegen` and commit the updated files"
    );
}

#[test]
fn generation_is_deterministic_and_ends_with_newline() {
    let a = modelcast_protocol::schema::files();
    let b = modelcast_protocol::schema::files();
    assert_eq!(a, b);
    assert!(a.values().all(|text| text.ends_with("}\n")));
    // The two unions, one file per message type, the topic map and the OpenAPI document.
    assert_eq!(a.len(), 2 + modelcast_protocol::ServerMessage::TYPES.len() + 2);
    let topics: serde_json::Value = serde_json::from_str(&a["topics.json"]).unwrap();
    assert_eq!(topics["topics"]["download_progress"][0], "download_progress_update");
    assert!(topics["control"].as_array().unwrap().iter().any(|t| t == "welcome"));
}
