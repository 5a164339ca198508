//! `cargo xtask wire`: what permessage-deflate saves on the demo's frames, and where it stops
//! paying.
//!
//! Starts the release server with `--demo` and `--compression-min-size 0` (every frame that
//! deflate makes smaller goes compressed), subscribes one compressing connection to every topic
//! for `--seconds` (default 30) and records each frame: its text, its bytes on the wire, whether
//! it came compressed. Prints the frames by type and by size (bytes plain and compressed, and
//! what one `modelcast_ws::deflate` of each costs, timed here), then what each
//! `MODELCAST_COMPRESSION_MIN_SIZE` would have put on the wire for this mix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use modelcast_protocol::Topic;

use crate::loadtest::DeflateReader;

/// One frame as received.
struct Seen {
    kind: String,
    text: String,
    /// Bytes on the wire (header included).
    wire: usize,
}

impl Seen {
    /// Bytes on the wire had it gone uncompressed.
    fn plain(&self) -> usize {
        self.text.len() + header(self.text.len())
    }
}

/// The header of an unmasked server frame carrying `len` bytes.
fn header(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..65536 => 4,
        _ => 10,
    }
}

/// Runs the measurement (re-running itself optimized when built for debugging).
pub(crate) fn run(args: &[&str]) -> Result<()> {
    let mut seconds = 30u64;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--seconds" => {
                seconds = it.next().context("--seconds needs a value")?.parse()?;
            }
            other => bail!("unknown wire option `{other}`\n{}", crate::USAGE),
        }
    }
    // deflate is timed here: time the optimized build.
    if crate::rerun_optimized("wire", args)? {
        return Ok(());
    }
    crate::cargo(
        &["build", "--release", "--quiet", "-p", "modelcast-server", "--bin", "modelcast"],
        "building modelcast",
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut server = Command::new(crate::root().join("target/release/modelcast"))
        .args(["--bind", &addr.to_string(), "--demo", "--compression-min-size", "0"])
        .env("MODELCAST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .context("starting modelcast")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let seen = runtime.block_on(record(addr, Duration::from_secs(seconds)));
    let _ = server.kill();
    let _ = server.wait();
    report(&seen?, seconds);
    Ok(())
}

async fn record(addr: SocketAddr, period: Duration) -> Result<Vec<Seen>> {
    let mut stream = None;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stream = stream.context("the server did not start listening")?;
    let mut ws = DeflateReader::handshake(stream, addr, "/ws/wire").await?;
    for topic in Topic::ALL {
        let subscribe = format!(r#"{{"action":"subscribe","topic":"{topic}"}}"#);
        ws.send(0x1, subscribe.as_bytes()).await?;
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + period;
    while let Ok(Some((text, wire, _))) = tokio::time::timeout_at(deadline, ws.next_frame()).await {
        let kind = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        if !matches!(kind.as_str(), "welcome" | "subscribed") {
            seen.push(Seen { kind, text, wire });
        }
    }
    if seen.is_empty() {
        bail!("the demo sent nothing in {} s", period.as_secs());
    }
    Ok(seen)
}

/// Nanoseconds one `modelcast_ws::deflate` of `text` takes (best of a few rounds).
fn deflate_ns(text: &str) -> f64 {
    const N: u32 = 200;
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..N {
                std::hint::black_box(modelcast_ws::deflate(std::hint::black_box(text.as_bytes())));
            }
            start.elapsed().as_nanos() as f64 / N as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Sums of a group of frames.
#[derive(Default)]
struct Group {
    frames: usize,
    plain: usize,
    wire: usize,
    deflate_ns: f64,
}

impl Group {
    fn add(&mut self, s: &Seen, ns: f64) {
        self.frames += 1;
        self.plain += s.plain();
        self.wire += s.wire;
        self.deflate_ns += ns;
    }

    fn row(&self, name: &str) -> String {
        let n = self.frames as f64;
        format!(
            "| {name} | {} | {:.0} | {:.0} | {:.2} | {:.2} µs |",
            self.frames,
            self.plain as f64 / n,
            self.wire as f64 / n,
            self.wire as f64 / self.plain as f64,
            self.deflate_ns / n / 1000.0
        )
    }
}

#[allow(clippy::print_stdout)]
fn report(seen: &[Seen], seconds: u64) {
    let costs: Vec<f64> = seen.iter().map(|s| deflate_ns(&s.text)).collect();
    let head = "| frames | bytes plain (mean, header included) | compressed | ratio | one deflate |\n| --- | --- | --- | --- | --- | --- |";
    println!(
        "{} frames of the demo in {seconds} s, one connection subscribed to every topic\n",
        seen.len()
    );
    let mut by_kind: BTreeMap<&str, Group> = BTreeMap::new();
    for (s, ns) in seen.iter().zip(&costs) {
        by_kind.entry(&s.kind).or_default().add(s, *ns);
    }
    println!("| type {head}");
    for (kind, group) in &by_kind {
        println!("{}", group.row(kind));
    }
    let bounds = [0, 128, 192, 256, 384, 512, 1024, usize::MAX];
    let mut by_size: Vec<Group> = bounds.windows(2).map(|_| Group::default()).collect();
    for (s, ns) in seen.iter().zip(&costs) {
        let i = bounds.windows(2).position(|w| s.text.len() < w[1]).unwrap_or(0);
        by_size[i].add(s, *ns);
    }
    println!("\n| frame size (text bytes) {head}");
    for (w, group) in bounds.windows(2).zip(&by_size) {
        if group.frames > 0 {
            let name = match w[1] {
                usize::MAX => format!("{} and more", w[0]),
                end => format!("{}–{}", w[0], end - 1),
            };
            println!("{}", group.row(&name));
        }
    }
    let plain: usize = seen.iter().map(Seen::plain).sum();
    println!(
        "\n| MODELCAST_COMPRESSION_MIN_SIZE | bytes on the wire per frame | of plain | frames deflated | deflate time per 1,000 frames |\n| --- | --- | --- | --- | --- |"
    );
    println!("| compression off | {:.1} | 1.00 | 0% | 0 µs |", plain as f64 / seen.len() as f64);
    for threshold in [0, 64, 128, 192, 256, 384, 512] {
        let (mut wire, mut deflated, mut ns) = (0usize, 0usize, 0f64);
        for (s, cost) in seen.iter().zip(&costs) {
            if s.text.len() < threshold {
                wire += s.plain();
            } else {
                wire += s.wire;
                deflated += 1;
                ns += cost;
            }
        }
        println!(
            "| {threshold} | {:.1} | {:.2} | {:.0}% | {:.0} µs |",
            wire as f64 / seen.len() as f64,
            wire as f64 / plain as f64,
            deflated as f64 * 100.0 / seen.len() as f64,
            ns / seen.len() as f64
        );
    }
}
