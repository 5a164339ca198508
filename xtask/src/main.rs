//! `cargo xtask`: modelcast's developer tasks.
//!
//! - `cargo xtask test [--only SUITE,…]` runs every test suite (installing what they need).
//! - `cargo xtask codegen [--check]` writes (or checks) the generated files under `schemas/`.
//! - `cargo xtask cluster [--nodes N] [--demo]` runs a private Redis and N nodes.
//! - `cargo xtask loadtest` measures the release server (or, `--peer nats`, NATS under the same
//!   load); `cargo xtask compare` runs both side by side in one table.
//! - `cargo xtask wire` measures permessage-deflate on the demo's frames.
//! - `cargo xtask callgrind` counts the instructions of a fixed fan-out workload.
//!
//! xtask may depend on any workspace crate; nothing depends on xtask.

mod callgrind;
mod cluster;
mod codegen;
mod compare;
mod loadtest;
mod loadtest_nats;
mod loadtest_push;
mod test;
mod wire;

use std::process::ExitCode;

pub(crate) const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test [--only SUITES]
                      every test suite: rust, schemas, autobahn, typescript, python
                      (--only a comma list); what they need from the system is installed
                      with apt-get when run as root, else named with the command to run
  codegen [--check]   write the generated JSON Schemas under schemas/
                      (--check: fail, naming each stale file, if they differ)
  schema-baseline     freeze schemas/ as the compatibility baseline of the current
                      protocol version (after raising PROTOCOL_VERSION)
  cluster [options]   a private Redis and N nodes on consecutive ports; Ctrl-C stops all
      --nodes N         how many nodes (default 3)
      --port P          the first node's port (default 8000)
      --demo            node0 publishes the demo
      --help            this part of the usage
  loadtest [options]  start the release server (pinned to core 0) and load it from core 1
      --subscribers N   subscriber connections (default 1000)
      --rate R          messages per second in the steady phase (default 200)
      --seconds S       length of each phase (default 10)
      --idle N          only open N idle subscribed connections and report RSS
      --per-request N   messages per publish request (default 1, as backends publish)
      --publishers P    concurrent publisher connections (default 1)
      --ws-publish      publish over WebSocket channels (action publish) instead of HTTP
      --sse             subscribers read Server-Sent Events (GET /sse) instead of WebSockets
      --compress        subscribers offer permessage-deflate (and inflate what comes compressed)
      --tls             TLS on the server's port (a CA and certificate made for the run):
                        subscribers over wss://, publishers over https://
      --push N          push on (Web Push, tokens on every connection), N users' browsers
                        registered to a local sink, alerts of a pushed level (0: no device)
      --no-pin          do not pin server and generator to cores (no taskset)
      --peer nats       the same load against nats-server (Debian; its WebSocket listener,
                        publishing with PUB over WebSocket: compare with --ws-publish)
      --redis-url URL   run the server as a cluster node on this Redis (a fresh key prefix)
      --redis-cluster SEEDS | --redis-sentinels LIST --redis-master NAME
                        the nodes on this Redis Cluster or Sentinel setup instead
      --nodes N         N > 1: a private Redis and N nodes; publish on node 0, subscribers
                        on the others (every delivery crosses Redis); CPU/RSS summed
      --sources K       clients connect from 127.0.0.1 … 127.0.0.K
  compare [options]   modelcast (HTTP and WebSocket publish) and NATS side by side: for each
                      rate, `loadtest` on each in turn, rounds A B C A B C; one table
      --rates LIST      steady-phase rates (default 20,200,1000); each run also goes flat out
      --seconds S       length of each phase (default 10)
      --subscribers N   subscriber connections (default 1000)
      --rounds R        rounds (default 2)
  wire [--seconds S]  what permessage-deflate saves on the demo's frames, by type, by size
                      and by MODELCAST_COMPRESSION_MIN_SIZE (default 30 s of the demo)
  callgrind           instructions a fixed fan-out workload executes (valgrind), to
                      compare two versions of the hub's delivery path exactly";

/// Runs `cargo args…` in the repository root; an error naming `what` unless it succeeds.
pub(crate) fn cargo(args: &[&str], what: &str) -> anyhow::Result<()> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(root())
            .status()
            .map_err(|err| anyhow::anyhow!("running cargo for {what}: {err}"))?;
    anyhow::ensure!(status.success(), "{what} failed");
    Ok(())
}

/// When this xtask is a debug build, runs `xtask subcommand args…` again as a release build
/// (a measurement must not time unoptimized code) and returns `true`; `false` when already
/// optimized.
pub(crate) fn rerun_optimized(subcommand: &str, args: &[&str]) -> anyhow::Result<bool> {
    if !cfg!(debug_assertions) {
        return Ok(false);
    }
    let mut all = vec!["run", "--release", "--quiet", "-p", "xtask", "--", subcommand];
    all.extend_from_slice(args);
    cargo(&all, &format!("the release build of `xtask {subcommand}`"))?;
    Ok(true)
}

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
        ["cluster", rest @ ..] => match cluster::Options::parse(rest) {
            Ok(Some(options)) => cluster::run(options),
            Ok(None) => Ok(()), // --help
            Err(err) => Err(err),
        },
        ["loadtest", rest @ ..] => {
            loadtest::Options::parse(rest).and_then(|o| loadtest::run(o, rest))
        }
        ["compare", rest @ ..] => compare::Options::parse(rest).and_then(compare::run),
        ["test", rest @ ..] => test::run(rest),
        ["callgrind"] => callgrind::run(),
        ["wire", rest @ ..] => wire::run(rest),
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
