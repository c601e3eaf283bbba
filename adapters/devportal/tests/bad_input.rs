//! Bad evidence: every case fails the run with a code and a message naming the input, and
//! leaves nothing in the sink; the odd-but-valid cases (0-byte assets, non-NFC names,
//! symlinks inside the tree) give a bundle that verifies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use exportcore::{
    ArtifactPath, DirEvidence, EvidenceItem, EvidenceKind, EvidenceSource, MemoryEvidence, Result, Run, RunError,
    RunStatus,
};
use exportcore_devportal::{read_member, verify_bundle, BundleManifest, BUNDLE_FILE};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An evidence dir with a valid portal (plus whatever the test adds).
fn evidence_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("portal")).unwrap();
    std::fs::write(d.path().join("portal/index.html"), "<h1>portal</h1>").unwrap();
    d
}

/// Runs on `ev` into a fresh dir; returns the run (or its error) and whether the sink is empty.
fn run_on(ev: Arc<dyn EvidenceSource>) -> (Result<Run>, bool, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let run = try_build(ev, out.path(), None);
    let empty = std::fs::read_dir(out.path()).unwrap().next().is_none();
    (run, empty, out)
}

fn assert_fails(ev: Arc<dyn EvidenceSource>, code: &str, names: &[&str]) {
    let (run, empty, _out) = run_on(ev);
    let err = run.expect_err("the run must fail");
    let e = &RunError::from(&err);
    assert_eq!(e.code, code, "{e:?}");
    for n in names {
        assert!(e.message.contains(n), "the message must name {n:?}: {}", e.message);
    }
    assert!(empty, "a failed run leaves the sink empty");
}

fn dir_ev(d: &Path) -> Arc<dyn EvidenceSource> {
    Arc::new(DirEvidence::new(d).unwrap())
}

#[test]
fn symlink_escaping_the_tree_is_refused() {
    let d = evidence_dir();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    std::fs::create_dir_all(d.path().join("specs")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), d.path().join("specs/api.yaml")).unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["specs/api.yaml", "outside the evidence directory"]);

    // A symlinked directory out of the tree, and a relative ../ link.
    let d = evidence_dir();
    std::os::unix::fs::symlink(outside.path(), d.path().join("changelog")).unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["changelog", "outside the evidence directory"]);
    let d = evidence_dir();
    std::os::unix::fs::symlink("../../../../../../../etc/hostname", d.path().join("portal/host.txt")).unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["portal/host.txt"]);
}

#[test]
fn symlink_inside_the_tree_is_packed_as_a_file() {
    let d = evidence_dir();
    std::fs::create_dir_all(d.path().join("store")).unwrap();
    std::fs::write(d.path().join("store/logo.svg"), "<svg/>").unwrap();
    std::os::unix::fs::symlink(d.path().join("store/logo.svg"), d.path().join("portal/logo.svg")).unwrap();
    let (run, _, out) = run_on(dir_ev(d.path()));
    let run = run.unwrap_or_else(|e| panic!("the run failed: {}", e.report()));
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(read_member(&out.path().join(BUNDLE_FILE), "portal/logo.svg").unwrap(), b"<svg/>");
    assert!(verify_bundle(&out.path().join(BUNDLE_FILE), &[]).unwrap().is_ok());
}

#[test]
fn fifo_is_refused() {
    let d = evidence_dir();
    let st = std::process::Command::new("mkfifo").arg(d.path().join("portal/pipe.html")).status().unwrap();
    assert!(st.success());
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["portal/pipe.html", "not a regular file"]);
}

#[test]
fn socket_and_device_files_are_refused() {
    let d = evidence_dir();
    let _sock = std::os::unix::net::UnixListener::bind(d.path().join("portal/sock.html")).unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["portal/sock.html", "not a regular file"]);

    // A character device (needs CAP_MKNOD: root on this machine and in CI).
    let d = evidence_dir();
    std::fs::create_dir_all(d.path().join("sdks/c")).unwrap();
    let dev = d.path().join("sdks/c/null");
    let st = std::process::Command::new("mknod").arg(&dev).args(["c", "1", "3"]).status().unwrap();
    if st.success() {
        assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["sdks/c/null", "not a regular file"]);
    } else {
        eprintln!("mknod not permitted here; the device case is covered by the FIFO and socket cases");
    }
}

#[test]
fn names_that_are_not_utf8_are_refused() {
    let d = evidence_dir();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.html");
    std::fs::write(d.path().join("portal").join(name), "latin-1 name").unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["portal/caf", "not UTF-8"]);
}

#[test]
fn names_with_backslashes_or_control_characters_are_refused() {
    for name in ["back\\slash.html", "new\nline.html"] {
        let d = evidence_dir();
        std::fs::write(d.path().join("portal").join(name), "x").unwrap();
        assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["portal/"]);
    }
}

#[test]
fn missing_portal_is_evidence_empty() {
    // No portal/ at all (other groups present).
    let d = tempfile::tempdir().unwrap();
    copy_dir(&samples().join("specs"), &d.path().join("specs"));
    copy_dir(&samples().join("sdks"), &d.path().join("sdks"));
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_EVIDENCE_EMPTY", &["portal/"]);
    // portal/ with only hidden files.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("portal")).unwrap();
    std::fs::write(d.path().join("portal/.gitkeep"), "").unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_EVIDENCE_EMPTY", &["portal/"]);
    // Empty evidence.
    assert_fails(Arc::new(MemoryEvidence::new()), "ERR_EXPORT_EVIDENCE_EMPTY", &["portal/"]);
}

#[test]
fn a_file_directly_under_sdks_is_refused() {
    let d = evidence_dir();
    std::fs::create_dir_all(d.path().join("sdks")).unwrap();
    std::fs::write(d.path().join("sdks/README.md"), "which sdk?").unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_EVIDENCE_INVALID", &["sdks/README.md", "sdks/<name>/"]);
}

#[test]
fn a_zero_byte_asset_is_allowed() {
    let d = evidence_dir();
    std::fs::create_dir_all(d.path().join("changelog")).unwrap();
    std::fs::write(d.path().join("changelog/EMPTY.md"), "").unwrap();
    std::fs::write(d.path().join("portal/empty.css"), "").unwrap();
    let (run, _, out) = run_on(dir_ev(d.path()));
    let run = run.unwrap_or_else(|e| panic!("the run failed: {}", e.report()));
    assert_eq!(run.status, RunStatus::Succeeded);
    let tgz = out.path().join(BUNDLE_FILE);
    let m = BundleManifest::parse(&read_member(&tgz, "manifest.json").unwrap()).unwrap();
    let e = m.entries.iter().find(|e| e.path.as_str() == "portal/empty.css").unwrap();
    assert_eq!(e.size_bytes, 0);
    assert_eq!(e.sha256.to_hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert!(m.sources.changelog_included);
    assert!(verify_bundle(&tgz, &[]).unwrap().is_ok());
    let script = trusted_script(out.path());
    for shell in shells() {
        let o = run_script(shell, &script, out.path(), &[tgz.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{shell}: {}", text(&o));
    }
}

#[test]
fn non_nfc_names_are_normalised_and_collisions_refused() {
    let d = evidence_dir();
    let nfd = "portal/cafe\u{301}.html";
    std::fs::write(d.path().join(nfd), "decomposed").unwrap();
    std::fs::create_dir_all(d.path().join("sdks/re\u{301}sume\u{301}")).unwrap();
    std::fs::write(d.path().join("sdks/re\u{301}sume\u{301}/a.py"), "x = 1\n").unwrap();
    let (run, _, out) = run_on(dir_ev(d.path()));
    let run = run.unwrap_or_else(|e| panic!("the run failed: {}", e.report()));
    assert_eq!(run.status, RunStatus::Succeeded);
    let tgz = out.path().join(BUNDLE_FILE);
    assert_eq!(read_member(&tgz, "portal/caf\u{e9}.html").unwrap(), b"decomposed");
    assert!(read_member(&tgz, nfd).is_err());
    let m = BundleManifest::parse(&read_member(&tgz, "manifest.json").unwrap()).unwrap();
    assert_eq!(m.sources.sdk_names, ["r\u{e9}sum\u{e9}"]);
    assert!(verify_bundle(&tgz, &[]).unwrap().is_ok());
    let script = trusted_script(out.path());
    for shell in shells() {
        let o = run_script(shell, &script, out.path(), &[tgz.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{shell}: {}", text(&o));
    }

    // The NFC and the NFD spelling side by side would be one name in the bundle.
    std::fs::write(d.path().join("portal/caf\u{e9}.html"), "composed").unwrap();
    assert_fails(dir_ev(d.path()), "ERR_EXPORT_PATH_UNSAFE", &["NFC", "portal/caf"]);
}

/// One asset whose bytes change between the first read (hashing) and the second (packing).
#[derive(Debug)]
struct Changing {
    later: &'static [u8],
    opens: AtomicUsize,
}

impl Changing {
    fn to(later: &'static [u8]) -> Arc<Self> {
        Arc::new(Self { later, opens: AtomicUsize::new(0) })
    }
}

impl EvidenceSource for Changing {
    fn describe(&self) -> String {
        "changing".into()
    }
    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        Ok(if kind == EvidenceKind::Portal {
            vec![EvidenceItem { path: ArtifactPath::parse("portal/index.html")?, size: 5 }]
        } else {
            vec![]
        })
    }
    fn open(&self, _: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        let n = self.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(std::io::Cursor::new(if n == 0 { &b"first"[..] } else { self.later })))
    }
}

#[test]
fn an_asset_changing_while_packed_is_refused() {
    assert_fails(Changing::to(b"later"), "ERR_EXPORT_EVIDENCE_INVALID", &["portal/index.html", "changed"]);
}

/// Truncated between hashing and packing (another process rewriting it).
#[test]
fn an_asset_truncated_while_packed_names_it() {
    assert_fails(Changing::to(b"fi"), "ERR_EXPORT_EVIDENCE_INVALID", &["portal/index.html", "shorter"]);
}
