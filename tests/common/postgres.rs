//! A private PostgreSQL server a test may stop in immediate mode (as a crash
//! would) and start again. `None` when no PostgreSQL binaries are installed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivatePostgres {
    dir: PathBuf,
    bindir: PathBuf,
    pub port: u16,
    /// Run the server's commands as `postgres` (initdb refuses root).
    as_postgres: bool,
}

impl PrivatePostgres {
    pub fn start() -> Option<PrivatePostgres> {
        let bindir = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())?;
        let as_postgres =
            Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let port = super::free_port();
        let dir = std::env::temp_dir().join(super::unique("outbox-pg"));
        std::fs::create_dir_all(&dir).ok()?;
        let pg = PrivatePostgres { dir, bindir, port, as_postgres };
        if as_postgres {
            Command::new("chown").args(["postgres"]).arg(&pg.dir).status().ok()?;
        }
        let mut initdb = pg.command("initdb");
        initdb.args(["-U", "postgres", "--auth=trust", "-D"]).arg(&pg.dir);
        if !initdb.status().ok()?.success() {
            return None;
        }
        pg.run().then_some(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bindir.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// Starts the server and waits until it accepts connections.
    pub fn run(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let mut start = self.command("pg_ctl");
        start.arg("-D").arg(&self.dir).arg("-l").arg(&log).args(["-o", &options, "-w", "start"]);
        if !start.status().is_ok_and(|s| s.success()) {
            return false;
        }
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Stops the server in immediate mode: no checkpoint, every connection
    /// dropped, recovery from WAL at the next start.
    pub fn crash(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(&self.dir).args(["-m", "immediate", "stop"]);
        let _ = stop.status();
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/outbox_chaos", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.crash();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
