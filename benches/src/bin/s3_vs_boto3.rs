//! Uploading to S3-compatible storage: our `push_s3` (multipart, every object read back and
//! its digest checked) against boto3's `upload_file` multipart (8 MiB parts, no read-back) of
//! the same file to the same local `s3s-fs`, in the same run (issue 13).
//!
//! ```text
//! cargo run --release -p exportcore-benches --bin s3-vs-boto3 -- [--size 1G] [--repeat 3]
//! ```
//! Needs `s3s-fs` and a Python with boto3 (`sh tests/interop/install.sh` installs both under
//! `~/.cache/exportcore`). Prints the medians, the ratio and our peak RSS.

use exportcore::run::RunBuilder;
use exportcore::{ArtifactSpec, ArtifactType, ExportContext, FsSink, Profile, ProfileDescriptor, RunRequest};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ACCESS: &str = "BENCHKEY";
const SECRET: &str = "bench-secret-0123456789abcdef";

/// One incompressible file.
#[derive(Debug)]
struct Blob {
    bytes: u64,
}

impl Profile for Blob {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("bench:blob", "one large file")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut ExportContext<'_>) -> exportcore::Result<()> {
        ctx.time_anchor(None);
        let spec = ArtifactSpec::new("blob.bin", ArtifactType::Data, "bin", "application/octet-stream")?;
        let n = self.bytes;
        ctx.write_artifact(spec, |w| {
            exportcore_benches::write_incompressible(w, n, 0x2545_F491_4F6C_DD1D)
                .map_err(|e| exportcore::ExportError::io("blob", e))
        })?;
        Ok(())
    }
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/exportcore")
}

fn child(dir: &Path, endpoint: &str, prefix: &str, read_back: bool) -> ExitCode {
    use exportcore_distribution::s3::{push_s3, S3Config, S3Target};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let target = S3Target::parse(&format!("s3://bench/{prefix}"), "t").expect("target");
    let start = Instant::now();
    let mut config = S3Config::new(endpoint, ACCESS, SECRET);
    config.skip_read_back = !read_back;
    if let Err(e) = rt.block_on(push_s3(dir, &target, &config)) {
        eprintln!("push failed: {}", e.report());
        return ExitCode::from(1);
    }
    println!("{:.3} {}", start.elapsed().as_secs_f64(), exportcore_benches::vm_hwm_kib());
    ExitCode::SUCCESS
}

const BOTO3: &str = r#"
import sys, time, boto3
from boto3.s3.transfer import TransferConfig
endpoint, key, secret, path, name = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1")
cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
start = time.monotonic()
s3.upload_file(path, "bench", name, Config=cfg)
print("%.3f" % (time.monotonic() - start))
"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(Path::new(&args[2]), &args[3], &args[4], args[5] == "read-back");
    }
    let size = exportcore_benches::arg(&args, "--size").and_then(exportcore_benches::parse_size).unwrap_or(1 << 30);
    let repeat: usize = exportcore_benches::arg(&args, "--repeat").and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        RunBuilder::new(Blob { bytes: size }, exportcore::MemoryEvidence::new(), FsSink::new(&out).expect("sink"))
            .staging_dir(tmp.path())
            .execute(RunRequest::new(exportcore::ProfileId::from_static("bench:blob")))
            .await
            .expect("blob run")
    });
    let storage = tmp.path().join("s3");
    std::fs::create_dir_all(storage.join("bench")).expect("bucket");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut server = Command::new(cache().join("s3s-fs/bin/s3s-fs"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS, "--secret-key", SECRET])
        .arg(&storage)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs (sh tests/interop/install.sh builds it)");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let endpoint = format!("http://127.0.0.1:{port}");
    let python = cache().join("interop-venv/bin/python");
    let (mut ours, mut fast, mut theirs, mut rss) = (Vec::new(), Vec::new(), Vec::new(), 0f64);
    for i in 0..repeat {
        for (mode, times) in [("read-back", &mut ours), ("no-read-back", &mut fast)] {
            let o = Command::new(std::env::current_exe().expect("exe"))
                .arg("--child")
                .arg(&out)
                .arg(&endpoint)
                .arg(format!("ours-{mode}-{i}"))
                .arg(mode)
                .output()
                .expect("child");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let f: Vec<f64> =
                String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|x| x.parse().ok()).collect();
            times.push(f[0]);
            rss = rss.max(f[1]);
        }
        let o = Command::new(&python)
            .arg("-c")
            .arg(BOTO3)
            .args([&endpoint, ACCESS, SECRET])
            .arg(out.join("blob.bin"))
            .arg(format!("theirs-{i}/blob.bin"))
            .output()
            .expect("python");
        assert!(o.status.success(), "boto3: {}", String::from_utf8_lossy(&o.stderr));
        theirs.push(String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(f64::NAN));
    }
    let _ = server.kill();
    let _ = server.wait();
    let (o, f, t) =
        (exportcore_benches::median(&ours), exportcore_benches::median(&fast), exportcore_benches::median(&theirs));
    println!(
        "| object | ours, read back (s) | ours, no read-back (s) | boto3 upload_file (s) | ratios | our peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.0} MiB | {o:.2} | {f:.2} | {t:.2} | {:.2}x / {:.2}x | {:.1} MiB |",
        size as f64 / f64::from(1 << 20),
        o / t,
        f / t,
        rss / 1024.0
    );
    ExitCode::SUCCESS
}
