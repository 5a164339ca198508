//! `cargo xtask cluster`: a private Redis and N modelcast nodes on consecutive ports, to see a
//! cluster in one command. Ctrl-C stops them all.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// `cluster` options.
#[derive(Debug)]
pub(crate) struct Options {
    nodes: usize,
    port: u16,
    demo: bool,
}

impl Options {
    pub(crate) fn parse(args: &[&str]) -> Result<Self> {
        let mut options = Options { nodes: 3, port: 8000, demo: false };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().context(format!("{arg} needs a value"));
            match *arg {
                "--nodes" => options.nodes = value()?.parse().context("--nodes: a number")?,
                "--port" => options.port = value()?.parse().context("--port: a port number")?,
                "--demo" => options.demo = true,
                other => bail!("unknown option {other}\n\n{}", crate::USAGE),
            }
        }
        if options.nodes == 0 {
            bail!("--nodes: at least 1");
        }
        Ok(options)
    }
}

/// Kills its processes when dropped (on Ctrl-C or an error).
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(options: Options) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "-p", "modelcast-server", "--bin", "modelcast"])
        .current_dir(crate::root())
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building modelcast failed");
    }
    let bin = crate::root().join("target/debug/modelcast");
    let redis_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let dir = std::env::temp_dir().join(format!("modelcast-cluster-{redis_port}"));
    std::fs::create_dir_all(&dir)?;
    let mut processes = Processes(Vec::new());
    let redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--maxmemory-policy", "noeviction"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (Debian package redis-server)")?;
    processes.0.push(redis);
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("redis://127.0.0.1:{redis_port}/0");
    println!("redis      {url} (data in {})", dir.display());
    for i in 0..options.nodes {
        let port = options.port + i as u16;
        let mut node = Command::new(&bin);
        node.args(["--bind", &format!("127.0.0.1:{port}"), "--redis-url", &url])
            .args(["--node-id", &format!("node{i}")]);
        if options.demo && i == 0 {
            node.arg("--demo");
        }
        processes.0.push(node.spawn().context("starting modelcast")?);
        let demo = if options.demo && i == 0 { " (publishing the demo)" } else { "" };
        println!("node{i}      http://127.0.0.1:{port}/  ws://127.0.0.1:{port}/ws{demo}");
    }
    println!("\nCtrl-C stops them all.");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = poll.tick() => {
                    for child in &mut processes.0 {
                        if let Some(status) = child.try_wait()? {
                            bail!("a process of the cluster exited ({status}); stopping the rest");
                        }
                    }
                }
            }
        }
    })
}
