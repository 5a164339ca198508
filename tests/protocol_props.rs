//! Property tests: every value the committed schemas allow is read by the Rust types, written
//! back unchanged, and what the types write validates.

use modelcast_protocol::{ClientMessage, ServerFrame, ServerMessage};
use modelcast_tests::arbitrary::value_for;
use modelcast_tests::{committed_schema, validator};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

fn config() -> Config {
    Config { cases: 512, failure_persistence: None, ..Config::default() }
}

fn run(schema_file: &str, check: impl Fn(Value) -> Result<(), TestCaseError>) {
    let schema = committed_schema(schema_file);
    let strategy = value_for(&schema, &schema);
    TestRunner::new(config())
        .run(&strategy, check)
        .unwrap_or_else(|e| panic!("{schema_file}: {e}"));
}

#[test]
fn any_server_frame_round_trips_and_validates() {
    let union = validator("server-message.schema.json");
    run("server-message.schema.json", |v| {
        let frame: ServerFrame = serde_json::from_value(v.clone())
            .map_err(|e| TestCaseError::fail(format!("schema-valid frame rejected: {e}\n{v}")))?;
        let back = serde_json::to_value(&frame).unwrap();
        prop_assert_eq!(&back, &v);
        let again: ServerFrame = serde_json::from_value(back.clone()).unwrap();
        prop_assert_eq!(&again, &frame);
        prop_assert!(union.is_valid(&back), "written frame does not validate: {}", back);
        // A reader of only `type`/`data` reads it too.
        let plain: ServerMessage = serde_json::from_value(back).unwrap();
        prop_assert_eq!(plain, frame.message);
        Ok(())
    });
}

#[test]
fn every_message_type_schema_round_trips_through_the_union() {
    let union = validator("server-message.schema.json");
    for ty in ServerMessage::TYPES {
        let file = format!("messages/{ty}.schema.json");
        let own = validator(&file);
        run(&file, |v| {
            let frame: ServerFrame = serde_json::from_value(v.clone())
                .map_err(|e| TestCaseError::fail(format!("rejected: {e}\n{v}")))?;
            prop_assert_eq!(frame.message.type_name(), *ty);
            let back = serde_json::to_value(&frame).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert!(
                union.is_valid(&back) && own.is_valid(&back),
                "does not validate: {}",
                back
            );
            Ok(())
        });
    }
}

#[test]
fn any_client_message_round_trips_and_validates() {
    let schema = validator("client-message.schema.json");
    run("client-message.schema.json", |v| {
        let msg: ClientMessage = serde_json::from_value(v.clone())
            .map_err(|e| TestCaseError::fail(format!("schema-valid message rejected: {e}\n{v}")))?;
        let back = serde_json::to_value(&msg).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert!(schema.is_valid(&back));
        Ok(())
    });
}
