//! A private tansu broker a test may pause (SIGSTOP) and resume, or put
//! behind a proxy.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A private tansu broker this test may pause (SIGSTOP) and resume.
/// `None` when the tansu binary is not installed (with an own Kafka).
pub struct PrivateBroker {
    child: Child,
    pub brokers: String,
}

impl PrivateBroker {
    pub fn start() -> Option<PrivateBroker> {
        let port = free_port();
        Self::start_advertised(port, port)
    }

    /// A broker listening on `port` that tells clients to connect to
    /// `advertised` (a proxy in front of it); `brokers` is the advertised one.
    pub fn start_advertised(port: u16, advertised: u16) -> Option<PrivateBroker> {
        let tansu = std::env::var("TANSU_BIN").ok().map(PathBuf::from).or_else(|| {
            let home = std::env::var("HOME").ok()?;
            // TANSU_BIN is scripts/services.sh's patched build (scripts/tansu/);
            // without it, whatever tansu is installed.
            let installed = PathBuf::from(home).join(".cargo/bin/tansu");
            installed.exists().then_some(installed).or_else(|| which("tansu"))
        })?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{advertised}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "private tansu did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(PrivateBroker { child, brokers: format!("127.0.0.1:{advertised}") })
    }

    pub fn pause(&self) {
        Command::new("kill").args(["-STOP", &self.child.id().to_string()]).status().unwrap();
    }

    pub fn resume(&self) {
        Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.exists()))
}
