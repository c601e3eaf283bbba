//! Helpers shared by the devportal integration tests: building bundles from the samples or
//! a temp evidence dir, extracting them, running `verify-offline.sh` under a given shell, and
//! the interop venv's python.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use exportcore::sign::{Signer, Verifier};
use exportcore::{
    DirEvidence, Distribution, DistributionType, EvidenceSource, FsSink, ProfileId, Run, RunBuilder, RunRequest,
    RunStatus, TenantId, Timestamp,
};
use exportcore_devportal::{DevportalOffline, BUNDLE_FILE, PROFILE_ID};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence")
}

/// A request pinned to upstream's 2025-01-01T00:00:00Z.
pub fn request() -> RunRequest {
    let mut req = RunRequest::new(ProfileId::from_static(PROFILE_ID));
    req.created_at = Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
    req
}

pub fn signed_request() -> RunRequest {
    let mut req = request();
    req.distribution = Some(Distribution::new(DistributionType::Filesystem, None).signed("test"));
    req
}

/// Runs the profile into `out` (an FsSink); panics unless it succeeds.
pub fn build_from(evidence: Arc<dyn EvidenceSource>, out: &Path, signer: Option<Arc<dyn Signer>>) -> Run {
    let run = try_build(evidence, out, signer).unwrap_or_else(|e| panic!("the run failed: {}", e.report()));
    assert_eq!(run.status, RunStatus::Succeeded);
    run
}

/// Runs the profile into `out`: the run record, or the error it failed with.
pub fn try_build(
    evidence: Arc<dyn EvidenceSource>,
    out: &Path,
    signer: Option<Arc<dyn Signer>>,
) -> exportcore::Result<Run> {
    let req = if signer.is_some() { signed_request() } else { request() };
    let mut builder =
        RunBuilder::from_arcs(Arc::new(DevportalOffline::new()), evidence, Arc::new(FsSink::new(out).unwrap()))
            .tenant(TenantId::parse("tenant-a").unwrap());
    if let Some(signer) = signer {
        builder = builder.signer(signer);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(builder.execute(req)).map(|o| o.run)
}

/// Builds the samples into `out`; returns the path of the bundle.
pub fn build_samples(out: &Path, signer: Option<Arc<dyn Signer>>) -> PathBuf {
    build_from(Arc::new(DirEvidence::new(samples()).unwrap()), out, signer);
    out.join(BUNDLE_FILE)
}

/// Extracts a bundle into a new directory `dir` with the system tar.
pub fn extract(tgz: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let o = Command::new("tar").arg("-xzf").arg(tgz).arg("-C").arg(dir).output().unwrap();
    assert!(o.status.success(), "tar -xzf: {}", text(&o));
}

/// Every file under `dir`, relative, sorted.
pub fn files_of(dir: &Path) -> Vec<String> {
    fn walk(d: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &r, out);
            } else {
                out.push(r);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

/// Copies a directory tree (files and directories only).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A pristine copy of the script, outside any bundle (the "trusted copy").
pub fn trusted_script(dir: &Path) -> PathBuf {
    let p = dir.join("trusted-verify-offline.sh");
    std::fs::write(&p, exportcore_devportal::VERIFY_SCRIPT).unwrap();
    p
}

/// `shell script args...` in `cwd`, with `env` added.
pub fn run_script(shell: &str, script: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(shell);
    cmd.arg(script).args(args).current_dir(cwd);
    for k in ["DEVPORTAL_VERIFY_KEY", "DEVPORTAL_VERIFY_HMAC_KEY", "DEVPORTAL_EXPECTED_ROOT"] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The shells the script must work under: dash (installed with apt-get if missing) and bash.
pub fn shells() -> Vec<&'static str> {
    let dash = Command::new("dash").arg("-c").arg("true").status().is_ok_and(|s| s.success());
    assert!(dash, "dash is missing: `sh tests/interop/install.sh` installs it");
    vec!["dash", "bash"]
}

pub struct Keys {
    pub signer: Arc<dyn Signer>,
    pub verifier: Arc<dyn Verifier>,
    pub public_pem: PathBuf,
}

pub fn keys(alg: exportcore_crypto::Algorithm, dir: &Path, name: &str) -> Keys {
    let pair = exportcore_crypto::generate(alg).unwrap();
    let public_pem = dir.join(format!("{name}.pub"));
    std::fs::write(&public_pem, &pair.public_pem).unwrap();
    Keys {
        signer: exportcore_crypto::signer_from_pem(&pair.private_pem).unwrap(),
        verifier: exportcore_crypto::verifier_from_pem(&pair.public_pem).unwrap(),
        public_pem,
    }
}

/// The interop venv's python (`$EXPORTCORE_INTEROP_VENV`, default
/// `~/.cache/exportcore/interop-venv`). Fails loudly when missing.
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

/// The project's interop verifiers (`tests/interop/` at the workspace root).
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
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
