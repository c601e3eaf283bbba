//! `exportctl serve` as a process on a loopback port, stopped by PID with SIGTERM, driven by
//! outside clients (with `EXPORTCORE_INTEROP=1`): a Python DPoP client that follows events
//! with sseclient-py and checks every reply against the OpenAPI document with openapi-core;
//! `curl`; and the browser page in headless Chromium (screenshot path printed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/common/pg.rs"]
mod pg;

use common::{interop_enabled, interop_python, text, S3Server};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `exportctl serve`, SIGTERMed by PID when dropped.
struct Serve {
    child: Child,
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Serve {
    fn start(dir: &Path, auth: &[&str]) -> Self {
        Self::start_on(dir, "s.sqlite", auth)
    }

    fn start_on(dir: &Path, store: &str, auth: &[&str]) -> Self {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
        Self::start_with(dir, store, &samples, auth)
    }

    fn start_with(dir: &Path, store: &str, evidence: &Path, args: &[&str]) -> Self {
        Self::start_env(dir, store, evidence, args, &[])
    }

    /// `--data data` unless `args` name another; `env` added to the process's environment.
    fn start_env(dir: &Path, store: &str, evidence: &Path, args: &[&str], env: &[(&str, String)]) -> Self {
        let data: &[&str] = if args.contains(&"--data") { &[] } else { &["--data", "data"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_exportctl"))
            .current_dir(dir)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
            .args(data)
            .arg("--evidence")
            .arg(evidence)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split_once("listening on http://").map(|(_, r)| r) {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("exportctl serve did not start: {}", log.lock().unwrap())
        });
        Self { child, addr, log }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM by PID; the exit status within `limit`.
    fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < limit, "serve did not stop within {limit:?}: {}", self.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status();
            let _ = self.child.wait();
        }
    }
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl").args(["-sS", "--max-time", "60"]).args(args).output().expect("curl (apt-get install curl)")
}

/// `POST /export-center/runs` with a dev token for `tenant`; the reply body, a line break and
/// the HTTP status.
fn post_run(serve: &Serve, token: &str, tenant: &str, body: &str) -> String {
    let o = curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        &format!("X-StellaOps-Tenant: {tenant}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        "-w",
        "\n%{http_code}",
        &format!("{}/export-center/runs", serve.base()),
    ]);
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn serve_refuses_to_start_without_authentication() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .current_dir(tmp.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--evidence", "."])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_REQUEST_INVALID") && text(&o).contains("--jwks"), "{}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .current_dir(tmp.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--dev-token", "short=acme:export:read"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!text(&o).contains("short="), "the token is never echoed: {}", text(&o));
}

#[test]
fn serve_with_dpop_outside_client_sse_and_openapi() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/gateway_client.py");
    let o = Command::new(interop_python()).arg(&script).arg("keys").arg(&keys).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let jwks = keys.join("jwks.json");
    let mut serve = Serve::start(
        tmp.path(),
        &["--jwks", jwks.to_str().unwrap(), "--issuer", "https://issuer.interop", "--audience", "export-center"],
    );
    let o = Command::new(interop_python()).arg(&script).arg("run").arg(serve.base()).arg(&keys).output().unwrap();
    assert!(
        o.status.success() && text(&o).starts_with("OK"),
        "{}\n--- server log:\n{}",
        text(&o),
        serve.log.lock().unwrap()
    );
    eprintln!("{}", text(&o).trim());
    // Without the dev mode, a bearer token is refused.
    let r = curl(&[
        "-H",
        "Authorization: Bearer anything-at-all",
        "-H",
        "X-StellaOps-Tenant: acme",
        &format!("{}/export-center/runs", serve.base()),
    ]);
    assert_eq!(json(&r)["code"], "ERR_EXPORT_UNAUTHENTICATED");
    let status = serve.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", serve.log.lock().unwrap());
    assert!(!serve.log.lock().unwrap().contains("DEVELOPMENT MODE"));
}

#[test]
fn serve_dev_tokens_with_curl_and_the_browser_page() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(tmp.path(), &["--dev-token", "dev-token-acme=acme:export:read,export:write"]);
    assert!(serve.log.lock().unwrap().contains("DEVELOPMENT MODE"), "dev mode is announced");
    let base = serve.base();
    let auth = ["-H", "Authorization: Bearer dev-token-acme", "-H", "X-StellaOps-Tenant: acme"];
    let with = |extra: &[&str]| -> Vec<String> { auth.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |args: Vec<String>| curl(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Every built-in profile but mirror:delta (no request can name its base).
    let o = run(with(&[&format!("{base}/export-center/profiles")]));
    let builtin: Vec<String> =
        json(&o)["builtin"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
    assert!(builtin.iter().any(|p| p == "mirror:full") && !builtin.iter().any(|p| p == "mirror:delta"), "{builtin:?}");

    let o = run(with(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"profileId":"json:raw"}"#,
        &format!("{base}/export-center/runs"),
    ]));
    let id = json(&o)["runId"].as_str().unwrap().to_owned();
    // curl follows the events to the end.
    let o = run(with(&["-N", &format!("{base}/export-center/runs/{id}/events")]));
    let stream = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(stream.contains("event: started") && stream.contains("event: completed"), "{stream}");
    let view = json(&run(with(&[&format!("{base}/export-center/runs/{id}")])));
    assert_eq!(view["status"], "succeeded", "{view}");
    let out = &view["outputs"][0];
    let file = tmp.path().join("download");
    let o = curl(&["-f", "-o", file.to_str().unwrap(), &format!("{base}{}", out["url"].as_str().unwrap())]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&file).unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), out["sha256"].as_str().unwrap());
    let o = curl(&["-f", "-r", "0-9", &format!("{base}{}", out["url"].as_str().unwrap())]);
    assert_eq!(o.stdout, bytes[..10]);
    // A 10 MiB chunked body is refused with 413.
    let big = tmp.path().join("big.json");
    std::fs::write(&big, vec![b' '; 10 << 20]).unwrap();
    let o = run(with(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("{base}/export-center/runs"),
    ]));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "413", "{}", text(&o));

    // The browser page: headless Chromium renders the tenant's runs with their digests.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gateway-ui.png");
    let page = format!("{base}/export-center/ui/#token=dev-token-acme&tenant=acme");
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--virtual-time-budget=10000",
                "--window-size=1400,600",
            ])
            .args(extra)
            .arg(&page)
            .output()
            .expect("chromium (apt-get install chromium)")
    };
    let dom = chromium(&["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(html.contains(&id), "the page lists the run: {}", text(&dom));
    assert!(html.contains(out["sha256"].as_str().unwrap()), "and its digest");
    assert!(html.contains("status-succeeded") && html.contains("artifacts/"), "status and download links");
    let o = chromium(&[&format!("--screenshot={}", shot.display())]);
    assert!(shot.exists() && std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot: {}", text(&o));
    eprintln!("browser page screenshot: {}", shot.display());

    // SIGTERM with a stream open: the stream ends and the process exits 0.
    let o = run(with(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"profileId":"json:raw","priority":"low"}"#,
        &format!("{base}/export-center/runs"),
    ]));
    let id = json(&o)["runId"].as_str().unwrap().to_owned();
    let mut listener = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "60"])
        .args(auth)
        .arg(format!("{base}/export-center/runs/{id}/events"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = serve.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", serve.log.lock().unwrap());
    let _ = listener.wait();
}

#[test]
fn serve_nodes_share_one_postgres_store_and_data_directory() {
    if !interop_enabled() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = pg::Pg::start();
    let url = rt.block_on(pg.database("center"));
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_exportctl")).args(["store", "migrate", "--store", &url]).output().unwrap();
    assert!(o.status.success() && text(&o).contains("schema version"), "{}", text(&o));
    // Two nodes, one store, one data directory, one URL-signing key.
    std::fs::write(tmp.path().join("url.key"), [7u8; 32]).unwrap();
    let token = ["--dev-token", "dev-token-acme=acme:export:read,export:write", "--url-key", "url.key"];
    let mut a = Serve::start_on(tmp.path(), &url, &token);
    let mut b = Serve::start_on(tmp.path(), &url, &token);
    let auth = ["-H", "Authorization: Bearer dev-token-acme", "-H", "X-StellaOps-Tenant: acme"];
    let post = |base: &str| {
        let mut args: Vec<&str> = auth.to_vec();
        let url = format!("{base}/export-center/runs");
        args.extend(["-X", "POST", "-H", "Content-Type: application/json", "-d", r#"{"profileId":"json:raw"}"#, &url]);
        json(&curl(&args))["runId"].as_str().unwrap().to_owned()
    };
    let ids: Vec<String> = (0..6).map(|i| post(&if i % 2 == 0 { a.base() } else { b.base() })).collect();
    // Every run finishes, once, and either node answers for every run and serves its files.
    for id in &ids {
        let mut view = serde_json::Value::Null;
        for _ in 0..300 {
            let mut args: Vec<&str> = auth.to_vec();
            let u = format!("{}/export-center/runs/{id}", b.base());
            args.push(&u);
            view = json(&curl(&args));
            if view["status"] == "succeeded" || view["status"] == "failed" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(view["status"], "succeeded", "{view}");
        assert_eq!(view["attempts"], 1, "executed once: {view}");
        let out = &view["outputs"][0];
        let o = curl(&["-f", &format!("{}{}", a.base(), out["url"].as_str().unwrap())]);
        assert!(o.status.success(), "{}", text(&o));
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&o.stdout)), out["sha256"].as_str().unwrap(), "node A serves it");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .args(["runs", "list", "--store", &url, "--tenant", "acme", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("password"), "{}", text(&o));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().map(Vec::len), Some(6));
    assert!(a.terminate(Duration::from_secs(30)).success());
    assert!(b.terminate(Duration::from_secs(30)).success());
}

#[test]
fn a_node_killed_mid_run_loses_its_lease_and_another_node_finishes_the_run_once() {
    if !interop_enabled() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = pg::Pg::start();
    let url = rt.block_on(pg.database("failover"));
    let tmp = tempfile::tempdir().unwrap();
    // Evidence that takes a debug build a few seconds: 60,000 advisories.
    let evidence = tmp.path().join("evidence");
    std::fs::create_dir_all(evidence.join("advisories")).unwrap();
    let one = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence/advisories/pypi/GHSA-34jh-p97f-mpxf.json"),
    )
    .unwrap();
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    let mut bulk = String::new();
    for i in 0..60_000 {
        let mut doc = one.clone();
        doc["id"] = format!("GHSA-bulk-{i:06}").into();
        bulk.push_str(&doc.to_string());
        bulk.push('\n');
    }
    std::fs::write(evidence.join("advisories/bulk.ndjson"), bulk).unwrap();
    std::fs::write(tmp.path().join("url.key"), [7u8; 32]).unwrap();
    let args = [
        "--dev-token",
        "dev-token-acme=acme:export:read,export:write",
        "--url-key",
        "url.key",
        "--workers",
        "1",
        "--lease-ttl",
        "2",
    ];
    let auth = ["-H", "Authorization: Bearer dev-token-acme", "-H", "X-StellaOps-Tenant: acme"];
    let get = |base: &str, path: &str| {
        let mut a: Vec<&str> = auth.to_vec();
        let u = format!("{base}/export-center/{path}");
        a.push(&u);
        json(&curl(&a))
    };
    let mut a = Serve::start_with(tmp.path(), &url, &evidence, &args);
    let mut post: Vec<&str> = auth.to_vec();
    let runs_url = format!("{}/export-center/runs", a.base());
    post.extend(["-X", "POST", "-H", "Content-Type: application/json", "-d", r#"{"profileId":"json:raw"}"#, &runs_url]);
    let id = json(&curl(&post))["runId"].as_str().unwrap().to_owned();
    let start = Instant::now();
    // Running, with progress stored: the node's event writer appends in order, so its
    // `started` event is in the store too (a kill between the claim and that append would
    // leave one `started` only).
    loop {
        let view = get(&a.base(), &format!("runs/{id}"));
        if view["status"] == "running" && view["progress"]["percent"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the run never started: {}", a.log.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    // kill -9: no shutdown, no cleanup, the lease simply stops being renewed.
    assert!(Command::new("kill").args(["-KILL", &a.child.id().to_string()]).status().unwrap().success());
    let _ = a.child.wait();
    let killed_at = Instant::now();

    let mut b = Serve::start_with(tmp.path(), &url, &evidence, &args);
    let mut view = serde_json::Value::Null;
    while killed_at.elapsed() < Duration::from_secs(120) {
        view = get(&b.base(), &format!("runs/{id}"));
        if view["status"] == "succeeded" || view["status"] == "failed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("failover: finished by node B {:.1} s after the kill", killed_at.elapsed().as_secs_f64());
    assert_eq!(view["status"], "succeeded", "{view}\n{}", b.log.lock().unwrap());
    assert_eq!(view["attempts"], 2, "the killed attempt and B's: {view}");
    // The events, read from the shared store: two starts, one terminal event.
    let o = Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .args(["runs", "events", &id, "--store", &url, "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "started").count(), 2, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "completed" || *n == "failed").count(), 1, "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("completed"), "{names:?}");
    // What B published is whole: the run directory verifies, every byte of it.
    // Under the prefix of the attempt that succeeded (B's, the second).
    let attempts = u32::try_from(view["attempts"].as_u64().unwrap()).unwrap();
    assert_eq!(attempts, 2, "{view}");
    let prefix = exportcore::RunId::parse(&id).unwrap().attempt_prefix(attempts).unwrap();
    let dir = tmp.path().join("data").join(prefix.as_str());
    let dead = exportcore::RunId::parse(&id).unwrap().attempt_prefix(1).unwrap();
    assert!(!tmp.path().join("data").join(dead.as_str()).exists(), "the killed attempt's files were not deleted");
    let o = Command::new(env!("CARGO_BIN_EXE_exportctl")).arg("verify").arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let out = &view["outputs"][0];
    let o = curl(&["-f", &format!("{}{}", b.base(), out["url"].as_str().unwrap())]);
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&o.stdout)), out["sha256"].as_str().unwrap());
    assert!(b.terminate(Duration::from_secs(30)).success());
}

#[test]
fn serve_nodes_share_postgres_and_s3_object_storage() {
    if !interop_enabled() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = pg::Pg::start();
    let url = rt.block_on(pg.database("objects"));
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("url.key"), [7u8; 32]).unwrap();
    let env = [
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ACCESS_KEY_ID", S3Server::ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", S3Server::SECRET_KEY.to_owned()),
    ];
    let args = [
        "--dev-token",
        "dev-token-acme=acme:export:read,export:write",
        "--url-key",
        "url.key",
        "--data",
        "s3://exports/center",
    ];
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    // Each node in its own working directory: nothing is shared but PostgreSQL and the bucket.
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&da, &db] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(tmp.path().join("url.key"), d.join("url.key")).unwrap();
    }
    let mut a = Serve::start_env(&da, &url, &samples, &args, &env);
    // B is an API-only node: it executes nothing, A executes what B accepts.
    let mut b = Serve::start_env(&db, &url, &samples, &[&args[..], &["--workers", "0"]].concat(), &env);
    let auth = ["-H", "Authorization: Bearer dev-token-acme", "-H", "X-StellaOps-Tenant: acme"];
    let mut ids = Vec::new();
    for (node, profile) in [(&a, "json:raw"), (&b, "trivy:db"), (&a, "json:policy")] {
        let mut args: Vec<&str> = auth.to_vec();
        let u = format!("{}/export-center/runs", node.base());
        let body = format!(r#"{{"profileId":"{profile}"}}"#);
        args.extend(["-X", "POST", "-H", "Content-Type: application/json", "-d", &body, &u]);
        ids.push(json(&curl(&args))["runId"].as_str().unwrap().to_owned());
    }
    // B streams the events of a run A executes, live, from the shared store: every event once,
    // in order, ending with `completed`.
    let mut sse: Vec<&str> = auth.to_vec();
    let u = format!("{}/export-center/runs/{}/events", b.base(), ids[0]);
    sse.extend(["-N", &u]);
    let o = curl(&sse);
    let stream = String::from_utf8_lossy(&o.stdout).into_owned();
    let names: Vec<&str> = stream.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names.first(), Some(&"started"), "{stream}");
    assert_eq!(names.last(), Some(&"completed"), "{stream}");
    assert_eq!(names.iter().filter(|n| **n == "completed").count(), 1, "{stream}");
    let ids_seen: Vec<u64> = stream.lines().filter_map(|l| l.strip_prefix("id: ")?.parse().ok()).collect();
    assert_eq!(ids_seen, (1..=ids_seen.len() as u64).collect::<Vec<_>>(), "every event once, in order: {stream}");
    for (i, id) in ids.iter().enumerate() {
        // Asked of the node that did not take the submission.
        let other = if i % 2 == 0 { &b } else { &a };
        let mut view = serde_json::Value::Null;
        for _ in 0..600 {
            let mut args: Vec<&str> = auth.to_vec();
            let u = format!("{}/export-center/runs/{id}", other.base());
            args.push(&u);
            view = json(&curl(&args));
            if view["status"] == "succeeded" || view["status"] == "failed" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(view["status"], "succeeded", "{view}\n{}", a.log.lock().unwrap());
        for out in view["outputs"].as_array().unwrap() {
            let o = curl(&["-f", &format!("{}{}", other.base(), out["url"].as_str().unwrap())]);
            assert!(o.status.success(), "{}", text(&o));
            use sha2::Digest;
            assert_eq!(hex::encode(sha2::Sha256::digest(&o.stdout)), out["sha256"].as_str().unwrap());
        }
    }
    // The objects are in the bucket, under the prefix, one directory per run.
    assert!(!da.join("data").exists() && !db.join("data").exists(), "nothing went to a local directory");
    let sink = exportcore_distribution::ObjectSink::s3(
        "s3://exports/center",
        &exportcore_distribution::s3::S3Config::new(s3.endpoint(), S3Server::ACCESS_KEY, S3Server::SECRET_KEY),
    )
    .unwrap();
    use exportcore::Sink;
    let listed = rt.block_on(sink.list(None)).unwrap();
    for id in &ids {
        let prefix = exportcore::RunId::parse(id).unwrap().attempt_prefix(1).unwrap();
        let manifest = format!("{prefix}/manifest.json");
        assert!(listed.iter().any(|m| m.path.as_str() == manifest), "{manifest} in {listed:?}");
    }
    assert!(a.terminate(Duration::from_secs(30)).success());
    assert!(b.terminate(Duration::from_secs(30)).success());
}

#[test]
fn three_serve_nodes_execute_two_hundred_runs_each_exactly_once() {
    if !interop_enabled() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pg = pg::Pg::start();
    let url = rt.block_on(pg.database("three"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("url.key"), [7u8; 32]).unwrap();
    let args = ["--dev-token", "dev-token-acme=acme:export:read,export:write", "--url-key", "url.key"];
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    let mut nodes: Vec<Serve> = (0..3).map(|_| Serve::start_with(tmp.path(), &url, &samples, &args)).collect();
    let auth = ["-H", "Authorization: Bearer dev-token-acme", "-H", "X-StellaOps-Tenant: acme"];
    let mut ids = Vec::new();
    for i in 0..200 {
        let mut a: Vec<&str> = auth.to_vec();
        let u = format!("{}/export-center/runs", nodes[i % 3].base());
        a.extend(["-X", "POST", "-H", "Content-Type: application/json", "-d", r#"{"profileId":"json:raw"}"#, &u]);
        let reply = json(&curl(&a));
        ids.push(reply["runId"].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned());
    }
    // Wait for the queue to drain, reading the shared store.
    let (client, conn) = rt.block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls)).unwrap();
    rt.spawn(conn);
    let start = Instant::now();
    loop {
        let row = rt
            .block_on(client.query_one("SELECT count(*) FROM runs WHERE status IN ('succeeded', 'failed')", &[]))
            .unwrap();
        if row.get::<_, i64>(0) == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "200 runs did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Exactly once: every run succeeded at its first attempt, with one `started` and one
    // terminal event; and the work was shared.
    let row = rt
        .block_on(client.query_one(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE (record::jsonb->>'attempts')::int <> 1),
                    (SELECT count(*) FROM events WHERE event::jsonb->>'event' = 'started'),
                    (SELECT count(*) FROM events WHERE event::jsonb->>'event' IN ('completed', 'failed'))
             FROM runs",
            &[],
        ))
        .unwrap();
    let counts: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(counts, (200, 0, 200, 200), "(succeeded, retried, started, terminal)");
    for n in &mut nodes {
        assert!(n.terminate(Duration::from_secs(60)).success());
    }
    let per_node: Vec<usize> =
        nodes.iter().map(|n| n.log.lock().unwrap().lines().filter(|l| l.contains("run finished")).count()).collect();
    assert_eq!(per_node.iter().sum::<usize>(), 200, "each run finished once, on one node: {per_node:?}");
    assert!(per_node.iter().all(|&c| c > 0), "every node executed runs: {per_node:?}");
    println!("three nodes: runs executed per node {per_node:?}");
}

/// A tenant names `distribution.ref`; the server delivers only under the prefixes its
/// operator allowed (`--distribute-to`): a `file://` path of the tenant's choosing, or a
/// registry of its own (which would get the server's registry credentials), is refused when
/// the run is submitted.
#[test]
fn serve_delivers_only_where_its_operator_allows() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let prefix = format!("file://{}/", allowed.display());
    let each = format!("file://{}/each/{{tenant}}/", tmp.path().display());
    let serve = Serve::start(
        tmp.path(),
        &[
            "--dev-token",
            "tok-acme-1=acme:export:read,export:write",
            "--dev-token",
            "tok-globex=globex:export:read,export:write",
            "--distribute-to",
            &format!("acme={prefix}"),
            "--distribute-to",
            &each,
        ],
    );
    // Another tenant may not deliver under acme's prefix, nor under acme's `{tenant}` one.
    for (reference, code) in [
        (format!("{prefix}squat"), "400"),
        (format!("file://{}/each/acme/squat", tmp.path().display()), "400"),
        (format!("file://{}/each/globex/mine", tmp.path().display()), "202"),
    ] {
        let body = format!(r#"{{"profileId":"json:raw","distribution":{{"type":"object","ref":"{reference}"}}}}"#);
        let t = post_run(&serve, "tok-globex", "globex", &body);
        assert!(t.ends_with(&format!("\n{code}")), "globex to {reference}: {t}");
    }
    assert!(!allowed.join("squat").exists() && !tmp.path().join("each/acme").exists());
    let post = |distribution: &str| {
        let body = format!(r#"{{"profileId":"json:raw","distribution":{distribution}}}"#);
        post_run(&serve, "tok-acme-1", "acme", &body)
    };
    let outside = tmp.path().join("pwned");
    for refused in [
        format!(r#"{{"type":"object","ref":"file://{}"}}"#, outside.display()),
        format!(r#"{{"type":"object","ref":"{prefix}../pwned"}}"#),
        r#"{"type":"oci","ref":"oci://127.0.0.1:1/x/y:1"}"#.to_owned(),
    ] {
        let t = post(&refused);
        assert!(t.ends_with("\n400") && t.contains("distribution.ref"), "{refused}: {t}");
    }
    assert!(!outside.exists());
    let t = post(&format!(r#"{{"type":"object","ref":"{prefix}run-1"}}"#));
    assert!(t.ends_with("\n202"), "{t}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !allowed.join("run-1/manifest.json").is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "the allowed delivery never arrived: {}",
            serve.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--signing-key [TENANT:]NAME=FILE`: a tenant signs with the keys its operator gave it (a
/// tenant-bound one, a shared one), by name only; another tenant's key, an unknown name and a
/// server file are refused at submission. The delivered runs verify with the public key: a
/// signed json:raw bundle and a signed mirror (its TUF chain).
#[test]
fn serve_signs_with_the_keys_its_operator_names_for_each_tenant() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_exportctl");
    for name in ["acme", "shared"] {
        let prefix = tmp.path().join(name);
        let o = Command::new(exe).args(["keygen", "--algorithm", "ed25519", "--out"]).arg(&prefix).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let key = |name: &str| tmp.path().join(format!("{name}.key")).display().to_string();
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let prefix = format!("file://{}/", allowed.display());
    let serve = Serve::start(
        tmp.path(),
        &[
            "--dev-token",
            "tok-acme=acme:export:read,export:write",
            "--dev-token",
            "tok-globex=globex:export:read,export:write",
            "--distribute-to",
            &prefix,
            "--signing-key",
            &format!("acme:release={}", key("acme")),
            "--signing-key",
            &format!("common={}", key("shared")),
        ],
    );
    let post = |tenant: &str, profile: &str, key_ref: &str, dest: &str| {
        let body = format!(
            r#"{{"profileId":"{profile}","createdAt":"2030-01-01T00:00:00Z","distribution":{{"type":"object","ref":"{prefix}{dest}","signing":{{"enabled":true,"keyRef":"{key_ref}"}}}}}}"#
        );
        post_run(&serve, &format!("tok-{tenant}"), tenant, &body)
    };
    for (tenant, key_ref) in [("globex", "release"), ("acme", "nope"), ("acme", "file:/etc/passwd")] {
        let t = post(tenant, "json:raw", key_ref, "refused");
        assert!(t.ends_with("\n400") && t.contains("keyRef"), "{tenant} {key_ref}: {t}");
        assert!(!t.contains("acme:") && !t.contains("acme.key"), "the reply names no key of another tenant: {t}");
    }
    let verify = |dir: &str, public: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !allowed.join(dir).join("manifest.json").is_file() {
            assert!(Instant::now() < deadline, "{dir} never arrived: {}", serve.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
        let pub_key = tmp.path().join(format!("{public}.pub"));
        let o = Command::new(exe).arg("verify").arg(allowed.join(dir)).arg("--key").arg(&pub_key).output().unwrap();
        assert!(o.status.success(), "{dir} with {public}.pub: {}", text(&o));
        let other = tmp.path().join(format!("{}.pub", if public == "acme" { "shared" } else { "acme" }));
        let o = Command::new(exe).arg("verify").arg(allowed.join(dir)).arg("--key").arg(&other).output().unwrap();
        assert!(!o.status.success(), "{dir} must not verify with the other key");
    };
    assert!(post("acme", "json:raw", "release", "acme-raw").ends_with("\n202"));
    assert!(post("globex", "json:raw", "common", "globex-raw").ends_with("\n202"));
    assert!(post("acme", "mirror:full", "release", "acme-mirror").ends_with("\n202"));
    verify("acme-raw", "acme");
    verify("globex-raw", "shared");
    verify("acme-mirror", "acme");
    assert!(allowed.join("acme-mirror/tuf/metadata/root.json").is_file());
    assert!(!serve.log.lock().unwrap().contains("PRIVATE KEY"), "no key material in the log");
}

/// A client that sends half a request and stalls is disconnected after `--header-timeout`,
/// and the server keeps answering others meanwhile.
#[test]
fn serve_closes_connections_that_stall_in_their_headers() {
    use std::io::{Read, Write};
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let serve = Serve::start(tmp.path(), &["--dev-token", "tok-acme-1=acme:export:read", "--header-timeout", "1"]);
    let mut stalled: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&serve.addr).unwrap();
            s.write_all(b"GET /export-center/healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let o = curl(&["-f", &format!("{}/export-center/healthz", serve.base())]);
    assert!(o.status.success(), "others are served meanwhile");
    std::thread::sleep(Duration::from_millis(2500));
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        // Closed by the server: the read ends (408 or nothing), it does not time out.
        let r = s.read_to_end(&mut buf);
        assert!(r.is_ok(), "a stalled connection is still open: {r:?}");
    }
}
