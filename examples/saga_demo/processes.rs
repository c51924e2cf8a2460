//! The demo's processes: the three services and their relays, started,
//! killed and restarted as child processes with their logs in files.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use super::{Args, SERVICES};

/// One of the demo's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A service (`orders`, `inventory`, `payments`).
    App(&'static str),
    /// The relay of a service's database.
    Relay(&'static str),
}

impl Service {
    /// `orders`, `relay-orders`, …
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (relay, name) = s.strip_prefix("relay-").map_or((false, s), |n| (true, n));
        let Some(&name) = SERVICES.iter().find(|&&n| n == name) else {
            bail!("unknown process {s:?}: expected one of orders, inventory, payments, relay-orders, relay-inventory, relay-payments");
        };
        Ok(if relay { Service::Relay(name) } else { Service::App(name) })
    }
    /// How long it stays down when killed: a service the full `down_for`
    /// (its consumer group must see it gone, see `--down-for`); a relay,
    /// which is in no consumer group, at most a second.
    pub fn down_time(self, down_for: Duration) -> Duration {
        match self {
            Service::App(_) => down_for,
            Service::Relay(_) => down_for.min(Duration::from_secs(1)),
        }
    }

    /// `orders`, `relay-orders`, …
    pub fn label(self) -> String {
        match self {
            Service::App(n) => n.to_owned(),
            Service::Relay(n) => format!("relay-{n}"),
        }
    }
}

/// The running processes.
pub struct Services {
    args: Args,
    service_bin: PathBuf,
    relay_bin: PathBuf,
    log_dir: PathBuf,
    prefix: String,
    urls: BTreeMap<&'static str, String>,
    children: BTreeMap<String, Child>,
    /// Failpoints still armed, by process label (`OUTBOX_FAILPOINT` values).
    crashes: BTreeMap<String, String>,
    crashed: u32,
}

impl Services {
    pub fn new(args: &Args, bin_dir: &Path, log_dir: &Path, prefix: &str, urls: &[String]) -> anyhow::Result<Self> {
        let service_bin = bin_dir.join("saga_service");
        let relay_bin = super::child::relay_binary(bin_dir)?;
        if !service_bin.exists() {
            bail!("{} not found: build the examples first", service_bin.display());
        }
        Ok(Services {
            args: args.clone(),
            service_bin,
            relay_bin,
            log_dir: log_dir.to_owned(),
            prefix: prefix.to_owned(),
            urls: SERVICES.iter().copied().zip(urls.iter().cloned()).collect(),
            children: BTreeMap::new(),
            crashes: args
                .crash
                .iter()
                .map(|c| {
                    let (who, point) =
                        c.split_once(':').with_context(|| format!("--crash {c:?}: expected PROCESS:FAILPOINT"))?;
                    Ok((Service::parse(who)?.label(), point.to_owned()))
                })
                .collect::<anyhow::Result<_>>()?,
            crashed: 0,
        })
    }

    fn log(&self, which: Service) -> anyhow::Result<std::fs::File> {
        let path = self.log_dir.join(format!("{}.log", which.label()));
        Ok(OpenOptions::new().create(true).append(true).open(path)?)
    }

    /// Starts `which`; a service is started once it printed `ready`.
    pub async fn start(&mut self, which: Service) -> anyhow::Result<()> {
        let a = &self.args;
        let mut command = match which {
            Service::App(name) => {
                let mut c = Command::new(&self.service_bin);
                c.arg("--role").arg(name);
                c.args(["--prefix", &self.prefix, "--brokers", &a.brokers]);
                c.args(["--orders", &a.orders.to_string(), "--rate", &a.rate.to_string()]);
                c.args(["--shortage-percent", &a.shortage_percent.to_string()]);
                c.args(["--decline-percent", &a.decline_percent.to_string()]);
                c.args(["--timeout-percent", &a.timeout_percent.to_string(), "--seed", &a.seed.to_string()]);
                let deadline = humantime::format_duration(a.step_deadline).to_string();
                c.args(["--step-deadline", &deadline, "--slow-delay", &deadline]);
                c.arg("--database-url").arg(&self.urls[name]);
                c.stdout(Stdio::piped());
                c.env("RUST_LOG", std::env::var("SAGA_DEMO_LOG").unwrap_or_else(|_| "warn,outbox_core=info".into()));
                c
            }
            Service::Relay(name) => {
                let mut c = Command::new(&self.relay_bin);
                c.arg("run").args(["--kafka-brokers", &a.brokers, "--http-addr", "127.0.0.1:0"]);
                c.args(["--create-topics", "--topic-partitions", "3", "--lease-timeout", "3s"]);
                c.arg("--database-url").arg(&self.urls[name]);
                c.stdout(self.log(which)?);
                c.env("RUST_LOG", "warn,librdkafka=error");
                c
            }
        };
        command.stderr(self.log(which)?).kill_on_drop(true).env_remove("OUTBOX_FAILPOINT");
        if let Some(point) = self.crashes.get(&which.label()) {
            command.env("OUTBOX_FAILPOINT", point);
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", which.label()))?;
        if let Service::App(_) = which {
            let what = format!("{} (logs in {})", which.label(), self.log_dir.display());
            super::child::wait_ready(&mut child, &what).await?;
        }
        self.children.insert(which.label(), child);
        Ok(())
    }

    /// SIGKILLs `which` and reaps it.
    pub fn kill(&mut self, which: Service) -> anyhow::Result<()> {
        let mut child =
            self.children.remove(&which.label()).with_context(|| format!("{} is not running", which.label()))?;
        child.start_kill()?;
        Ok(())
    }

    /// Restarts a process that aborted at its armed failpoint (the crash
    /// `--crash` asked for); fails if a process exited any other way.
    pub async fn supervise(&mut self) -> anyhow::Result<()> {
        let mut crashed = Vec::new();
        for (label, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                if self.crashes.remove(label).is_none() {
                    bail!(
                        "{label} exited on its own ({status}); see {}",
                        self.log_dir.join(format!("{label}.log")).display()
                    );
                }
                println!("== {label} crashed at its failpoint ({status}); restarting it");
                crashed.push(label.clone());
            }
        }
        let mut down = Duration::ZERO;
        for label in &crashed {
            down = down.max(Service::parse(label)?.down_time(self.args.down_for));
        }
        tokio::time::sleep(down).await;
        for label in crashed {
            self.children.remove(&label);
            self.start(Service::parse(&label)?).await?;
            self.crashed += 1;
        }
        Ok(())
    }

    /// Processes that crashed at a failpoint and were restarted.
    pub fn crashed(&self) -> u32 {
        self.crashed
    }

    /// Stops every process (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(&mut self) {
        super::child::stop_all(std::mem::take(&mut self.children)).await;
    }
}
