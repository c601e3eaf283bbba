//! `exportctl distribute` and `exportctl distributions` against a real registry (Debian's
//! `docker-registry` on a loopback port, killed by PID; with `EXPORTCORE_INTEROP=1`): the push,
//! its record in the run store, credentials from the environment only, and a failure that
//! names the target without showing the password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use common::{interop_enabled, Registry};
use std::path::Path;
use std::process::{Command, Output};

fn exportctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .current_dir(dir)
        .env_remove("EXPORTCORE_OCI_USERNAME")
        .env_remove("EXPORTCORE_OCI_PASSWORD")
        .env("DOCKER_CONFIG", dir.join("no-docker-config"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn distribute_records_and_lists_and_keeps_secrets_out() {
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    let o = exportctl(dir, &["run", "--profile", "trivy:db", "--evidence", samples.to_str().unwrap(), "--out", "db"]);
    assert!(o.status.success(), "{}", text(&o));
    let registry = Registry::start();
    let uri = format!("oci://{}/trivy-db:2", registry.addr());
    let o = exportctl(dir, &["distribute", "db", &uri]);
    assert!(o.status.success(), "{}", text(&o));
    let id = text(&o).lines().find_map(|l| l.trim().strip_prefix("recorded: ").map(str::to_owned)).expect("recorded");
    let o = exportctl(dir, &["distributions", "show", &id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(record["type"], "oci");
    assert_eq!(record["reference"], format!("{}/trivy-db:2", registry.addr()));
    let paths: Vec<&str> =
        record["artifacts"].as_array().unwrap().iter().map(|a| a["path"].as_str().unwrap()).collect();
    // The outputs whose bytes the pushed manifest carries: the database (and its copy as an
    // OCI blob), not the unpacked files.
    assert!(paths.contains(&"db.tar.gz") && !paths.contains(&"db/trivy.db"), "{paths:?}");
    assert!(record["artifacts"][0]["location"].as_str().unwrap().contains("@sha256:"));
    let o = exportctl(dir, &["distributions", "list", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len(), 1);
    let o = exportctl(dir, &["distributions", "show", "dist-nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("ERR_EXPORT_NOT_FOUND"), "{}", text(&o));

    // `run --distribute`: the push is a step of the run, recorded by the engine.
    let uri = format!("oci://{}/java-db:1", registry.addr());
    let args = ["run", "--profile", "trivy:java-db", "--evidence", samples.to_str().unwrap(), "--out", "java"];
    let o = exportctl(dir, &[&args[..], &["--distribute", &uri, "--json"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = exportctl(dir, &["distributions", "list", "--run", run["runId"].as_str().unwrap(), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["reference"], format!("{}/java-db:1", registry.addr()));
    let o = exportctl(
        dir,
        &[
            "run",
            "--profile",
            "trivy:java-db",
            "--evidence",
            samples.to_str().unwrap(),
            "--out",
            "x",
            "--distribute",
            "ftp://host/x",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("ERR_EXPORT_REQUEST_INVALID") && text(&o).contains("--distribute"), "{}", text(&o));

    // A registry that wants a password: none, a wrong one from the environment, the right one.
    let hash = bcrypt::hash("right-password", 4).unwrap();
    let locked = Registry::start_with_htpasswd("ci", &hash);
    let uri = format!("oci://{}/trivy-db:2", locked.addr());
    let o = exportctl(dir, &["distribute", "db", &uri]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("ERR_EXPORT_DISTRIBUTION_FAILED") && text(&o).contains(&locked.addr()), "{}", text(&o));
    let with = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_exportctl"))
            .current_dir(dir)
            .env("EXPORTCORE_OCI_USERNAME", "ci")
            .env("EXPORTCORE_OCI_PASSWORD", password)
            .env("DOCKER_CONFIG", dir.join("no-docker-config"))
            .args(["distribute", "db", &uri])
            .output()
            .unwrap()
    };
    let o = with("wrong-password-123");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!text(&o).contains("wrong-password-123"), "the password leaked: {}", text(&o));
    let o = with("right-password");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("right-password"));
    // A docker config.json works as well.
    use base64::Engine as _;
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:right-password");
    std::fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, locked.addr()))
        .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_exportctl"))
        .current_dir(dir)
        .env_remove("EXPORTCORE_OCI_USERNAME")
        .env_remove("EXPORTCORE_OCI_PASSWORD")
        .env("DOCKER_CONFIG", &docker)
        .args(["distribute", "db", &format!("oci://{}/other:2", locked.addr())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn object_storage_and_directories_through_the_cli() {
    use common::S3Server;
    if !interop_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
    let s3 = S3Server::start();
    let with_s3 = |secret: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_exportctl"))
            .current_dir(dir)
            .env("AWS_ENDPOINT_URL", s3.endpoint())
            .env("AWS_ACCESS_KEY_ID", S3Server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .args(args)
            .output()
            .unwrap()
    };
    let run = ["run", "--profile", "json:raw", "--evidence", samples.to_str().unwrap(), "--out", "raw", "--json"];
    let o = with_s3(S3Server::SECRET_KEY, &[&run[..], &["--distribute", "s3://exports/acme/raw"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o =
        with_s3(S3Server::SECRET_KEY, &["distributions", "list", "--run", record["runId"].as_str().unwrap(), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["type"], "object");
    let o = with_s3(S3Server::SECRET_KEY, &["distributions", "show", &id, "--presign", "300", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let url = shown["urls"]["json-raw.tar.zst"].as_str().unwrap().to_owned();
    let got = dir.join("got");
    let c = Command::new("curl").args(["-fsS", "-o"]).arg(&got).arg(&url).output().unwrap();
    assert!(c.status.success(), "{}", text(&c));
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(dir.join("raw/json-raw.tar.zst")).unwrap());
    // Wrong secret: exit 2, the target named, the secret nowhere.
    let o = with_s3("a-wrong-secret-9876", &["distribute", "raw", "s3://exports/again"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("ERR_EXPORT_DISTRIBUTION_FAILED") && text(&o).contains("s3://exports/again"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("a-wrong-secret-9876"));
    // A directory: the run's files copied and checked.
    let copy = dir.join("copy");
    let o = exportctl(dir, &["distribute", "raw", &format!("file://{}", copy.display())]);
    assert!(o.status.success(), "{}", text(&o));
    let o = exportctl(dir, &["verify", copy.to_str().unwrap()]);
    assert!(o.status.success(), "the copy verifies: {}", text(&o));
}
