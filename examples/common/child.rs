//! Child processes of the example drivers (saga demo, flash sale, rooms):
//! finding the relay binary, waiting for a child's `ready` line, stopping
//! children. Included with `#[path = "../common/child.rs"] mod child;`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// `outbox-relay` in `dir` (the examples' directory) or the one above it.
pub fn relay_binary(dir: &Path) -> anyhow::Result<PathBuf> {
    [dir.join("outbox-relay"), dir.join("../outbox-relay")].into_iter().find(|p| p.exists()).with_context(|| {
        format!("outbox-relay not found next to {}: build it first (cargo build --bins)", dir.display())
    })
}

/// The directory this program runs from.
pub fn own_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.parent().context("the program has no directory")?.to_path_buf())
}

/// Waits up to a minute for `child` (spawned with a piped stdout) to print
/// `ready`, then keeps draining its stdout so it never writes into a closed pipe.
pub async fn wait_ready(child: &mut Child, what: &str) -> anyhow::Result<()> {
    let mut lines = BufReader::new(child.stdout.take().context("stdout is not piped")?).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "ready" {
                return Ok(true);
            }
        }
        Ok::<_, std::io::Error>(false)
    })
    .await;
    if !matches!(ready, Ok(Ok(true))) {
        bail!("{what} did not become ready (see its log)");
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(())
}

/// Stops `children`: SIGTERM to all, then SIGKILL to any still running 10 s later.
pub async fn stop_all(children: impl IntoIterator<Item = (String, Child)>) {
    let children: Vec<(String, Child)> = children.into_iter().collect();
    for (_, child) in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }
    for (label, mut child) in children {
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            eprintln!("{label} did not stop on SIGTERM: killing it");
            let _ = child.kill().await;
        }
    }
}
