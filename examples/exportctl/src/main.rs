//! `exportctl`: the command-line front end of exportcore.
//!
//! The command contract is fixed (see `docs/cli.md`). Exit codes: 0 success; 1 the run failed
//! or verification failed; 2 usage, I/O or "not supported" errors. Every error prints its
//! `ERR_EXPORT_*` code.

use clap::{Parser, Subcommand};
use exportcore::engine::{Exporter, Submission};
use exportcore::sign::Verifier as _;
use exportcore::store::{RunFilter, RunStore, SqliteStore};
use exportcore::verify::{Signatures, StalenessPolicy, VerifyOptions};
use exportcore::{
    Compression, DirEvidence, Distribution, DistributionType, Encryption, ExportError, Format, FsSink, Limits,
    ProfileId, Profiles, RunEvent, RunId, RunRequest, RunStatus, Selectors, Target, TenantId, TimeAnchor, Timestamp,
};
use futures::StreamExt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc: allocation-heavy JSON parsing on several threads is markedly faster than with
/// glibc malloc (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that treats a closed stdout (`exportctl runs list | head -1`) as the end of the
/// output, like other command-line tools: a quiet exit 0 instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            exit_on_write_error(e);
        }
    }};
}

/// `eprintln!` that never panics (a closed stderr loses the message, nothing else).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Text from files (names, messages quoting them) with control characters escaped, so an
/// ESC cannot reach the terminal and a newline cannot forge another line.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The exit status of a command whose stdout closes early: 0 (the reader had enough), unless
/// the command already knows it fails (`verify` printing its `FAIL` lines, a failed run's
/// summary): a closed pipe must not turn a failure into a success under `pipefail`.
static EXIT_ON_CLOSED_PIPE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// From here on a closed stdout exits with `code`.
fn failing(code: u8) {
    EXIT_ON_CLOSED_PIPE.store(code, std::sync::atomic::Ordering::Relaxed);
}

fn exit_on_write_error(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(i32::from(EXIT_ON_CLOSED_PIPE.load(std::sync::atomic::Ordering::Relaxed)));
    }
    errln!("error: ERR_EXPORT_IO: writing to stdout: {e}");
    std::process::exit(2);
}

#[derive(Parser, Debug)]
#[command(name = "exportctl", version, about = "Build, verify and inspect reproducible evidence export bundles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the available export profiles.
    Profiles {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run an export profile on an evidence directory into an output directory.
    Run(Box<RunArgs>),
    /// Verify a run's output directory or a bundle file.
    Verify {
        /// Output directory or bundle archive.
        path: PathBuf,
        /// Public key (PEM) to check signatures with; repeat to trust several.
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Refuse bundles whose createdAt is older than this (e.g. 30d, 12h, 90m, 3600s).
        #[arg(long)]
        max_age: Option<String>,
        /// Allowed clock drift for bundles dated in the future (default 5m with --max-age).
        #[arg(long)]
        max_drift: Option<String>,
        /// "Now" for the staleness check (RFC 3339; default: the system clock).
        #[arg(long)]
        now: Option<String>,
    },
    /// Inspect stored runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
        /// Run store: a SQLite file (default ./exports.sqlite) or `postgres://…`.
        #[arg(long, global = true)]
        store: Option<PathBuf>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        /// Tenant whose runs to show.
        #[arg(long, global = true, default_value = "default")]
        tenant: String,
    },
    /// Mirror bundle operations.
    Mirror {
        #[command(subcommand)]
        command: MirrorCommand,
    },
    /// Push an existing run output to a registry (`oci://HOST[:PORT]/REPO:TAG`), S3
    /// (`s3://BUCKET/PREFIX`) or a directory (`file://DIR`); verified first.
    Distribute {
        /// The run's output directory.
        out_dir: PathBuf,
        /// Where to: `oci://HOST[:PORT]/REPO:TAG` (credentials from EXPORTCORE_OCI_USERNAME /
        /// EXPORTCORE_OCI_PASSWORD or a docker config.json), `s3://BUCKET/PREFIX` (AWS_*
        /// variables) or `file://DIR`.
        uri: String,
        /// Sign the pushed manifest (cosign-compatible `sha256-<hex>.sig` tag) with this key.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        /// Use plain HTTP for this registry (loopback registries always do); repeatable.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
        /// Mount blobs from these repositories of the same registry when they are there.
        #[arg(long = "mount-from")]
        mount_from: Vec<String>,
        /// Run store the distribution is recorded in (default ./exports.sqlite, when it
        /// holds the run that wrote OUT).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Tenant of the run.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Inspect distribution records.
    Distributions {
        #[command(subcommand)]
        command: DistributionsCommand,
        /// Run store: a SQLite file (default ./exports.sqlite) or `postgres://…`.
        #[arg(long, global = true)]
        store: Option<PathBuf>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        /// Tenant whose distributions to show.
        #[arg(long, global = true, default_value = "default")]
        tenant: String,
    },
    /// Restore the plain tree of an encrypted mirror (`run --encrypt-to`).
    Decrypt {
        /// The encrypted mirror run's output directory.
        out_dir: PathBuf,
        /// An age identity file (`AGE-SECRET-KEY-1…`) matching one of the recipients.
        #[arg(long)]
        identity: PathBuf,
        /// Where the plain `mirror/` tree goes (absent or empty).
        #[arg(long)]
        out: PathBuf,
        /// Trusted public key (PEM): the run's signature must verify with one (repeatable).
        /// Without it the run is still checked against its manifest before anything is opened.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
    /// Generate a signing key pair.
    Keygen {
        /// ed25519, ecdsa-p256 or sm2.
        #[arg(long)]
        algorithm: String,
        /// Output prefix (PREFIX.key, PREFIX.pub).
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve the gateway HTTP contract (`/export-center/...`) until SIGTERM.
    Serve(ServeArgs),
    /// Manage a run store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Apply the schema migrations this build knows (opening a store does it too; run it
    /// once before starting many nodes, or to check a database).
    Migrate {
        /// `postgres://USER[:PASS]@HOST:PORT/DB` (password also from `PGPASSWORD`) or a SQLite
        /// file.
        #[arg(long)]
        store: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on (`127.0.0.1:PORT`; port 0 picks a free one). The bound address is
    /// printed on stderr.
    #[arg(long)]
    listen: String,
    /// A destination prefix requests may name in `distribution.ref` (repeatable),
    /// `[TENANT=]PREFIX`: `oci://registry.internal/{tenant}/` (each tenant under its own name),
    /// `acme=s3://exports/acme/` (that tenant only), `file:///srv/exports/common/` (every
    /// tenant: shared, so one may overwrite another's deliveries there). Without any, requests
    /// asking for an `oci` or `object` distribution are refused: the server never writes, or
    /// sends its registry credentials, where a tenant alone chose.
    #[arg(long = "distribute-to", value_name = "[TENANT=]PREFIX")]
    distribute_to: Vec<String>,
    /// The origin clients reach the server at (`https://exports.example`): DPoP proofs must
    /// name it in `htu`. Default: `http://` and the request's `Host` header (development).
    #[arg(long, value_name = "URL")]
    public_origin: Option<String>,
    /// Run store: a SQLite file (default exports.sqlite) or `postgres://…`.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Where runs publish their artifacts, one directory per run (default ./export-data), or
    /// object storage shared by several nodes: `s3://BUCKET/PREFIX` (endpoint, region and
    /// credentials from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The evidence runs read (default ./samples/evidence when present).
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// JWKS file of the token issuer (DPoP-bound JWT access tokens).
    #[arg(long, requires_all = ["issuer", "audience"])]
    jwks: Option<PathBuf>,
    /// Expected `iss` of access tokens.
    #[arg(long, requires = "jwks")]
    issuer: Option<String>,
    /// Expected `aud` of access tokens.
    #[arg(long, requires = "jwks")]
    audience: Option<String>,
    /// DEVELOPMENT ONLY: a static bearer token, `TOKEN=TENANT[,TENANT]:SCOPE[,SCOPE]`
    /// (repeatable). Sent as `Authorization: Bearer TOKEN`, no DPoP.
    #[arg(long = "dev-token")]
    dev_tokens: Vec<String>,
    /// Concurrent runs (default 2); 0 makes an API-only node that executes nothing (the
    /// runs it accepts are executed by the nodes sharing its store). At most 1024.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=1024))]
    workers: u16,
    /// Threads one export uses for its parallel stages (default: the cores less one, at least
    /// one, so exports never take the CPU the API needs). Outputs do not depend on it. At
    /// most 1024.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    export_threads: Option<u16>,
    /// Requests per tenant per minute (default 6000).
    #[arg(long, default_value_t = 6000)]
    rate_limit: u32,
    /// HMAC key file for signed download URLs (at least 32 bytes; share it across nodes).
    /// Default: a random key per start.
    #[arg(long)]
    url_key: Option<PathBuf>,
    /// Seconds a node's claim on a run lasts without a heartbeat (default 30, at most 86400): after a node
    /// dies, another takes its runs over within this plus half of it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lease_ttl: u64,
    /// Seconds a client has to send a request's headers; a connection that stalls longer is
    /// closed (slow-header clients cannot hold connections open). 1 to 3600.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout: u64,
    /// A key requests may sign with, `[TENANT:]NAME=FILE` (repeatable): a request's
    /// `distribution.signing.keyRef` names it by NAME. With `TENANT:` only that tenant may use
    /// it. PEM private keys (Ed25519, ECDSA P-256, SM2), loaded at start. Without any, signing
    /// requests are refused; a request can never name a file or variable of the server.
    #[arg(long = "signing-key", value_name = "[TENANT:]NAME=FILE")]
    signing_keys: Vec<String>,
    /// Queued runs one tenant may have (1 to 1000; the queue holds 1000): past it that
    /// tenant's submissions get 429 while the others' go on.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=1000))]
    max_queued_per_tenant: u64,
}

#[derive(Subcommand, Debug)]
enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs in this state (queued, running, succeeded, failed, expired).
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this profile.
        #[arg(long)]
        profile: Option<String>,
        /// At most this many runs (default 50, at most 200).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one run.
    Show { run_id: String },
    /// Print a run's events, one JSON object per line.
    Events { run_id: String },
}

#[derive(Subcommand, Debug)]
enum DistributionsCommand {
    /// Distribution records, newest first.
    List {
        /// Only this run's.
        #[arg(long)]
        run: Option<String>,
    },
    /// One distribution record, with where each artifact is.
    Show {
        /// Distribution id (`dist-…`).
        id: String,
        /// Also print, for objects in S3, a presigned GET URL valid this many seconds
        /// (credentials from the environment).
        #[arg(long, value_name = "SECONDS")]
        presign: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum MirrorCommand {
    /// Apply a delta bundle to a base, writing the new mirror to --out.
    Apply {
        /// The mirror the delta was built on (left unchanged).
        #[arg(long)]
        base: PathBuf,
        /// The mirror:delta run output.
        #[arg(long)]
        delta: PathBuf,
        /// Where the new mirror goes (absent or empty).
        #[arg(long)]
        out: PathBuf,
        /// Public key (PEM) the delta must be signed with; repeat to trust several.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Profile id (see `exportctl profiles`).
    #[arg(long)]
    profile: String,
    /// Evidence directory.
    #[arg(long)]
    evidence: PathBuf,
    /// Output directory (created; must be empty if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Time written into every output (RFC 3339). Default: SOURCE_DATE_EPOCH, else the newest
    /// evidence timestamp.
    #[arg(long)]
    created_at: Option<String>,
    /// Output format (repeatable): json or ndjson.
    #[arg(long = "format")]
    formats: Vec<String>,
    /// Evidence targets (repeatable): advisory, vex, policy. Default: all the profile supports.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Bundle compression: none, gzip or zstd.
    #[arg(long)]
    compression: Option<String>,
    /// Compression level of the archives written (gzip 1-9, zstd 1-19; profile default).
    #[arg(long)]
    compression_level: Option<u32>,
    /// Signing key file.
    #[arg(long)]
    sign_key: Option<PathBuf>,
    /// Output directory of an earlier run (mirror:delta).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Tenant.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Run store: a SQLite file (default ./exports.sqlite) or `postgres://…`.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Print the final run record as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Retention in days (sets expiresAt).
    #[arg(long)]
    retention_days: Option<u32>,
    /// Fail on evidence the profile would otherwise skip with a warning.
    #[arg(long)]
    strict: bool,
    /// Export only records of these OSV ecosystems (`PyPI`, `Alpine:v3.19`, or a family such
    /// as `Alpine`); repeatable.
    #[arg(long = "ecosystem", value_name = "ECOSYSTEM", num_args = 1..)]
    ecosystems: Vec<String>,
    /// Export only records modified at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Export only records modified before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Export only records about packages under this purl prefix (`pkg:pypi/django`,
    /// `pkg:npm/@angular/`); repeatable.
    #[arg(long = "package", value_name = "PURL", num_args = 1..)]
    packages: Vec<String>,
    /// Export only records about these advisory or vulnerability ids (aliases included);
    /// repeatable.
    #[arg(long = "id", value_name = "ID", num_args = 1..)]
    ids: Vec<String>,
    /// Encrypt the mirror's data to this age recipient (`age1…`) or to every recipient in
    /// this file; repeatable (mirror profiles).
    #[arg(long = "encrypt-to", value_name = "RECIPIENT|FILE")]
    encrypt_to: Vec<String>,
    /// After publishing, push the run to `oci://HOST[:PORT]/REPO:TAG` (signed with
    /// --sign-key when given), `s3://BUCKET/PREFIX` or `file://DIR`; the run succeeds only
    /// when the push does.
    #[arg(long, value_name = "URI")]
    distribute: Option<String>,
}

/// An error plus the exit code it maps to.
struct Failure {
    err: ExportError,
    exit: u8,
}

impl From<ExportError> for Failure {
    /// Exit 1 for what says the input does not verify (a file changed while it was checked,
    /// metadata past its time), 2 for everything else (usage, I/O, not supported).
    fn from(err: ExportError) -> Self {
        let exit = match err {
            ExportError::VerificationFailed { .. } | ExportError::Stale { .. } => 1,
            _ => 2,
        };
        Failure { err, exit }
    }
}

fn profiles() -> Profiles {
    let mut all = exportcore_json::profiles();
    all.extend(exportcore_trivy::profiles());
    all.extend(exportcore_devportal::profiles());
    all.extend(exportcore_mirror::profiles());
    all
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as usual; usage errors carry the contract's code too.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            errln!("error: ERR_EXPORT_REQUEST_INVALID: {}", text.trim_start_matches("error: ").trim_end());
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: ERR_EXPORT_INTERNAL: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(f) => {
            errln!("error: {}: {}", f.err.code(), printable(&f.err.report()));
            ExitCode::from(f.exit)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Profiles { json } => {
            let list = profiles().descriptors();
            if json {
                outln!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
            } else {
                for d in list {
                    outln!("{:<16} {}", d.id, d.description);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(*args).await,
        Command::Verify { path, key, max_age, max_drift, now } => {
            let mut options = trusted_keys(&key)?;
            let mirror = exportcore_mirror::is_mirror(&path);
            if now.is_some() && max_age.is_none() && max_drift.is_none() && !mirror {
                return Err(ExportError::invalid(
                    "--now",
                    "only applies with --max-age or --max-drift, or to a mirror (TUF expiry)",
                )
                .into());
            }
            let now = now.map(|t| Timestamp::parse(&t).map_err(|e| ExportError::invalid("--now", e))).transpose()?;
            if max_age.is_some() || max_drift.is_some() {
                let now = now.unwrap_or_else(Timestamp::now);
                let max_age = max_age.as_deref().map(|d| parse_duration("--max-age", d)).transpose()?;
                let max_drift = max_drift.as_deref().map(|d| parse_duration("--max-drift", d)).transpose()?;
                options.staleness = Some(StalenessPolicy {
                    max_age: max_age.unwrap_or(std::time::Duration::MAX),
                    max_drift: max_drift.unwrap_or(std::time::Duration::from_secs(300)),
                    now,
                });
            }
            if mirror {
                if exportcore_mirror::is_delta(&path) {
                    errln!("note: a mirror:delta: its files and signatures are checked here; `exportctl mirror apply` checks it against its base");
                }
                return verify_report(exportcore_mirror::verify_path_with(
                    &path,
                    &options,
                    now.unwrap_or_else(Timestamp::now),
                )?);
            }
            verify(&path, &options)
        }
        Command::Runs { command, store, json, tenant } => runs(command, store, json, &tenant).await,
        Command::Distributions { command, store, json, tenant } => distributions(command, store, json, &tenant).await,
        Command::Distribute { out_dir, uri, sign_key, insecure, mount_from, store, tenant } => {
            if !uri.starts_with("oci://") {
                return distribute_object(&out_dir, &uri, store, &tenant).await;
            }
            let target = exportcore_distribution::OciTarget::parse(&uri, "URI")?;
            let target = if insecure.contains(&target.registry) { target.insecure(true) } else { target };
            let mut options = exportcore_distribution::PushOptions::default();
            options.mount_from = mount_from;
            if let Some(k) = &sign_key {
                let pem = exportcore::files::read_capped_string(k, exportcore::files::MAX_KEY_BYTES)?;
                options.signer =
                    Some(exportcore_crypto::signer_from_pem(&pem).map_err(|e| key_error("--sign-key", k, e))?);
            }
            let creds = exportcore_distribution::Credentials::lookup(&target.registry)?;
            let pushed = exportcore_distribution::push_oci(&out_dir, &target, creds, &options).await?;
            outln!("pushed {} {}", pushed.reference, pushed.digest);
            outln!("  pull: {}", pushed.pinned);
            if let Some(tag) = &pushed.signature_tag {
                outln!("  signature: {}/{}:{tag}", target.registry, target.repository);
            }
            for image in &pushed.images {
                outln!("  image {} {}", image.reference, image.digest);
            }
            outln!(
                "  blobs: {} uploaded ({} bytes), {} already there, {} mounted",
                pushed.stats.uploaded,
                pushed.stats.bytes,
                pushed.stats.present,
                pushed.stats.mounted
            );
            let locate = |o: &exportcore::Output| {
                let digest = format!("sha256:{}", o.sha256);
                let image = pushed.images.iter().find(|i| i.digest == digest);
                pushed.blobs.contains(&o.sha256).then(|| image.map_or(&pushed.pinned, |i| &i.pinned).clone())
            };
            match record_distribution(&out_dir, store, &tenant, DistributionType::Oci, &pushed.reference, locate)
                .await?
            {
                Some(id) => outln!("  recorded: {id}"),
                None => {
                    errln!("note: no run in the store wrote {}; the distribution is not recorded", out_dir.display())
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Decrypt { out_dir, identity, out, key } => {
            let options = trusted_keys(&key)?;
            if key.is_empty() {
                errln!(
                    "note: no --key: the mirror is checked to be whole, not who made it (anyone can encrypt to a public age recipient)"
                );
            }
            {
                use std::os::unix::fs::PermissionsExt;
                if std::fs::metadata(&identity).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                    errln!(
                        "warning: {} holds a secret key and is readable by others: chmod 600 it",
                        printable(&identity.display().to_string())
                    );
                }
            }
            let target = out.clone();
            let n = until_signal(&out, exportcore_mirror::encryption::DECRYPT_STAGING_PREFIX, move || {
                let identities = exportcore_mirror::encryption::read_identities(&identity)?;
                exportcore_mirror::encryption::decrypt(&out_dir, &identities, &target, &options).map(|n| (n, out_dir))
            })
            .await?;
            outln!("decrypted {} files of {} into {}", n.0, n.1.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Mirror { command: MirrorCommand::Apply { base, delta, out, key } } => {
            let options = trusted_keys(&key)?;
            if key.is_empty() {
                errln!("note: no --key: the delta is checked to be whole, not who made it");
            }
            let (b, target) = (base.clone(), out.clone());
            let applied = until_signal(&out, exportcore_mirror::APPLY_STAGING_PREFIX, move || {
                exportcore_mirror::apply(&b, &delta, &target, &options)
            })
            .await?;
            outln!(
                "applied {} to {}: {} files from the base, {} from the delta, {} removed -> {}",
                applied.export_id,
                base.display(),
                applied.kept,
                applied.written,
                applied.removed,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { algorithm, out } => keygen(&algorithm, &out),
        Command::Serve(args) => serve(args).await,
        Command::Store { command: StoreCommand::Migrate { store } } => {
            match postgres_url(&store) {
                Some(url) => {
                    let pg = exportcore_postgres::PostgresStore::connect(url).await?;
                    outln!("{}: schema version {}", pg.label(), exportcore_postgres::SCHEMA_VERSION);
                }
                None => {
                    SqliteStore::open(&store)?;
                    outln!("{}: schema up to date", store.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_list<T: std::str::FromStr<Err = String>>(flag: &str, values: &[String]) -> Result<Vec<T>, Failure> {
    values.iter().map(|v| v.parse::<T>().map_err(|e| ExportError::invalid(flag, e).into())).collect()
}

fn build_request(args: &RunArgs) -> Result<RunRequest, Failure> {
    let mut req = RunRequest::new(ProfileId::parse(&*args.profile)?);
    req.formats = parse_list::<Format>("--format", &args.formats)?;
    req.targets = parse_list::<Target>("--target", &args.targets)?;
    req.compression = args
        .compression
        .as_deref()
        .map(|c| c.parse::<Compression>().map_err(|e| ExportError::invalid("--compression", e)))
        .transpose()?;
    req.created_at = args
        .created_at
        .as_deref()
        .map(|t| Timestamp::parse(t).map_err(|e| ExportError::invalid("--created-at", e)))
        .transpose()?;
    req.retention_days = args.retention_days;
    req.compression_level = args.compression_level;
    req.strict = args.strict;
    let time = |flag: &str, t: &Option<String>| {
        t.as_deref().map(|t| Timestamp::parse(t).map_err(|e| ExportError::invalid(flag, e))).transpose()
    };
    let mut selectors = Selectors::default()
        .ecosystems(args.ecosystems.iter().cloned())
        .packages(args.packages.iter().cloned())
        .ids(args.ids.iter().cloned());
    selectors.modified_since = time("--since", &args.since)?;
    selectors.modified_until = time("--until", &args.until)?;
    req.selectors = selectors;
    if !args.encrypt_to.is_empty() {
        req.encryption = Some(Encryption::new(encrypt_to(&args.encrypt_to)?.join(",")));
    }
    if let Some(uri) = &args.distribute {
        let kind = if uri.starts_with("oci://") {
            exportcore_distribution::OciTarget::parse(uri, "--distribute")?;
            DistributionType::Oci
        } else if uri.starts_with("s3://") {
            exportcore_distribution::s3::S3Target::parse(uri, "--distribute")?;
            DistributionType::Object
        } else if uri.starts_with("file://") {
            DistributionType::Object
        } else {
            let shown = exportcore::error::redact_urls(uri);
            return Err(ExportError::invalid("--distribute", format!("{shown:?}: oci://, s3:// or file://")).into());
        };
        req.distribution = Some(Distribution::new(kind, Some(uri.clone())));
    }
    req.validate(&Limits::default())?;
    Ok(req)
}

/// The age recipients `--encrypt-to` names: each value is a recipient (`age1…`) or a file of
/// them (one per line; `#` comments and blank lines skipped).
fn encrypt_to(values: &[String]) -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    for v in values {
        // A recipient, or an identity pasted where one belongs (refused below, never echoed).
        let lines = if v.trim().starts_with("age1") || v.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
            vec![v.trim().to_owned()]
        } else {
            let text =
                exportcore::files::read_capped_string(Path::new(v), exportcore::files::MAX_KEY_BYTES).map_err(|e| {
                    ExportError::invalid(
                        "--encrypt-to",
                        format!("{v:?} is neither an age recipient nor a readable file: {e}"),
                    )
                })?;
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
        };
        for l in lines {
            exportcore_mirror::encryption::AgeRecipient::parse(&l, "--encrypt-to")?;
            out.push(l);
        }
    }
    if out.is_empty() {
        return Err(ExportError::invalid("--encrypt-to", "names no recipient").into());
    }
    Ok(out)
}

/// Verify options trusting the public keys in `keys` (PEM files).
fn trusted_keys(keys: &[PathBuf]) -> exportcore::Result<VerifyOptions> {
    let mut options = VerifyOptions::default();
    for k in keys {
        let pem = exportcore::files::read_capped_string(k, exportcore::files::MAX_KEY_BYTES)?;
        options.verifiers.push(exportcore_crypto::verifier_from_pem(&pem).map_err(|e| key_error("--key", k, e))?);
    }
    Ok(options)
}

/// A key file's error naming the flag and the file (`--key signer.pub: not a PEM public key
/// (…)`); I/O errors already name the file and pass through.
fn key_error(flag: &str, file: &Path, e: ExportError) -> ExportError {
    if matches!(e, ExportError::Io { .. }) {
        return e;
    }
    let what = if flag == "--key" { "not a PEM public key" } else { "not a usable PEM private key" };
    let detail = e.to_string();
    let detail = detail.trim_start_matches("invalid request: ").trim_start_matches("key: ");
    ExportError::invalid(flag, format!("{}: {what} ({detail})", file.display()))
}

/// Runs `work` (which writes `out` through a staging directory named `prefix…` beside it and
/// publishes it with `files::publish_dir`) on a blocking thread; SIGINT or SIGTERM before the
/// publish removes this process's staging directory and fails with `ERR_EXPORT_CANCELLED`,
/// leaving `out` as it was. A signal during the publish waits for it; one after it lets the
/// command finish (`out` is whole and durable: saying "cancelled" would be wrong).
async fn until_signal<T: Send + 'static>(
    out: &Path,
    prefix: &'static str,
    work: impl FnOnce() -> exportcore::Result<T> + Send + 'static,
) -> exportcore::Result<T> {
    // The handlers first: a signal once the work has started must reach them.
    let handler = |kind: tokio::signal::unix::SignalKind| {
        tokio::signal::unix::signal(kind)
            .map_err(|e| ExportError::internal_caused("exportctl", "installing a signal handler", e))
    };
    let mut term = handler(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = handler(tokio::signal::unix::SignalKind::interrupt())?;
    let mut task = tokio::task::spawn_blocking(work);
    let done = tokio::select! {
        done = &mut task => done,
        _ = int.recv() => cancelled(out, prefix, task).await,
        _ = term.recv() => cancelled(out, prefix, task).await,
    };
    done.map_err(|e| ExportError::internal_caused("exportctl", "the worker thread", e))?
}

/// Cancels the publish to come; if one already happened, waits for the work to finish.
/// Otherwise exits at once (the worker thread would run on to the end, the runtime waiting
/// for it): the staging directory removed, `ERR_EXPORT_CANCELLED`, exit code 1.
async fn cancelled<T>(
    out: &Path,
    prefix: &str,
    task: tokio::task::JoinHandle<exportcore::Result<T>>,
) -> std::result::Result<exportcore::Result<T>, tokio::task::JoinError> {
    if exportcore::files::cancel_publishing() {
        return task.await;
    }
    exportcore::files::remove_own_staging(out, prefix);
    let e = ExportError::Cancelled;
    errln!("error: {}: {}", e.code(), printable(&e.report()));
    std::process::exit(1)
}

/// `serve --signing-key [TENANT:]NAME=FILE`: the keys loaded at start, and a resolver that
/// gives a request's `keyRef` NAME the key of its tenant, else the key every tenant may use.
/// A name the tenant may not use reads as unknown (no hint of other tenants' keys).
fn serve_signers(specs: &[String]) -> Result<Option<exportcore::engine::SignerResolver>, Failure> {
    type Keys = std::collections::BTreeMap<(Option<TenantId>, String), Arc<dyn exportcore::sign::Signer>>;
    if specs.is_empty() {
        return Ok(None);
    }
    let mut keys = Keys::new();
    for spec in specs {
        let bad = |why: &str| ExportError::invalid("--signing-key", format!("{spec:?}: {why}"));
        let (who, file) = spec.split_once('=').ok_or_else(|| bad("expected [TENANT:]NAME=FILE"))?;
        let (tenant, name) = match who.split_once(':') {
            Some((t, n)) => (Some(TenantId::parse(t)?), n),
            None => (None, who),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(bad("NAME is 1 to 64 letters, digits, '.', '_' or '-'").into());
        }
        let path = Path::new(file);
        let signer = exportcore_crypto::KeyResolvers::new()
            .signer(&format!("file:{file}"))
            .map_err(|e| key_error("--signing-key", path, e))?;
        if keys.insert((tenant, name.to_owned()), signer).is_some() {
            return Err(bad("that name is given twice").into());
        }
    }
    let keys = Arc::new(keys);
    Ok(Some(Arc::new(move |tenant: &TenantId, name: &str| {
        keys.get(&(Some(tenant.clone()), name.to_owned()))
            .or_else(|| keys.get(&(None, name.to_owned())))
            .cloned()
            .ok_or_else(|| {
                ExportError::invalid(
                    "distribution.signing.keyRef",
                    format!("no signing key named {name:?} is configured for tenant {tenant}"),
                )
            })
    })))
}

/// `$TMPDIR/{prefix}-{uid}`: a directory of this user alone, created 0700, or refused when
/// it exists as something else (a symlink, another owner's, open to others): on a shared
/// host another user could otherwise read or swap what runs stage there.
fn private_temp_dir(prefix: &str) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let tmp = std::env::temp_dir();
    let me = tempfile::tempfile_in(&tmp).and_then(|f| f.metadata()).map_err(|e| ExportError::io(&tmp, e))?.uid();
    let dir = tmp.join(format!("{prefix}-{me}"));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ExportError::io(&dir, e).into()),
    }
    let m = std::fs::symlink_metadata(&dir).map_err(|e| ExportError::io(&dir, e))?;
    if !m.is_dir() || m.uid() != me || m.mode() & 0o077 != 0 {
        return Err(ExportError::invalid(
            "--data",
            format!(
                "{} is not a private directory of this user (a symlink, another owner's, or open to others): remove it",
                dir.display()
            ),
        )
        .into());
    }
    Ok(dir)
}

/// Where a run into `out` stages its files: the directory that holds `out`.
fn staging_root(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The output directory, claimed for one run: created if absent, locked (`flock` on the
/// directory itself, released when the process ends, even by SIGKILL), and only then checked
/// to be empty. Two runs into one `--out` cannot both pass: the second finds the lock held, or
/// the directory no longer empty.
struct OutDir {
    out: PathBuf,
    created: bool,
    kept: bool,
    _lock: std::fs::File,
}

impl OutDir {
    fn claim(out: &Path) -> Result<Self, Failure> {
        let created = match std::fs::create_dir(out) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(out).map_err(|e| ExportError::io(out, e))?;
                true
            }
            Err(e) => return Err(ExportError::io(out, e).into()),
        };
        let lock = std::fs::File::open(out).map_err(|e| ExportError::io(out, e))?;
        if !lock.metadata().map_err(|e| ExportError::io(out, e))?.is_dir() {
            return Err(ExportError::invalid("--out", format!("{} is not a directory", out.display())).into());
        }
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ExportError::invalid(
                    "--out",
                    format!("{} is being written by another exportctl run", out.display()),
                )
                .into())
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ExportError::io(out, e).into()),
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| ExportError::io(out, e))?;
        if entries.next().is_some() {
            return Err(ExportError::invalid("--out", format!("{} exists and is not empty", out.display())).into());
        }
        Ok(Self { out: out.to_path_buf(), created, kept: false, _lock: lock })
    }

    /// The run succeeded: `--out` stays.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for OutDir {
    /// Leave `--out` as it was found: the engine already deleted a failed run's files; the
    /// directories they needed go too (only empty ones, never a file), and so does `--out`
    /// itself when this run created it.
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let out = self.out.as_path();
        fn remove_empty_dirs(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_empty_dirs(&e.path());
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
        remove_empty_dirs(out);
        if self.created {
            let _ = std::fs::remove_dir(out);
        }
    }
}

async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    // What the engine cannot report through the run (a store that fails to save its final
    // state, a run retried after a transient failure) it logs on stderr: errors, and the
    // engine's warnings (`EXPORTCTL_LOG` for more or less).
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXPORTCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,exportcore::engine=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
    let mut request = build_request(&args)?;
    // `--base` configures mirror:delta (the only profile that takes one).
    let mut registry = profiles();
    match (&args.base, request.profile_id.as_str()) {
        (Some(base), "mirror:delta") => registry.register(Arc::new(exportcore_mirror::MirrorDelta::new(base))),
        (Some(_), other) => {
            return Err(ExportError::invalid("--base", format!("only mirror:delta takes a base, not {other}")).into())
        }
        (None, _) => {}
    }
    // An output inside the evidence would be read back as evidence by the next run; one
    // inside the base would change the base.
    for (input, flag) in std::iter::once((&args.evidence, "--evidence")).chain(args.base.iter().map(|b| (b, "--base")))
    {
        if exportcore::files::lies_inside(&args.out, input) {
            return Err(ExportError::invalid("--out", format!("{} lies inside {flag}", args.out.display())).into());
        }
    }
    let signer = match &args.sign_key {
        None => None,
        Some(key) => {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(key).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                errln!("warning: signing key {} is readable by group or others (chmod 600 it)", key.display());
            }
            let key_ref = format!("file:{}", key.display());
            // The destination is the sink (--out): no `ref`.
            let d =
                request.distribution.take().unwrap_or_else(|| Distribution::new(DistributionType::Filesystem, None));
            request.distribution = Some(d.signed(key_ref.clone()));
            Some(exportcore_crypto::KeyResolvers::new().signer(&key_ref).map_err(|e| key_error("--sign-key", key, e))?)
        }
    };
    registry.get(&request.profile_id)?.validate(&request)?;
    // A mirror signs TUF metadata with the key: one TUF has no scheme for (SM2) is refused
    // now, not after the run is built.
    if let (Some(s), true) = (&signer, request.profile_id.as_str().starts_with("mirror:")) {
        exportcore_mirror::tuf::key_object(&**s)?;
    }
    let evidence = DirEvidence::new(&args.evidence)?;
    let pinned = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(sde) => Some(TimeAnchor::from_source_date_epoch(&sde)?),
        Err(_) => None,
    };
    // Checked before --out is claimed: a refused run leaves it as it found it.
    let tenant = TenantId::parse(&*args.tenant)?;
    let store_path = args.store.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    let (store, lock) = open_engine_store(&store_path).await?;
    let out_dir = OutDir::claim(&args.out)?;
    let sink = FsSink::new(&args.out)?;
    // Stage beside --out: the same filesystem (publishing links instead of copying), and a
    // staging directory a killed run left there is swept by the next run.
    let staging = staging_root(&args.out);
    exportcore::run::sweep_stale_staging(&staging)?;
    let mut builder = Exporter::builder()
        .profiles(registry)
        .sink(sink)
        .store_arc(store)
        .evidence(evidence)
        .per_run_prefix(false)
        .concurrency(1)
        .pinned_time(pinned)
        .staging_dir(&staging)
        .poll_interval(std::time::Duration::from_millis(200));
    if let Some(signer) = signer {
        builder = builder.signer_resolver(Arc::new(move |_, _| Ok(Arc::clone(&signer))));
    }
    builder = builder.distributor(Arc::new(exportcore_distribution::OciDistributor::new())).distributor(Arc::new(
        exportcore_distribution::ObjectDistributor::new(exportcore_distribution::s3::S3Config::from_env()),
    ));
    let exporter = builder.build()?;
    lock.recover_then_share(&exporter).await?;

    // Local: a `serve` node sharing the store never runs it with its own evidence and sink.
    let accepted = match exporter.submit(Submission::new(tenant.clone(), request).local()).await {
        Ok(a) => a,
        Err(e) => {
            drop(out_dir);
            return Err(e.into());
        }
    };
    let progress = ProgressDisplay::new();
    // SIGINT / SIGTERM cancel the run: it fails with ERR_EXPORT_CANCELLED, deletes its staging
    // and leaves --out as it found it.
    let on_signal = {
        let exporter = exporter.clone();
        let (tenant, run_id) = (tenant.clone(), accepted.run_id.clone());
        tokio::spawn(async move {
            if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                errln!("note: signal received: cancelling run {run_id}");
                let _ = exporter.cancel(&tenant, &run_id).await;
            }
        })
    };
    let exec = {
        let exporter = exporter.clone();
        let (tenant, run_id) = (tenant.clone(), accepted.run_id.clone());
        tokio::spawn(async move { exporter.execute_now(&tenant, &run_id).await })
    };
    let mut events = exporter.events(&tenant, &accepted.run_id, 0);
    let show = |ev: Option<exportcore::Result<exportcore::store::StoredEvent>>| match ev {
        Some(Ok(ev)) => progress.event(&ev.event),
        Some(Err(e)) => errln!("warning: event stream: {}", printable(&e.report())),
        None => {}
    };
    let mut exec = exec;
    let done = loop {
        tokio::select! {
            ev = events.next() => {
                let end = ev.is_none();
                show(ev);
                if end {
                    break (&mut exec).await;
                }
            }
            // The run is over: show what the store has left, without waiting for a terminal
            // event a failing store may never hold.
            done = &mut exec => {
                while let Ok(Some(ev)) = tokio::time::timeout(std::time::Duration::from_millis(500), events.next()).await {
                    show(Some(ev));
                }
                break done;
            }
        }
    };
    let run = done.map_err(|e| ExportError::internal_caused("exportctl", "the run task stopped", e))??;
    on_signal.abort();
    if !run.status.is_terminal() {
        drop(out_dir);
        return Err(ExportError::internal(
            "exportctl",
            format!(
                "run {} ended, but the store {} did not save its final state (it still says {}); see the log above",
                run.run_id,
                store_label(&store_path),
                run.status
            ),
        )
        .into());
    }
    progress.finish(&run.run_id);
    if run.status == RunStatus::Succeeded {
        out_dir.keep();
    } else {
        // Removed now, before anything is printed: a closed stdout exits at once.
        drop(out_dir);
        failing(1);
    }
    drop(lock);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
    } else {
        outln!("run {} {}", run.run_id, run.status);
        for o in &run.outputs {
            outln!("  {:<28} {:>12} sha256:{}", o.path, o.size, o.sha256);
        }
    }
    for w in &run.warnings {
        errln!("warning: {}: {}", w.code, printable(&w.message));
    }
    match run.errors.first() {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            errln!("error: {}: {}", e.code, printable(&e.message));
            Ok(ExitCode::from(1))
        }
    }
}

/// `exportctl serve`: the gateway over an engine with every built-in profile.
async fn serve(args: ServeArgs) -> Result<ExitCode, Failure> {
    use exportcore_gateway::auth::{Authenticator, DevTokens, DpopAuthenticator};
    // A server logs what it does on stderr (run ids, tenants, profiles, codes; never a secret):
    // `info` by default, `EXPORTCTL_LOG` takes tracing's filter syntax (`warn`, `exportcore=debug`).
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXPORTCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
    let auth: Arc<dyn Authenticator> = match (&args.jwks, args.dev_tokens.is_empty()) {
        (Some(jwks), true) => Arc::new(DpopAuthenticator::from_jwks_file(
            jwks,
            args.issuer.as_deref().unwrap_or_default(),
            args.audience.as_deref().unwrap_or_default(),
        )?),
        (None, false) => {
            errln!(
                "warning: DEVELOPMENT MODE: {} static bearer token(s) accepted without DPoP; never use this in production",
                args.dev_tokens.len()
            );
            Arc::new(DevTokens::parse(&args.dev_tokens)?)
        }
        (Some(_), false) => {
            return Err(ExportError::invalid("--dev-token", "use either --jwks or --dev-token, not both").into())
        }
        (None, true) => {
            return Err(ExportError::invalid(
                "--jwks",
                "no authentication configured: pass --jwks/--issuer/--audience (or --dev-token for development)",
            )
            .into())
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    exportcore::parallel::set_default_workers(args.export_threads.map_or(cores.saturating_sub(1), usize::from).max(1));
    let data = args.data.clone().unwrap_or_else(|| PathBuf::from("export-data"));
    // A directory, or object storage shared by every node (`s3://BUCKET/PREFIX`; endpoint,
    // region and credentials from the AWS_* environment).
    let (sink, staging): (Arc<dyn exportcore::Sink>, PathBuf) = match data.to_str().filter(|d| d.starts_with("s3://")) {
        Some(uri) => {
            let config = exportcore_distribution::s3::S3Config::from_env();
            let staging = private_temp_dir("exportcore-staging")?;
            (Arc::new(exportcore_distribution::ObjectSink::s3(uri, &config)?), staging)
        }
        None => {
            std::fs::create_dir_all(&data).map_err(|e| ExportError::io(&data, e))?;
            // Stage beside --data, as `run` stages beside --out: same filesystem.
            (Arc::new(FsSink::new(&data)?), staging_root(&data))
        }
    };
    let evidence_dir = args.evidence.clone().unwrap_or_else(|| PathBuf::from("samples/evidence"));
    let evidence = DirEvidence::new(&evidence_dir)?;
    let store_path = args.store.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    let (store, lock) = open_engine_store(&store_path).await?;
    exportcore::run::sweep_stale_staging(&staging)?;
    // mirror:delta needs a base directory no request can name: not offered here.
    let mut offered = exportcore_json::profiles();
    offered.extend(exportcore_trivy::profiles());
    offered.extend(exportcore_devportal::profiles());
    offered.register(Arc::new(exportcore_mirror::MirrorFull::default()));
    let exporter = Exporter::builder()
        .profiles(offered)
        .sink_arc(sink)
        .store_arc(store)
        .evidence(evidence)
        .concurrency(usize::from(args.workers.max(1)))
        .max_queued_per_tenant(args.max_queued_per_tenant)
        .lease_ttl(std::time::Duration::from_secs(args.lease_ttl))
        .staging_dir(&staging)
        .distributor(Arc::new(exportcore_gateway::HttpDistributor))
        .distributor(Arc::new(
            exportcore_distribution::OciDistributor::new()
                .only(exportcore_distribution::Destinations::only(args.distribute_to.clone())),
        ))
        .distributor(Arc::new(
            exportcore_distribution::ObjectDistributor::new(exportcore_distribution::s3::S3Config::from_env())
                .only(exportcore_distribution::Destinations::only(args.distribute_to.clone())),
        ));
    let exporter = match serve_signers(&args.signing_keys)? {
        Some(resolver) => exporter.signer_resolver(resolver),
        None => exporter,
    }
    .build()?;
    lock.recover_then_share(&exporter).await?;
    // Presign with the settings the object distributor uploads with, never a blank default
    // (which would fall back to a cloud metadata endpoint).
    let mut config = exportcore_gateway::GatewayConfig::default()
        .rate_limit(args.rate_limit.max(1), std::time::Duration::from_secs(60))
        .s3(exportcore_distribution::s3::S3Config::from_env());
    if let Some(origin) = &args.public_origin {
        config = config.public_origin(origin.clone());
    }
    if let Some(path) = &args.url_key {
        let key = std::fs::read(path).map_err(|e| ExportError::io(path, e))?;
        config = config.url_signer(exportcore_distribution::signed_url::UrlSigner::new("k1", &key)?);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| ExportError::io(&args.listen, e))?;
    let addr = listener.local_addr().map_err(|e| ExportError::io(&args.listen, e))?;
    errln!("listening on http://{addr}/export-center/ (data {}, store {})", data.display(), store_label(&store_path));
    let options = exportcore_gateway::ServeOptions::new(auth)
        .config(config)
        .workers(args.workers > 0)
        .header_read_timeout(std::time::Duration::from_secs(args.header_timeout.max(1)));
    exportcore_gateway::serve(exporter, listener, options, exportcore_gateway::shutdown_signal()).await?;
    errln!("stopped");
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

/// The default run store.
const DEFAULT_STORE: &str = "exports.sqlite";

/// `--store` as a PostgreSQL URL, if it is one.
fn postgres_url(store: &Path) -> Option<&str> {
    store.to_str().filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// `--store` for messages: the path, or the URL as the connection reads it, without its
/// password (`PostgresStore::label_of`).
fn store_label(store: &Path) -> String {
    match postgres_url(store) {
        Some(url) => exportcore_postgres::PostgresStore::label_of(url),
        None => store.display().to_string(),
    }
}

/// The store an engine runs on. A SQLite file comes with its engine lock (runs left running
/// by a dead process are recovered when no other engine is alive). A PostgreSQL store is
/// shared by many nodes, so no node may declare another's running runs dead at start.
async fn open_engine_store(store: &Path) -> Result<(Arc<dyn RunStore>, EngineLock), Failure> {
    match postgres_url(store) {
        Some(url) => Ok((Arc::new(exportcore_postgres::PostgresStore::connect(url).await?), EngineLock::shared())),
        None => Ok((Arc::new(SqliteStore::open(store)?), EngineLock::open(store)?)),
    }
}

/// The store `--store` names, for reading; `None` when a SQLite file does not exist yet.
async fn open_reader_store(store: Option<PathBuf>) -> Result<Option<Arc<dyn RunStore>>, Failure> {
    let path = store.unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    match postgres_url(&path) {
        Some(url) => Ok(Some(Arc::new(exportcore_postgres::PostgresStore::connect(url).await?))),
        None if !path.exists() => Ok(None),
        None => Ok(Some(Arc::new(SqliteStore::open(&path)?))),
    }
}

/// As [`open_reader_store`], but a missing store is an error.
async fn open_existing_store(store: Option<PathBuf>) -> Result<Arc<dyn RunStore>, Failure> {
    let path = store.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    open_reader_store(store)
        .await?
        .ok_or_else(|| ExportError::io(&path, std::io::Error::new(std::io::ErrorKind::NotFound, "no run store")).into())
}

/// `<store>.lock`: every engine process (`exportctl run`) holds it shared while it runs; the
/// recovery of runs left `running` by a dead process happens only under the exclusive lock,
/// i.e. when no engine is alive.
struct EngineLock {
    /// `None` for `--store :memory:`: a private store no other process can see.
    file: Option<std::fs::File>,
    /// False for a store shared by nodes (PostgreSQL): no start-up recovery.
    recover: bool,
}

impl EngineLock {
    /// The lock beside the store's canonical path: a symlink or another spelling of the same
    /// store locks the same file.
    fn open(store: &Path) -> Result<Self, Failure> {
        if store == Path::new(":memory:") {
            return Ok(Self { file: None, recover: true });
        }
        let store = std::fs::canonicalize(store).map_err(|e| ExportError::io(store, e))?;
        let path = PathBuf::from(format!("{}.lock", store.display()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ExportError::io(&path, e))?;
        Ok(Self { file: Some(file), recover: true })
    }

    /// No lock and no recovery: the store is shared by nodes (PostgreSQL).
    fn shared() -> Self {
        Self { file: None, recover: false }
    }

    /// Recovers interrupted runs if no other engine is alive: through `exporter` when given
    /// (which also deletes the partial outputs of `serve`'s runs), else on the bare store.
    async fn recover_if_alone(&self, store: &dyn RunStore, exporter: Option<&Exporter>) -> Result<Vec<RunId>, Failure> {
        if !self.recover || self.file.as_ref().is_some_and(|f| f.try_lock().is_err()) {
            return Ok(Vec::new());
        }
        let ids = match exporter {
            Some(ex) => ex.recover_interrupted().await?,
            None => exportcore::engine::recover_interrupted(store, &exportcore::engine::SystemClock).await?,
        };
        if let Some(f) = &self.file {
            let _ = f.unlock();
        }
        for id in &ids {
            errln!("note: run {id} was interrupted (its process stopped); marked failed with ERR_EXPORT_INTERRUPTED");
        }
        Ok(ids)
    }

    async fn recover_then_share(&self, exporter: &Exporter) -> Result<(), Failure> {
        self.recover_if_alone(&**exporter.store(), Some(exporter)).await?;
        if let Some(f) = &self.file {
            f.lock_shared().map_err(|e| ExportError::io("engine lock", e))?;
        }
        Ok(())
    }
}

/// `exportctl distribute OUT s3://BUCKET/PREFIX|file://DIR`: credentials for S3 from the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, `AWS_REGION`).
async fn distribute_object(
    out_dir: &Path,
    uri: &str,
    store: Option<PathBuf>,
    tenant: &str,
) -> Result<ExitCode, Failure> {
    let placed: std::collections::BTreeMap<String, String> = if let Some(dir) = uri.strip_prefix("file://") {
        let copied = exportcore_distribution::push_dir(out_dir, Path::new(dir)).await?;
        outln!(
            "copied {} files to {} (hard-linked where on the same file system: edit neither copy)",
            copied.len(),
            dir
        );
        copied.into_iter().map(|(p, at)| (p, at.display().to_string())).collect()
    } else if uri.starts_with("s3://") {
        let target = exportcore_distribution::s3::S3Target::parse(uri, "URI")?;
        let pushed =
            exportcore_distribution::s3::push_s3(out_dir, &target, &exportcore_distribution::s3::S3Config::from_env())
                .await?;
        outln!("uploaded {} objects ({} bytes) to {}", pushed.objects.len(), pushed.bytes, pushed.url);
        pushed.objects.into_iter().map(|o| (o.path, format!("s3://{}/{}", target.bucket, o.key))).collect()
    } else {
        let shown = exportcore::error::redact_urls(uri);
        return Err(ExportError::invalid("URI", format!("{shown:?}: oci://, s3:// or file://")).into());
    };
    let locate = |o: &exportcore::Output| placed.get(o.path.as_str()).cloned();
    match record_distribution(out_dir, store, tenant, DistributionType::Object, uri, locate).await? {
        Some(id) => outln!("  recorded: {id}"),
        None => errln!("note: no run in the store wrote {}; the distribution is not recorded", out_dir.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// Records a push in the run store, on the run whose outputs live in `out_dir`; the record's
/// id, or `None` when no run of `tenant` in the store wrote there.
async fn record_distribution(
    out_dir: &Path,
    store: Option<PathBuf>,
    tenant: &str,
    kind: DistributionType,
    reference: &str,
    locate: impl Fn(&exportcore::Output) -> Option<String>,
) -> Result<Option<String>, Failure> {
    let tenant = TenantId::parse(tenant)?;
    let Some(store) = open_reader_store(store).await? else { return Ok(None) };
    let dir = std::fs::canonicalize(out_dir).map_err(|e| ExportError::io(out_dir, e))?;
    let prefix = format!("file://{}/", dir.display());
    let mut filter = RunFilter { limit: Some(200), ..Default::default() };
    loop {
        let page = store.list(&tenant, &filter).await?;
        let found =
            page.runs.iter().find(|r| !r.outputs.is_empty() && r.outputs.iter().all(|o| o.url.starts_with(&prefix)));
        if let Some(run) = found {
            // The outputs the distribution placed (for an OCI push: the ones the pushed
            // manifest carries), each with its location.
            let artifacts = run
                .outputs
                .iter()
                .filter_map(|o| {
                    locate(o).map(|at| exportcore::DistributedArtifact::new(o.path.clone(), o.sha256, o.size, at))
                })
                .collect();
            let mut record = exportcore::DistributionRecord::succeeded(
                run.run_id.clone(),
                tenant.clone(),
                kind,
                reference,
                artifacts,
                Timestamp::now(),
            );
            record.expires_at = run.expires_at;
            store.put_distribution(&record).await?;
            return Ok(Some(record.id));
        }
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
            None => return Ok(None),
        }
    }
}

async fn distributions(
    command: DistributionsCommand,
    store: Option<PathBuf>,
    json: bool,
    tenant: &str,
) -> Result<ExitCode, Failure> {
    let tenant = &TenantId::parse(tenant)?;
    let store = open_existing_store(store).await?;
    match command {
        DistributionsCommand::List { run } => {
            let run = run.map(RunId::parse).transpose()?;
            let list = store.list_distributions(tenant, run.as_ref()).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
            } else {
                for d in &list {
                    let status =
                        if d.status == exportcore::DistributionStatus::Succeeded { "succeeded" } else { "failed" };
                    outln!("{} {} {:<9} {} {}", d.id, d.run_id, status, d.kind, printable(&d.reference));
                }
            }
        }
        DistributionsCommand::Show { id, presign } => {
            let d = store.get_distribution(tenant, &id).await?;
            // URLs a reader can use now (records keep locations): presigned for S3 objects.
            let mut urls = std::collections::BTreeMap::new();
            if let Some(secs) = presign {
                let config = exportcore_distribution::s3::S3Config::from_env();
                let ttl = std::time::Duration::from_secs(secs);
                for u in exportcore_distribution::reader_urls(&d, &config, None, Timestamp::now(), ttl).await? {
                    if u.expires_at.is_some() {
                        urls.insert(u.path.to_string(), u.url);
                    }
                }
            }
            if json {
                let mut v = serde_json::to_value(&d).unwrap_or_default();
                if !urls.is_empty() {
                    v["urls"] = serde_json::to_value(&urls).unwrap_or_default();
                }
                outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                outln!("distribution {} of run {} ({}): {}", d.id, d.run_id, d.kind, printable(&d.reference));
                for a in &d.artifacts {
                    outln!("  {:<28} sha256:{} {}", a.path, a.sha256, printable(&a.location));
                    if let Some(u) = urls.get(a.path.as_str()) {
                        outln!("    {u}");
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn runs(command: RunsCommand, store: Option<PathBuf>, json: bool, tenant: &str) -> Result<ExitCode, Failure> {
    let tenant = &TenantId::parse(tenant)?;
    let path = store.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    let store = open_existing_store(store).await?;
    if postgres_url(&path).is_none() {
        EngineLock::open(&path)?.recover_if_alone(&*store, None).await?;
    }
    match command {
        RunsCommand::List { status, profile, limit } => {
            let status = status
                .as_deref()
                .map(|s| s.parse::<RunStatus>().map_err(|e| ExportError::invalid("--status", e)))
                .transpose()?;
            let profile_id = profile.map(ProfileId::parse).transpose()?;
            if limit.is_some_and(|l| l == 0 || l > 200) {
                return Err(ExportError::invalid("--limit", "must be 1 to 200").into());
            }
            let filter = RunFilter { status, profile_id, limit, ..Default::default() };
            let page = store.list(tenant, &filter).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&page.runs).unwrap_or_default());
            } else {
                for r in &page.runs {
                    let code = r.errors.first().map(|e| e.code.as_str()).unwrap_or("");
                    outln!("{:<58} {:<12} {:<10} {} {code}", r.run_id, r.profile_id, r.status.as_str(), r.submitted_at);
                }
            }
            // A damaged record hides nothing else; it is named on stderr (the JSON on stdout
            // stays a list of runs).
            for u in &page.unreadable {
                errln!("warning: run {} has an unreadable record: {}", u.run_id, u.reason);
            }
        }
        RunsCommand::Show { run_id } => {
            let run = store.get(tenant, &RunId::parse(run_id)?).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
            } else {
                outln!("run {} {} ({})", run.run_id, run.status, run.profile_id);
                for o in &run.outputs {
                    outln!("  {:<28} {:>12} sha256:{}", o.path, o.size, o.sha256);
                }
                for e in &run.errors {
                    outln!("  error {}: {}", e.code, printable(&e.message));
                }
            }
        }
        RunsCommand::Events { run_id } => {
            let run_id = RunId::parse(run_id)?;
            let mut after = 0;
            loop {
                let batch = store.events(tenant, &run_id, after, 1000).await?;
                if batch.is_empty() {
                    break;
                }
                for e in &batch {
                    outln!("{}", serde_json::to_string(e).unwrap_or_default());
                    after = e.id;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path, options: &VerifyOptions) -> Result<ExitCode, Failure> {
    // Devportal bundles (and run outputs holding one) have their own manifest format.
    verify_report(exportcore_devportal::verify_path_with(path, options)?)
}

fn verify_report(report: exportcore::verify::VerifyReport) -> Result<ExitCode, Failure> {
    if report.is_ok() {
        let signed = match report.signatures {
            Signatures::Valid => "signatures valid",
            Signatures::NotChecked => "signatures present but not checked (no --key): origin not proven",
            Signatures::Unsigned => "unsigned: origin not proven",
        };
        outln!("OK {}: {} entries verified, {signed}", report.target, report.verified);
        if let Some(sel) = &report.selection {
            outln!("{}", printable(&describe_selection(sel)));
        }
        return Ok(ExitCode::SUCCESS);
    }
    failing(1);
    for f in &report.failures {
        outln!("FAIL {} {}: {}", f.code, printable(&f.path), printable(&f.problem));
    }
    let code = report.failures.first().map_or("ERR_EXPORT_VERIFY_FAILED", |f| f.code);
    errln!("error: {code}: {} problem(s) in {}", report.failures.len(), report.target);
    Ok(ExitCode::from(1))
}

/// One line saying what a run selected: `selection: ecosystems=PyPI; advisory 10/60, vex 1/4`.
fn describe_selection(sel: &exportcore::Selection) -> String {
    let s = &sel.selectors;
    let mut parts = Vec::new();
    for (name, values) in [("ecosystems", &s.ecosystems), ("packages", &s.packages), ("ids", &s.ids)] {
        if !values.is_empty() {
            parts.push(format!("{name}={}", values.join(",")));
        }
    }
    if let Some(t) = s.modified_since {
        parts.push(format!("since={t}"));
    }
    if let Some(t) = s.modified_until {
        parts.push(format!("until={t}"));
    }
    let counts: Vec<String> =
        sel.counts.iter().map(|(kind, c)| format!("{kind} {}/{} selected", c.selected, c.seen)).collect();
    format!(
        "selection: {}; {}",
        parts.join(" "),
        if counts.is_empty() { "no records read".into() } else { counts.join(", ") }
    )
}

/// `30d`, `12h`, `90m`, `3600s` or plain seconds.
fn parse_duration(flag: &str, s: &str) -> Result<std::time::Duration, Failure> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| ExportError::invalid(flag, format!("not a duration: {s:?}")))?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(ExportError::invalid(flag, format!("unknown duration unit {unit:?} (s, m, h, d)")).into()),
    };
    let secs = n.checked_mul(per).ok_or_else(|| ExportError::invalid(flag, format!("{s:?} is too long")))?;
    Ok(std::time::Duration::from_secs(secs))
}

fn keygen(algorithm: &str, prefix: &Path) -> Result<ExitCode, Failure> {
    let alg: exportcore_crypto::Algorithm = algorithm.parse()?;
    let pair = exportcore_crypto::generate(alg)?;
    let key_path = PathBuf::from(format!("{}.key", prefix.display()));
    let pub_path = PathBuf::from(format!("{}.pub", prefix.display()));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(
                ExportError::invalid("--out", format!("{} exists; refusing to overwrite a key", p.display())).into()
            );
        }
    }
    write_new(&key_path, pair.private_pem.as_bytes(), 0o600)?;
    write_new(&pub_path, pair.public_pem.as_bytes(), 0o644)?;
    let verifier = exportcore_crypto::verifier_from_pem(&pair.public_pem)?;
    outln!("{} key id {}", alg_name(alg), verifier.key_id());
    outln!("private key: {}", key_path.display());
    outln!("public key:  {}", pub_path.display());
    Ok(ExitCode::SUCCESS)
}

fn alg_name(alg: exportcore_crypto::Algorithm) -> &'static str {
    match alg {
        exportcore_crypto::Algorithm::Ed25519 => "ed25519",
        exportcore_crypto::Algorithm::EcdsaP256 => "ecdsa-p256",
        exportcore_crypto::Algorithm::Sm2 => "sm2",
    }
}

/// Writes a new file with `mode`, atomically (temp file, fsync, rename).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| ExportError::io(dir, e))?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| ExportError::io(path, e))?;
    tmp.write_all(bytes).map_err(|e| ExportError::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| ExportError::io(path, e))?;
    tmp.persist_noclobber(path).map_err(|e| ExportError::io(path, e.error))?;
    Ok(())
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise.
#[derive(Clone)]
struct ProgressDisplay {
    bar: Option<indicatif::ProgressBar>,
    /// `artifact_ready` events seen (plain lines: the first [`ARTIFACT_LINES`] are printed).
    artifacts: Arc<std::sync::atomic::AtomicU64>,
}

/// The most `artifact_ready` lines a run prints on a non-terminal stderr; a mirror of 40,000
/// files has 160,000 (`exportctl runs events` lists every one).
const ARTIFACT_LINES: u64 = 1000;

impl ProgressDisplay {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(100);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self { bar, artifacts: Arc::new(std::sync::atomic::AtomicU64::new(0)) }
    }

    fn event(&self, e: &RunEvent) {
        match (&self.bar, e) {
            (Some(bar), RunEvent::Progress { progress, .. }) => {
                bar.set_position(u64::from(progress.percent));
                bar.set_message(format!("{} records", progress.items_completed));
            }
            (Some(bar), RunEvent::ArtifactReady { path, .. }) => bar.set_message(format!("published {path}")),
            (Some(_), _) => {}
            (None, RunEvent::Progress { progress, .. }) => {
                errln!("progress {}% ({} records)", progress.percent, progress.items_completed)
            }
            (None, RunEvent::ArtifactReady { path, size, .. }) => {
                if self.artifacts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ARTIFACT_LINES {
                    errln!("artifact_ready {path} ({size} bytes)");
                }
            }
            (None, RunEvent::Started { run_id, profile_id }) => errln!("started {run_id} ({profile_id})"),
            (None, _) => {}
        }
    }

    fn finish(&self, run_id: &RunId) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let seen = self.artifacts.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(more) = seen.checked_sub(ARTIFACT_LINES).filter(|n| *n > 0) {
            errln!("artifact_ready … and {more} more (`exportctl runs events {run_id}` lists every one)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staging directory is this user's alone: created 0700, taken again as it is,
    /// refused once it is open to others or is a symlink.
    #[test]
    fn the_private_temp_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let prefix = format!("exportcore-test-staging-{}", std::process::id());
        let dir = private_temp_dir(&prefix).unwrap_or_else(|_| panic!("created"));
        assert_eq!(std::fs::metadata(&dir).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o700));
        assert!(private_temp_dir(&prefix).is_ok(), "taken again");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).ok();
        assert!(private_temp_dir(&prefix).is_err(), "open to others");
        std::fs::remove_dir(&dir).ok();
        let target = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(target.path(), &dir).ok();
        assert!(private_temp_dir(&prefix).is_err(), "a symlink");
        std::fs::remove_file(&dir).ok();
    }
}
