//! Shared helpers for modelcast's end-to-end tests: paths, fixtures and the committed schemas.
//!
//! This package is `publish = false` and holds one test binary (`tests.rs`); it may depend on
//! every workspace crate, and nothing depends on it.

pub mod arbitrary;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `*.json` file in `tests/fixtures/<dir>`, as `(file stem, value)`, sorted by name.
pub fn fixtures(dir: &str) -> Vec<(String, Value)> {
    let dir = root().join("tests/fixtures").join(dir);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), read_json(&p)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The committed schema `schemas/<rel>`.
pub fn committed_schema(rel: &str) -> Value {
    read_json(&root().join("schemas").join(rel))
}

/// A validator for the committed schema `schemas/<rel>`, checking `format`s too.
pub fn validator(rel: &str) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&committed_schema(rel))
        .unwrap_or_else(|e| panic!("schemas/{rel} is not a valid schema: {e}"))
}
