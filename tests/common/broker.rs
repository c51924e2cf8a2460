//! A private Apache Kafka node a test may pause (SIGSTOP) and resume, kill
//! and restart on the same log directory, or put behind a proxy: the jars
//! `scripts/services.sh` resolves (`KAFKA_LIBS`) and the settings of
//! `scripts/kafka/server.properties`, run with `java`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// Every private node's cluster id (each has a directory of its own):
/// URL-safe base64 of 16 bytes, as Kafka's storage tool wants it.
const CLUSTER_ID: &str = "b3V0Ym94LXRlc3RzLTAwMA";

/// A private broker. `None` from the constructors when Kafka's jars are not
/// installed (with an own Kafka and no `./scripts/test`).
pub struct PrivateBroker {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    pub brokers: String,
}

fn libs() -> Option<PathBuf> {
    let libs = std::env::var_os("KAFKA_LIBS").map(PathBuf::from).or_else(|| {
        let home = std::env::var_os("HOME")?;
        Some(PathBuf::from(home).join(".cache/outbox/kafka-4.4.0/libs"))
    })?;
    libs.join(".complete").exists().then_some(libs)
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka")
}

fn java(libs: &Path) -> Command {
    let mut cmd = Command::new("java");
    cmd.args(["-Xms128m", "-Xmx384m", "-XX:+UseG1GC", "-XX:ParallelGCThreads=1", "-XX:ConcGCThreads=1"])
        .args(["-XX:CICompilerCount=2", "-XX:TieredStopAtLevel=1"])
        .arg(format!("-Dlog4j2.configurationFile={}", scripts().join("log4j2.xml").display()))
        .arg("-cp")
        .arg(format!("{}/*", libs.display()));
    cmd
}

impl PrivateBroker {
    pub fn start() -> Option<PrivateBroker> {
        let port = free_port();
        Self::start_advertised(port, port)
    }

    /// A broker listening on `port` that tells clients to connect to
    /// `advertised` (a proxy in front of it); `brokers` is the advertised one.
    pub fn start_advertised(port: u16, advertised: u16) -> Option<PrivateBroker> {
        let libs = libs()?;
        let dir = std::env::temp_dir().join(super::unique("kafka"));
        std::fs::create_dir_all(dir.join("data")).ok()?;
        let controller = free_port();
        let template = std::fs::read_to_string(scripts().join("server.properties")).ok()?;
        let properties = template
            .replace("@NODE@", "1")
            .replace("@QUORUM@", &format!("controller.quorum.bootstrap.servers=127.0.0.1:{controller}"))
            .replace(
                "advertised.listeners=PLAINTEXT://127.0.0.1:@PORT@",
                &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{advertised}"),
            )
            .replace("@PORT@", &port.to_string())
            .replace("@CPORT@", &controller.to_string())
            .replace("@DATA@", &dir.join("data").display().to_string());
        std::fs::write(dir.join("server.properties"), properties).ok()?;
        let formatted = java(&libs)
            .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
            .arg(dir.join("server.properties"))
            .arg("--standalone")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        assert!(formatted.success(), "formatting a private Kafka in {} failed", dir.display());
        let mut broker = PrivateBroker { child: None, dir, port, brokers: format!("127.0.0.1:{advertised}") };
        broker.run(&libs);
        Some(broker)
    }

    /// Starts the process on the broker's directory and waits until it
    /// answers.
    fn run(&mut self, libs: &Path) {
        self.spawn(libs);
        self.wait();
    }

    fn spawn(&mut self, libs: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let child = java(libs)
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until the broker answers on its port.
    pub fn wait(&self) {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "private Kafka did not start: see {}",
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn pid(&self) -> String {
        self.child.as_ref().map(|c| c.id().to_string()).unwrap_or_default()
    }

    pub fn pause(&self) {
        Command::new("kill").args(["-STOP", &self.pid()]).status().unwrap();
    }

    pub fn resume(&self) {
        Command::new("kill").args(["-CONT", &self.pid()]).status().unwrap();
    }

    /// SIGKILL: the process dies with whatever it had not written.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same log directory (after [`crash`](Self::crash)).
    pub fn restart(&mut self) {
        self.crash();
        self.run(&libs().expect("Kafka's jars"));
    }

    /// Starts it again without waiting for it to answer (a cluster node
    /// that needs its peers' votes first).
    pub fn restart_in_background(&mut self) {
        self.crash();
        self.spawn(&libs().expect("Kafka's jars"));
    }
}

/// Three private Kafka nodes, each broker and controller (static voters),
/// with the durability settings of a production cluster: replication 3,
/// `min.insync.replicas=2`, no unclean leader election.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateBroker>,
    pub brokers: String,
}

impl PrivateCluster {
    pub fn start() -> Option<PrivateCluster> {
        let libs = libs()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1)).collect();
        let template = std::fs::read_to_string(scripts().join("server.properties")).ok()?;
        let mut nodes = Vec::new();
        for (i, (port, controller)) in ports.iter().enumerate() {
            let dir = std::env::temp_dir().join(super::unique("kafka"));
            std::fs::create_dir_all(dir.join("data")).ok()?;
            let properties = template
                .replace("@NODE@", &(i + 1).to_string())
                .replace("@QUORUM@", &format!("controller.quorum.voters={}", voters.join(",")))
                .replace("@PORT@", &port.to_string())
                .replace("@CPORT@", &controller.to_string())
                .replace("@DATA@", &dir.join("data").display().to_string())
                .replace("offsets.topic.replication.factor=1", "offsets.topic.replication.factor=3")
                .replace("transaction.state.log.replication.factor=1", "transaction.state.log.replication.factor=3")
                .replace("transaction.state.log.min.isr=1", "transaction.state.log.min.isr=2")
                + "default.replication.factor=3\nmin.insync.replicas=2\nunclean.leader.election.enable=false\n";
            std::fs::write(dir.join("server.properties"), properties).ok()?;
            let formatted = java(&libs)
                .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c"])
                .arg(dir.join("server.properties"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?;
            assert!(formatted.success(), "formatting a cluster node in {} failed", dir.display());
            nodes.push(PrivateBroker { child: None, dir, port: *port, brokers: format!("127.0.0.1:{port}") });
        }
        // The nodes wait for each other's votes: start all, then wait.
        for node in &mut nodes {
            node.spawn(&libs);
        }
        for node in &nodes {
            node.wait();
        }
        let brokers = nodes.iter().map(|n| n.brokers.clone()).collect::<Vec<_>>().join(",");
        Some(PrivateCluster { nodes, brokers })
    }

    /// The node (index into `nodes`) leading `topic`'s `partition` now.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<usize> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &self.brokers).create().ok()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).ok()?;
        let leader = metadata.topics().first()?.partitions().iter().find(|p| p.id() == partition)?.leader();
        usize::try_from(leader).ok().and_then(|id| id.checked_sub(1))
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.resume();
        self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
