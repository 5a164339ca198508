//! `cargo xtask test`: every test suite of the repository, on a machine that may have nothing
//! but rustup. What the tests need from the system (redis-server, nginx, Chromium, openssl,
//! Node.js, Python) is checked first: installed with Debian's apt-get where that is possible
//! (root), and otherwise the run stops before any test with one message naming every missing
//! tool and the command that installs them.
//!
//! The suites, in order: the Rust tests (cargo-nextest when installed, which runs each test in
//! a process of its own, else `cargo test`), the schemas in Ajv's strict mode, the Autobahn
//! TestSuite (the server's closing handshake; the frame layer's whole suite through its echo
//! server), the TypeScript client and the Python package.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::root;

/// A tool the tests need: the command that proves it is there, the Debian package that
/// provides it, and what needs it.
struct Tool {
    command: &'static str,
    package: &'static str,
    needed_by: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool { command: "redis-server", package: "redis-server", needed_by: "the cluster tests" },
    Tool { command: "redis-cli", package: "redis-server", needed_by: "the cluster tests" },
    Tool { command: "nginx", package: "nginx", needed_by: "the deploy test" },
    Tool { command: "chromium", package: "chromium", needed_by: "the browser tests" },
    Tool { command: "openssl", package: "openssl", needed_by: "the key and TLS tests" },
    Tool { command: "node", package: "nodejs", needed_by: "the TypeScript client, Ajv" },
    Tool { command: "npm", package: "npm", needed_by: "the TypeScript client, Ajv" },
    Tool { command: "python3", package: "python3", needed_by: "Autobahn, the Python package" },
];

/// The suites a run may be limited to (`--only`).
const SUITES: &[&str] = &["rust", "schemas", "autobahn", "typescript", "python"];

/// Runs the suites (`--only SUITE[,SUITE]` for some of them).
pub(crate) fn run(args: &[&str]) -> Result<()> {
    let only: Vec<&str> = match args {
        [] => SUITES.to_vec(),
        ["--only", list] => list.split(',').collect(),
        _ => bail!("usage: cargo xtask test [--only {}]", SUITES.join(",")),
    };
    if let Some(unknown) = only.iter().find(|s| !SUITES.contains(s)) {
        bail!("unknown suite `{unknown}`; the suites are {}", SUITES.join(", "));
    }
    prerequisites()?;
    let started = Instant::now();
    for suite in &only {
        section(&format!("{suite} tests"));
        let took = Instant::now();
        match *suite {
            "rust" => rust()?,
            "schemas" => schemas()?,
            "autobahn" => autobahn()?,
            "typescript" => typescript()?,
            _ => python()?,
        }
        report(&format!("{suite}: passed in {:.0} s", took.elapsed().as_secs_f64()));
    }
    report(&format!("all passed in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(())
}

#[allow(clippy::print_stdout)]
fn section(title: &str) {
    println!("\n==> {title}");
}

#[allow(clippy::print_stdout)]
fn report(line: &str) {
    println!("{line}");
}

/// Whether `command` runs from `PATH` (or, for nginx, Debian's /usr/sbin).
fn present(command: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found || (command == "nginx" && Path::new("/usr/sbin/nginx").exists())
}

/// Every tool the tests need is there: missing ones installed with apt-get when this runs as
/// root on Debian, else one error naming them all and the command that installs them.
fn prerequisites() -> Result<()> {
    let mut missing: Vec<&Tool> = TOOLS.iter().filter(|t| !present(t.command)).collect();
    let venv = Command::new("python3").args(["-c", "import ensurepip, venv"]).output();
    let venv_missing = present("python3") && !venv.is_ok_and(|o| o.status.success());
    let mut packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    if venv_missing {
        packages.push("python3-venv");
    }
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y {}", packages.join(" "));
    if is_root() && present("apt-get") {
        section(&format!("installing what the tests need: {install}"));
        let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
        let installed = Command::new("sh")
            .args(["-c", &format!("DEBIAN_FRONTEND=noninteractive {install} -qq")])
            .status()?;
        ensure!(update.success() && installed.success(), "`{install}` failed");
        missing.retain(|t| !present(t.command));
        if missing.is_empty() {
            return Ok(());
        }
    }
    let list: Vec<String> =
        missing.iter().map(|t| format!("  {} (for {})", t.command, t.needed_by)).collect();
    let venv = if venv_missing { "\n  python3's venv module (for a Python venv)" } else { "" };
    bail!(
        "the tests need these, and none of the tests ran:\n{}{venv}\ninstall them (Debian): sudo {install}",
        list.join("\n")
    )
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs `program args…` in `dir` (relative to the root); an error naming it unless it passes.
fn step(dir: &str, program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(root().join(dir))
        .status()
        .with_context(|| format!("running {program}"))?;
    ensure!(status.success(), "`{program} {}` failed (in {dir})", args.join(" "));
    Ok(())
}

/// The Rust tests: cargo-nextest when installed, else `cargo test`. The push tests' Web Push
/// stand-in needs its Python packages first (`target/push-venv`, where `tests/push_util.rs`
/// looks).
fn rust() -> Result<()> {
    venv("push-venv", &["-r", "tests/push/requirements.txt"])?;
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if nextest {
        step(".", "cargo", &["nextest", "run", "--workspace", "--locked", "--no-fail-fast"])
    } else {
        step(".", "cargo", &["test", "--workspace", "--locked", "--no-fail-fast"])
    }
}

/// The schemas compile in Ajv's default (strict) mode and validate the fixtures.
fn schemas() -> Result<()> {
    step("tests/schemas-js", "npm", &["ci", "--no-audit", "--no-fund", "--loglevel=error"])?;
    step("tests/schemas-js", "node", &["check.mjs"])
}

/// A Python venv under target/ with `requirements` installed (pip's arguments); its python.
fn venv(name: &str, requirements: &[&str]) -> Result<String> {
    let dir = format!("target/{name}");
    if !root().join(&dir).join("bin/python").exists() {
        step(".", "python3", &["-m", "venv", &dir])?;
    }
    let pip = format!("{dir}/bin/pip");
    let mut args = vec!["install", "--quiet", "--disable-pip-version-check"];
    args.extend_from_slice(requirements);
    step(".", &pip, &args)?;
    Ok(root().join(dir).join("bin/python").display().to_string())
}

/// A free port on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A process that is killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args…` and waits until it accepts connections on `port`.
fn serve(program: &str, args: &[&str], port: u16) -> Result<Running> {
    let child = Command::new(root().join(program))
        .args(args)
        .current_dir(root())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "{program} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(running)
}

/// Autobahn: the server's closing handshake (cases 2–7), and the frame layer's whole suite
/// (1–13) through its echo server.
fn autobahn() -> Result<()> {
    let python = venv("autobahn-venv", &["-r", "tests/autobahn/requirements.txt"])?;
    step(".", "cargo", &["build", "--locked", "-p", "modelcast-server"])?;
    let port = free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let limits = ["--rate-limit", "100000", "--rate-burst", "100000", "--abuse-limit", "100000"];
    let mut args = vec!["--bind", &bind, "--connect-rate", "100000", "--log", "warn"];
    args.extend_from_slice(&limits);
    let server = serve("target/debug/modelcast", &args, port)?;
    step(".", &python, &["tests/autobahn/closing.py", &format!("ws://{bind}/ws")])?;
    drop(server);
    step(".", "cargo", &["build", "--locked", "-p", "modelcast-ws", "--example", "echo"])?;
    let port = free_port()?;
    let bind = format!("127.0.0.1:{port}");
    let echo = serve("target/debug/examples/echo", &[&bind], port)?;
    step(".", &python, &["tests/autobahn/suite.py", &format!("ws://{bind}")])?;
    drop(echo);
    Ok(())
}

/// The TypeScript client: generated types and the dashboard bundle up to date, its tests
/// against the binary and in headless Chromium.
fn typescript() -> Result<()> {
    step(".", "cargo", &["build", "--locked", "-p", "modelcast-server"])?;
    let dir = "clients/typescript";
    step(dir, "npm", &["ci", "--no-audit", "--no-fund", "--loglevel=error"])?;
    step(dir, "npm", &["run", "check"])?;
    step(dir, "npm", &["test"])
}

/// The Python package: generated models up to date, ruff, pytest against the binary.
fn python() -> Result<()> {
    step(".", "cargo", &["build", "--locked", "-p", "modelcast-server"])?;
    let python = venv("python-venv", &["-e", "clients/python[dev]"])?;
    let dir = "clients/python";
    step(dir, &python, &["scripts/codegen.py", "--check"])?;
    step(dir, &python, &["-m", "ruff", "check", "."])?;
    step(dir, &python, &["-m", "ruff", "format", "--check", "."])?;
    step(dir, &python, &["-m", "pytest", "-q"])
}
