//! `cargo xtask compare`: modelcast and NATS side by side, in one run on this machine.
//!
//! For each rate, and for `--rounds` rounds, runs `loadtest` three times in turn (A B C A B C:
//! drift on a shared machine falls on all three alike): modelcast with one message per HTTP
//! request, modelcast with WebSocket publish channels, and `nats-server` (`--peer nats`,
//! which publishes over WebSocket). Each run is a steady phase at the rate (latency) and a
//! flat-out phase (server CPU per delivery); every run's two rows are gathered into one
//! table, headed by the machine's kernel and CPU.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::loadtest::say;

/// Options of `compare`.
#[derive(Debug)]
pub(crate) struct Options {
    rates: Vec<u64>,
    seconds: u64,
    subscribers: usize,
    rounds: usize,
}

impl Options {
    pub(crate) fn parse(args: &[&str]) -> Result<Self> {
        let mut o =
            Options { rates: vec![20, 200, 1000], seconds: 10, subscribers: 1000, rounds: 2 };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| -> Result<&str> {
                it.next().copied().with_context(|| format!("{name} needs a value"))
            };
            let number = |name: &str, v: &str| -> Result<u64> {
                v.parse().with_context(|| format!("{name} takes a positive whole number, not {v}"))
            };
            match *arg {
                "--rates" => {
                    let list = value("--rates")?;
                    o.rates = list
                        .split(',')
                        .map(|r| number("--rates", r.trim()))
                        .collect::<Result<_>>()?;
                }
                "--seconds" => o.seconds = number("--seconds", value("--seconds")?)?,
                "--subscribers" => {
                    o.subscribers = number("--subscribers", value("--subscribers")?)? as usize;
                }
                "--rounds" => o.rounds = number("--rounds", value("--rounds")?)?.max(1) as usize,
                other => bail!("unknown compare option `{other}`\n{}", crate::USAGE),
            }
        }
        if o.rates.is_empty() || o.rates.contains(&0) {
            bail!("--rates takes messages per second above 0, e.g. 20,200,1000");
        }
        Ok(o)
    }
}

/// The three servers and ways of publishing compared.
const SETUPS: [(&str, &[&str]); 3] = [
    ("modelcast, HTTP publish", &[]),
    ("modelcast, WebSocket publish", &["--ws-publish"]),
    ("NATS, WebSocket publish", &["--peer", "nats"]),
];

pub(crate) fn run(o: Options) -> Result<()> {
    let kernel = output("uname", &["-sr"]).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let nats = output("nats-server", &["--version"]).context("nats-server is not installed")?;
    let mut rows = Vec::new();
    for round in 1..=o.rounds {
        for &rate in &o.rates {
            for (name, extra) in SETUPS {
                say(&format!("round {round}: {name}, {rate} msg/s…"));
                let exe = std::env::current_exe()?;
                let out = Command::new(exe)
                    .args(["loadtest", "--subscribers", &o.subscribers.to_string()])
                    .args(["--rate", &rate.to_string(), "--seconds", &o.seconds.to_string()])
                    .args(extra)
                    .stderr(Stdio::inherit())
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() {
                    bail!("loadtest ({name}, {rate} msg/s) failed:\n{text}");
                }
                let prefix = format!("| {} |", o.subscribers);
                for line in text.lines().filter(|l| l.starts_with(&prefix)) {
                    rows.push(format!("| {round} | {name} |{}", &line[prefix.len()..]));
                }
            }
        }
    }
    say(&format!(
        "\n{kernel}, {cpu}; {}; {} subscribers, one topic, one message per publish; \
         server pinned to core 0, generator to core 1\n\n\
         | round | server, publishing | publishing (detail) | phase | published (msg/s achieved) | deliveries/s | server CPU per delivery | p50 | p99 | max | max backlog (msgs/subscriber) | lost | dropped subscribers |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n{}",
        nats.trim(),
        o.subscribers,
        rows.join("\n")
    ));
    Ok(())
}

fn output(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
