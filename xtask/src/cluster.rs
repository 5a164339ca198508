//! `cargo xtask cluster`: a private Redis and N modelcast nodes on consecutive ports, to see a
//! cluster in one command. Ctrl-C stops them all, nodes first (each drains and stops its
//! engine), then Redis, and removes Redis's directory.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
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
    /// The options, or `None` when `--help` was asked for (the usage is printed).
    pub(crate) fn parse(args: &[&str]) -> Result<Option<Self>> {
        let mut options = Options { nodes: 3, port: 8000, demo: false };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().context(format!("{arg} needs a value"));
            match *arg {
                "--nodes" => options.nodes = value()?.parse().context("--nodes: a number")?,
                "--port" => options.port = value()?.parse().context("--port: a port number")?,
                "--demo" => options.demo = true,
                "--help" | "-h" => {
                    #[allow(clippy::print_stdout)]
                    {
                        println!("{USAGE}");
                    }
                    return Ok(None);
                }
                other => bail!("unknown option {other}\n\n{USAGE}"),
            }
        }
        if options.nodes == 0 {
            bail!("--nodes: at least 1");
        }
        Ok(Some(options))
    }
}

/// `cargo xtask cluster --help`.
const USAGE: &str = "usage: cargo xtask cluster [--nodes N] [--port P] [--demo]

A private redis-server (AOF in a temporary directory) and N modelcast nodes on 127.0.0.1,
ports P, P+1, …; Ctrl-C stops them all (nodes first, then Redis) and removes the directory.

  --nodes N   how many nodes (default 3)
  --port P    the first node's port (default 8000)
  --demo      node0 publishes the demo";

/// The cluster's processes, in their own process group (a terminal's Ctrl-C reaches only this
/// task, which stops them in order): nodes are asked to shut down (SIGTERM: they drain and stop
/// their engine while Redis still answers), then Redis is stopped and its directory removed.
/// On drop: on Ctrl-C, and on an error.
struct Cluster {
    redis: Option<Child>,
    nodes: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // Only a node still running is signalled (one that failed to start is gone already).
            if matches!(node.try_wait(), Ok(None)) {
                let _ = Command::new("kill").args(["-TERM", &node.id().to_string()]).status();
            }
        }
        for node in &mut self.nodes {
            let _ = node.wait();
        }
        if let Some(mut redis) = self.redis.take() {
            let _ = redis.kill();
            let _ = redis.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(options: Options) -> Result<()> {
    crate::cargo(
        &["build", "--quiet", "-p", "modelcast-server", "--bin", "modelcast"],
        "building modelcast",
    )?;
    let bin = crate::root().join("target/debug/modelcast");
    // Every node's port first: nothing is started when one is taken.
    let last = options.port.checked_add(options.nodes.saturating_sub(1) as u16);
    let last = last.context("--port: the nodes' ports would pass 65535")?;
    for port in options.port..=last {
        if let Err(err) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            bail!(
                "port {port} is taken ({err}): another program (the quick start's server?) listens \
                 there; stop it, or give the nodes other ports with --port (the first of \
                 {} consecutive ones)",
                options.nodes
            );
        }
    }
    let redis_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let dir = std::env::temp_dir().join(format!("modelcast-cluster-{redis_port}"));
    std::fs::create_dir_all(&dir)?;
    let mut cluster = Cluster { redis: None, nodes: Vec::new(), dir: dir.clone() };
    let redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--maxmemory-policy", "noeviction"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting redis-server (Debian package redis-server)")?;
    cluster.redis = Some(redis);
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
        cluster.nodes.push(node.process_group(0).spawn().context("starting modelcast")?);
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
                    for child in cluster.nodes.iter_mut().chain(&mut cluster.redis) {
                        if let Some(status) = child.try_wait()? {
                            bail!("a process of the cluster exited ({status}); stopping the rest");
                        }
                    }
                }
            }
        }
    })
}
