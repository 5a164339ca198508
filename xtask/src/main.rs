//! `cargo xtask`: modelcast's developer tasks.
//!
//! - `cargo xtask codegen [--check]` writes (or checks) the generated files under `schemas/`.
//!
//! xtask may depend on any workspace crate; nothing depends on xtask.

mod codegen;
mod loadtest;

use std::process::ExitCode;

pub(crate) const USAGE: &str = "usage: cargo xtask <task>

tasks:
  codegen [--check]   write the generated JSON Schemas under schemas/
                      (--check: fail, naming each stale file, if they differ)
  schema-baseline     freeze schemas/ as the compatibility baseline of the current
                      protocol version (after raising PROTOCOL_VERSION)
  loadtest [options]  start the release server (pinned to core 0) and load it from core 1
      --subscribers N   subscriber connections (default 1000)
      --rate R          messages per second in the steady phase (default 200)
      --seconds S       length of each phase (default 10)
      --idle N          only open N idle subscribed connections and report RSS
      --no-pin          do not pin server and generator to cores (no taskset)";

/// The repository root.
pub(crate) fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_owned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["codegen"] => codegen::run(codegen::Mode::Write),
        ["codegen", "--check"] => codegen::run(codegen::Mode::Check),
        ["schema-baseline"] => codegen::baseline(),
        ["loadtest", rest @ ..] => {
            loadtest::Options::parse(rest).and_then(|o| loadtest::run(o, rest))
        }
        ["help" | "--help" | "-h"] => {
            println_usage();
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln_usage();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn println_usage() {
    println!("{USAGE}");
}

#[allow(clippy::print_stderr)]
fn eprintln_usage() {
    eprintln!("{USAGE}");
}
