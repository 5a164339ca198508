//! `cargo xtask codegen [--check]`: `schemas/` from `modelcast_protocol::schema`.

use std::fs;

use anyhow::{Context, Result, bail};

/// Write the files, or only compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Write every generated file and remove stale generated files.
    Write,
    /// Fail if any file is missing, different or stale.
    Check,
}

pub(crate) fn run(mode: Mode) -> Result<()> {
    let schemas = crate::root().join("schemas");
    let expected = modelcast_protocol::schema::files();
    let mut problems = Vec::new();

    for (rel, contents) in &expected {
        let path = schemas.join(rel);
        let current = fs::read_to_string(&path).ok();
        if current.as_deref() == Some(contents.as_str()) {
            continue;
        }
        match mode {
            Mode::Write => {
                fs::create_dir_all(path.parent().expect("files live in a folder"))?;
                fs::write(&path, contents)
                    .with_context(|| format!("writing {}", path.display()))?;
                say(&format!("wrote schemas/{rel}"));
            }
            Mode::Check => problems.push(format!(
                "schemas/{rel} is {}",
                if current.is_some() { "stale" } else { "missing" }
            )),
        }
    }

    // Generated files that the protocol no longer produces.
    let messages = schemas.join("messages");
    if messages.is_dir() {
        for entry in fs::read_dir(&messages)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let rel = format!("messages/{name}");
            if name.ends_with(".schema.json") && !expected.contains_key(&rel) {
                match mode {
                    Mode::Write => {
                        fs::remove_file(messages.join(&name))?;
                        say(&format!("removed schemas/{rel}"));
                    }
                    Mode::Check => problems.push(format!("schemas/{rel} is no longer generated")),
                }
            }
        }
    }

    if !problems.is_empty() {
        bail!(
            "generated files are out of date:\n  {}\nrun `cargo xtask codegen` and commit the updated files",
            problems.join("\n  ")
        );
    }
    if mode == Mode::Check {
        say(&format!("schemas/ is up to date ({} files)", expected.len()));
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("{line}");
}

/// `cargo xtask schema-baseline`: freezes the current union schemas as the compatibility
/// baseline of the current protocol version. Refuses to overwrite an existing baseline: a
/// released version's contract does not change.
pub(crate) fn baseline() -> Result<()> {
    let version = modelcast_protocol::PROTOCOL_VERSION;
    let dir = crate::root().join(format!("tests/fixtures/schema-baseline/v{version}"));
    if dir.exists() {
        bail!(
            "{} already exists: the baseline of protocol version {version} is frozen; raise \
             PROTOCOL_VERSION in crates/protocol for a breaking change",
            dir.display()
        );
    }
    fs::create_dir_all(&dir)?;
    let files = modelcast_protocol::schema::files();
    for name in ["server-message.schema.json", "client-message.schema.json"] {
        fs::write(dir.join(name), &files[name])?;
        say(&format!("wrote {}", dir.join(name).display()));
    }
    Ok(())
}
