//! A PostgreSQL server of a test's own (Debian's `postgresql`): a cluster made with `initdb` in
//! a temporary directory, on a loopback port, run as the unprivileged `postgres` user when the
//! tests run as root, stopped by PID. Included by the tests that need one (`#[path]`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().expect("PostgreSQL not installed (apt-get install postgresql; tests/interop/install.sh does)")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// `cmd` as the unprivileged `postgres` user when we are root (PostgreSQL refuses root);
/// `setpriv` execs, so the child's PID is the server's.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL server of its own, stopped (SIGINT: fast shutdown, then SIGKILL) by PID.
pub struct Pg {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    settings: Vec<String>,
}

impl Pg {
    /// A server for tests: `fsync=off` (nothing here must survive a power loss).
    pub fn start() -> Self {
        Self::start_with(&["fsync=off"])
    }

    /// A server with these `-c` settings (benchmarks pass none: PostgreSQL's durable defaults).
    pub fn start_with(settings: &[&str]) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("exportcore-pg").tempdir().unwrap();
        if is_root() {
            assert!(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success());
        }
        let data = dir.path().join("data");
        let o = as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "exportcore", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(o.status.success(), "initdb: {}", String::from_utf8_lossy(&o.stderr));
        let settings = settings.iter().map(|s| s.to_string()).collect();
        let mut pg = Pg { dir, port: free_port(), child: None, settings };
        pg.run();
        pg
    }

    pub fn run(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = as_postgres(&bin_dir().join("postgres"));
        cmd.arg("-D").arg(&data).args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"]).arg(self.dir.path());
        for s in self.settings.iter().map(String::as_str).chain(["max_connections=200"]) {
            cmd.args(["-c", s]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "postgres did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Accepting TCP is not yet accepting logins; the first connect retries below.
        std::thread::sleep(Duration::from_millis(300));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The server's PID (the postmaster), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://exportcore@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh database (each test gets its own).
    pub async fn database(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        self.url(name)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}
