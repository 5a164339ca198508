//! `cargo xtask callgrind`: instructions executed by a fixed fan-out workload
//! (`crates/hub/examples/fanout_workload.rs`) under `valgrind --tool=callgrind`. Unlike time,
//! the count does not drift with what else the machine does, so it compares two versions of
//! the hub's per-delivery path exactly.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::root;

/// Builds the workload in release and prints the instructions it executed.
pub(crate) fn run() -> Result<()> {
    crate::cargo(
        &["build", "--release", "-p", "modelcast-hub", "--example", "fanout_workload"],
        "building the workload",
    )?;
    let dir = std::env::temp_dir().join(format!("modelcast-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out_file = dir.join("callgrind.out");
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(root().join("target/release/examples/fanout_workload"))
        .output()
        .context("running valgrind (apt-get install valgrind)")?;
    let _ = std::fs::remove_dir_all(&dir);
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("the workload failed under valgrind:\n{log}");
    }
    let total = log
        .lines()
        .find_map(|l| l.split_once("Collected :").map(|(_, n)| n.trim().to_owned()))
        .context("valgrind printed no instruction count")?;
    #[allow(clippy::print_stdout)]
    {
        print!("{}", String::from_utf8_lossy(&output.stdout));
        println!("instructions: {total}");
    }
    Ok(())
}
