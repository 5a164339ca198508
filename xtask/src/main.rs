//! `cargo xtask`: modelcast's developer tasks.
//!
//! - `cargo xtask codegen [--check]` writes (or checks) the generated files under `schemas/`.
//!
//! xtask may depend on any workspace crate; nothing depends on xtask.

mod codegen;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  codegen [--check]   write the generated JSON Schemas under schemas/
                      (--check: fail, naming each stale file, if they differ)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["codegen"] => codegen::run(codegen::Mode::Write),
        ["codegen", "--check"] => codegen::run(codegen::Mode::Check),
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
