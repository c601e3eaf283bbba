//! Pushing an OCI layout to a registry: our `push_oci` against `skopeo copy` of the same
//! layout, to the same loopback registry, in the same run (issue 13).
//!
//! ```text
//! cargo run --release -p exportcore-benches --bin push-vs-skopeo -- [--size 1G] [--repeat 3]
//! ```
//! Builds a run whose output is an OCI layout with one layer of `--size` incompressible bytes,
//! starts Debian's `docker-registry` on a loopback port (killed at the end), then alternates
//! our push (in a child process: wall time and peak RSS) and `skopeo copy oci:… docker://…`,
//! each into a fresh repository, `--repeat` times; prints the medians, the ratio (target
//! <= 1.0x) and our peak RSS (target <= 64 MiB).

use exportcore::run::RunBuilder;
use exportcore::{ArtifactSpec, ArtifactType, ExportContext, FsSink, Profile, ProfileDescriptor, RunRequest};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A layout with one big layer.
#[derive(Debug)]
struct Layout {
    bytes: u64,
}

impl Profile for Layout {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("bench:layout", "an OCI layout with one large layer")
    }
    fn validate(&self, _: &RunRequest) -> exportcore::Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut ExportContext<'_>) -> exportcore::Result<()> {
        ctx.time_anchor(None);
        let io = |e: std::io::Error| exportcore::ExportError::io("layer", e);
        let spec = ArtifactSpec::new("layer.bin", ArtifactType::Data, "bin", "application/octet-stream")?;
        let n = self.bytes;
        let (layer, ()) = ctx.write_artifact(spec, |w| {
            exportcore_benches::write_incompressible(w, n, 0x9E37_79B9_7F4A_7C15).map_err(io)
        })?;
        let blob = |ctx: &mut ExportContext<'_>, bytes: &[u8]| -> exportcore::Result<exportcore::Sha256Digest> {
            let d = exportcore::Sha256Digest::of(bytes);
            let spec = ArtifactSpec::new(
                &format!("oci/blobs/sha256/{d}"),
                ArtifactType::Data,
                "oci-blob",
                "application/octet-stream",
            )?;
            ctx.write_artifact(spec, |w| w.write_all(bytes).map_err(io))?;
            Ok(d)
        };
        let config = br#"{}"#;
        let config_digest = blob(ctx, config)?;
        let spec = ArtifactSpec::new(
            &format!("oci/blobs/sha256/{}", layer.sha256),
            ArtifactType::Data,
            "oci-blob",
            "application/octet-stream",
        )?;
        ctx.alias_artifact(spec, &layer)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.exportcore.bench.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": format!("sha256:{config_digest}"), "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": format!("sha256:{}", layer.sha256), "size": layer.size}],
        });
        let manifest = exportcore::canonical::to_vec(&manifest)
            .map_err(|e| exportcore::ExportError::internal("bench", e.to_string()))?;
        let md = blob(ctx, &manifest)?;
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{md}"),
              "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
        let index = exportcore::canonical::to_vec(&index)
            .map_err(|e| exportcore::ExportError::internal("bench", e.to_string()))?;
        let spec = ArtifactSpec::new("oci/index.json", ArtifactType::Metadata, "json", "application/json")?;
        ctx.write_artifact(spec, |w| w.write_all(&index).map_err(io))?;
        let spec = ArtifactSpec::new("oci/oci-layout", ArtifactType::Metadata, "json", "application/json")?;
        ctx.write_artifact(spec, |w| w.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io))?;
        Ok(())
    }
}

fn child(dir: &Path, uri: &str) -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let target = exportcore_distribution::OciTarget::parse(uri, "uri").expect("uri");
    let start = Instant::now();
    let pushed = rt.block_on(exportcore_distribution::push_oci(dir, &target, None, &Default::default()));
    if let Err(e) = pushed {
        eprintln!("push failed: {}", e.report());
        return ExitCode::from(1);
    }
    println!("{:.3} {}", start.elapsed().as_secs_f64(), exportcore_benches::vm_hwm_kib());
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(Path::new(&args[2]), &args[3]);
    }
    let size = exportcore_benches::arg(&args, "--size").and_then(exportcore_benches::parse_size).unwrap_or(1 << 30);
    let repeat: usize = exportcore_benches::arg(&args, "--repeat").and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("run");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        RunBuilder::new(Layout { bytes: size }, exportcore::MemoryEvidence::new(), FsSink::new(&out).expect("sink"))
            .staging_dir(tmp.path())
            .execute(RunRequest::new(exportcore::ProfileId::from_static("bench:layout")))
            .await
            .expect("layout run")
    });
    // A fresh registry (empty storage) for every push, so neither side finds blobs there.
    let registry = |n: &str| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let config = tmp.path().join(format!("registry-{n}.yml"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                tmp.path().join(format!("storage-{n}")).display()
            ),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry");
        std::thread::sleep(std::time::Duration::from_millis(800));
        (child, port)
    };
    let (mut ours, mut theirs, mut rss) = (Vec::new(), Vec::new(), 0f64);
    for i in 0..repeat {
        let (mut reg, port) = registry(&format!("ours-{i}"));
        let o = Command::new(std::env::current_exe().expect("exe"))
            .arg("--child")
            .arg(&out)
            .arg(format!("oci://127.0.0.1:{port}/bench:1"))
            .output()
            .expect("child");
        let _ = reg.kill();
        let _ = reg.wait();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let f: Vec<f64> =
            String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|x| x.parse().ok()).collect();
        ours.push(f[0]);
        rss = rss.max(f[1]);
        let (mut reg, port) = registry(&format!("theirs-{i}"));
        let start = Instant::now();
        let st = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", out.join("oci").display()))
            .arg(format!("docker://127.0.0.1:{port}/bench:1"))
            .status()
            .expect("skopeo");
        theirs.push(start.elapsed().as_secs_f64());
        let _ = reg.kill();
        let _ = reg.wait();
        assert!(st.success(), "skopeo copy failed");
    }
    let (o, t) = (exportcore_benches::median(&ours), exportcore_benches::median(&theirs));
    println!("| layer | ours (s) | skopeo copy (s) | ratio | our peak RSS |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} MiB | {o:.2} | {t:.2} | {:.2}x (target <= 1.0x) | {:.1} MiB (target <= 64) |",
        size as f64 / f64::from(1 << 20),
        o / t,
        rss / 1024.0
    );
    ExitCode::SUCCESS
}
