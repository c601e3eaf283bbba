//! Helpers shared by the workspace tests: signed runs into a temp dir, and the third-party
//! interop verifiers of `tests/interop/` (installed by `sh tests/interop/install.sh`).

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use exportcore::sign::{Signer, Verifier};
use exportcore::{
    DirEvidence, Distribution, DistributionType, FsSink, ProfileId, Run, RunBuilder, RunRequest, TenantId, Timestamp,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/evidence")
}

pub fn signed_request(profile: &str) -> RunRequest {
    let mut req = RunRequest::new(ProfileId::parse(profile).unwrap());
    req.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    req.distribution = Some(Distribution::new(DistributionType::Filesystem, None).signed("test"));
    req
}

pub struct Keys {
    pub signer: Arc<dyn Signer>,
    pub verifier: Arc<dyn Verifier>,
    pub public_pem: PathBuf,
    pub private_pem: PathBuf,
}

pub fn keys(alg: exportcore_crypto::Algorithm, dir: &Path, name: &str) -> Keys {
    let pair = exportcore_crypto::generate(alg).unwrap();
    let public_pem = dir.join(format!("{name}.pub"));
    let private_pem = dir.join(format!("{name}.key"));
    std::fs::write(&public_pem, &pair.public_pem).unwrap();
    std::fs::write(&private_pem, &pair.private_pem).unwrap();
    Keys {
        signer: exportcore_crypto::signer_from_pem(&pair.private_pem).unwrap(),
        verifier: exportcore_crypto::verifier_from_pem(&pair.public_pem).unwrap(),
        public_pem,
        private_pem,
    }
}

pub async fn signed_run(out: &Path, signer: Arc<dyn Signer>, profile: &str) -> Run {
    let profile_impl = exportcore_json::profiles().get(profile).unwrap();
    let outcome = RunBuilder::from_arcs(
        profile_impl,
        Arc::new(DirEvidence::new(samples()).unwrap()),
        Arc::new(FsSink::new(out).unwrap()),
    )
    .tenant(TenantId::parse("tenant-a").unwrap())
    .signer(signer)
    .execute(signed_request(profile))
    .await
    .unwrap_or_else(|e| panic!("signed run of {profile} failed: {}", e.report()));
    assert_eq!(outcome.run.status, exportcore::RunStatus::Succeeded);
    outcome.run
}

/// The project's interop verifiers (`tests/interop/`).
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// True when the interop tests are on (`EXPORTCORE_INTEROP=1`, which `scripts/test-all` sets
/// after installing the tools); then a missing tool fails the test loudly. Otherwise the test
/// returns at once, so plain `cargo test` needs nothing but Rust.
pub fn interop_enabled() -> bool {
    let on = std::env::var("EXPORTCORE_INTEROP").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("interop test not run: set EXPORTCORE_INTEROP=1 after `sh tests/interop/install.sh`");
    }
    on
}

/// The interop venv's python. Fails loudly if `scripts/test-all` did not install it.
pub fn interop_python() -> PathBuf {
    let venv = std::env::var_os("EXPORTCORE_INTEROP_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/exportcore/interop-venv")
    });
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "interop venv missing at {}: run `sh tests/interop/install.sh` (scripts/test-all does)",
        venv.display()
    );
    py
}

/// Runs an interop python script; returns its output.
pub fn interop_py(script: &str, args: &[&Path]) -> Output {
    let out = Command::new(interop_python()).arg(interop_dir().join(script)).args(args).output().expect("run python");
    out
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A private OCI registry (Debian's `docker-registry`, distribution 2.8) on a loopback port,
/// storing into a temp dir; killed by PID when dropped.
pub struct Registry {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// A tmpfs mounted as its storage (a small disk), unmounted when dropped.
    disk: Option<PathBuf>,
}

impl Registry {
    /// Starts one and waits until `/v2/` answers (10 s at most).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// One that requires HTTP basic auth: `user` with `bcrypt_hash` (an htpasswd line's hash).
    pub fn start_with_htpasswd(user: &str, bcrypt_hash: &str) -> Self {
        Self::start_with(Some(format!("{user}:{bcrypt_hash}\n")))
    }

    /// One whose storage is a tmpfs of `bytes` (a disk that fills up). Mounting needs root
    /// (CAP_SYS_ADMIN), as the interop tests' other mount tests do: without it, this fails.
    pub fn start_on_small_disk(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&storage)
            .output()
            .unwrap();
        assert!(o.status.success(), "mounting a tmpfs (needs root): {}", text(&o));
        let mut r = Self::start_in(dir, None);
        r.disk = Some(storage);
        r
    }

    /// Gives the small disk `bytes` (`mount -o remount`), the registry running on.
    pub fn grow_disk(&self, bytes: u64) {
        let disk = self.disk.as_ref().expect("a registry on a small disk");
        let o = Command::new("mount").args(["-o", &format!("remount,size={bytes}")]).arg(disk).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }

    /// What the registry logged (errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn start_with(htpasswd: Option<String>) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), htpasswd)
    }

    fn start_in(dir: tempfile::TempDir, htpasswd: Option<String>) -> Self {
        let auth = match htpasswd {
            None => String::new(),
            Some(line) => {
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, line).unwrap();
                format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", file.display())
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry missing: run sh tests/interop/install.sh");
        let registry = Self { child, port, dir, config, disk: None };
        registry.wait_up();
        registry
    }

    /// Kills the registry (by PID) and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("registry.log")).unwrap();
        self.child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.wait_up();
    }

    /// Kills the registry by PID.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_up(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let up = |r: String| {
                let status =
                    r.lines().next().unwrap_or_default().split_whitespace().nth(1).unwrap_or_default().to_owned();
                status == "200" || status == "401"
            };
            if self.get("/v2/").is_some_and(up) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "the registry did not start: {}",
            std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A plain HTTP GET; the whole response, or `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(disk) = &self.disk {
            let _ = Command::new("umount").arg(disk).status();
        }
    }
}

/// The real Trivy, installed by `scripts/install-trivy.sh` (offline, into a venv).
pub fn trivy() -> PathBuf {
    let venv = std::env::var_os("EXPORTCORE_TRIVY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/exportcore/trivy-venv"));
    let t = venv.join("bin/trivy");
    assert!(t.exists(), "Trivy missing at {}: run scripts/test-all (it runs scripts/install-trivy.sh)", t.display());
    t
}

/// An S3-protocol server that checks request signatures (s3s-fs, built by
/// `tests/interop/install.sh`) on a loopback port, storing into a temp dir with one bucket,
/// `exports`; killed by PID when dropped.
pub struct S3Server {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl S3Server {
    pub const ACCESS_KEY: &'static str = "EXPORTCORETESTKEY";
    pub const SECRET_KEY: &'static str = "exportcore-test-secret-0123456789";

    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("exports")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let root = std::env::var_os("EXPORTCORE_S3S_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/exportcore/s3s-fs"));
        let bin = root.join("bin/s3s-fs");
        assert!(bin.exists(), "s3s-fs missing at {}: run sh tests/interop/install.sh", bin.display());
        let log = std::fs::File::create(dir.path().join("s3s.log")).unwrap();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
            .arg(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Self { child, port, dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "s3s-fs did not start: {}",
            std::fs::read_to_string(server.dir.path().join("s3s.log")).unwrap_or_default()
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The findings of the real Trivy scanning the rootfs fixture with `cache` as its cache dir
/// and `args` (where its databases come from): sorted (package, vulnerability, fixed version).
pub fn trivy_rootfs_findings(cache: &Path, args: &[String]) -> Vec<(String, String, String)> {
    let report = cache.join("report.json");
    let o = Command::new(trivy())
        .arg("rootfs")
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .args(["--scanners", "vuln", "--format", "json", "--output"])
        .arg(&report)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trivy/rootfs"))
        .output()
        .unwrap();
    assert!(o.status.success(), "trivy: {}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let mut found: Vec<(String, String, String)> = r["Results"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|x| x["Vulnerabilities"].as_array().cloned().unwrap_or_default())
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("PkgName"), s("VulnerabilityID"), s("FixedVersion"))
        })
        .collect();
    found.sort();
    found
}

/// A fixed Ed25519 key, for tests that compare or pin signed bytes (Ed25519 signatures are
/// deterministic, RFC 8032).
pub const FIXED_TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MFECAQEwBQYDK2VwBCIEILAaljfFYVRB4DSSt5PIgd5VENO7sehIj/OJwvtFUgdi
gSEAKXaEZEhJI4XBXL9WABMr+DBuugQJQX732L3MHfsgggc=
-----END PRIVATE KEY-----
";

/// One run of `profile` on `evidence` into memory at a pinned time and run id (signed with
/// [`FIXED_TEST_KEY`] when `signed`): each output's path and sha256, in output order.
pub async fn output_digests(
    evidence: &Path,
    profile: impl exportcore::Profile,
    id: &'static str,
    signed: bool,
) -> Vec<(String, String)> {
    let mut request = RunRequest::new(ProfileId::from_static(id));
    request.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    let mut builder = RunBuilder::new(profile, DirEvidence::new(evidence).unwrap(), exportcore::InMemorySink::new())
        .run_id(exportcore::RunId::parse("pinned-run").unwrap());
    if signed {
        request.distribution = Some(Distribution::new(DistributionType::Filesystem, None).signed("pinned"));
        builder = builder.signer(exportcore_crypto::signer_from_pem(FIXED_TEST_KEY).unwrap());
    }
    let outcome = builder.execute(request).await.unwrap_or_else(|e| panic!("{id}: {}", e.report()));
    outcome.run.outputs.iter().map(|o| (o.path.to_string(), o.sha256.to_hex())).collect()
}
