//! # exportcore-distribution
//!
//! Moves a run's output to where readers fetch it. This first part pushes to **OCI
//! registries** by the distribution spec ([`push_oci`]), with a cosign-compatible signature
//! for signed runs.
//!
//! What is pushed for a run directory (checked first against its run manifest: nothing that
//! does not verify leaves the machine):
//! - a run whose output holds an OCI layout with one manifest (`trivy:db`, `trivy:java-db`):
//!   that manifest and its blobs, tagged `TAG`, so the reference is what the consumer expects
//!   (`trivy --db-repository HOST/REPO:TAG`);
//! - any other run: one artifact manifest (`artifactType application/vnd.exportcore.run.v1`,
//!   empty config) with every file of the run as a layer titled with its path; a run of more
//!   files than one manifest should list ([`DEFAULT_MAX_LAYERS`], registries refuse manifests
//!   over 4 MiB) is an image index of part manifests instead, pushed parts first;
//! - a run whose OCI layout holds several tagged images (`mirror:full`: `mirror`, `trivy-db`,
//!   `trivy-java-db`): the whole run as above at `HOST/REPO:TAG`, then each image byte for byte
//!   at `HOST/REPO/<its tag>:TAG` (an index of parts as it is) with its blobs mounted from
//!   `HOST/REPO` (nothing goes up twice), so `trivy --db-repository HOST/REPO/trivy-db:TAG` pulls the mirror's database.
//!
//! Blobs go up first (each one `HEAD`ed, mounted from `mount_from` repositories when the
//! registry has it there, else uploaded: one `PUT` up to 8 MiB, else one `PATCH` streamed
//! from the file), the manifest last and then its tag, so a tag never names a blob
//! that is not fully uploaded; a retried push re-uses what is already there. Transient
//! failures (5xx, 429, connection errors, timeouts) are retried with backoff (4 retries,
//! 0.4 to 3.2 s), then the push fails with `ERR_EXPORT_DISTRIBUTION_FAILED` naming the target.
//!
//! Credentials come from `EXPORTCORE_OCI_USERNAME`/`EXPORTCORE_OCI_PASSWORD`, else the docker
//! `config.json` (`$DOCKER_CONFIG` or `~/.docker`) entry for the registry; never from a
//! reference, and never in a log, error or record ([`Credentials`] redacts itself). TLS by
//! default; plain HTTP only for a target marked insecure.
//!
//! ```no_run
//! use exportcore_distribution::{push_oci, Credentials, OciTarget, PushOptions};
//! # async fn f() -> exportcore::Result<()> {
//! let target = OciTarget::parse("oci://registry.internal:5000/mirror/trivy-db:2", "--distribute")?;
//! let creds = Credentials::lookup(&target.registry)?;
//! let pushed = push_oci("out/trivy-db".as_ref(), &target, creds, &PushOptions::default()).await?;
//! println!("{} {}", pushed.reference, pushed.digest);
//! # Ok(()) }
//! ```

mod cosign;
mod oci;
pub mod s3;
pub mod signed_url;
mod sink;

pub use oci::{OciTarget, PushStats, MONOLITHIC_MAX};
pub use sink::ObjectSink;

use bytes::Bytes;
use exportcore::manifest::{MANIFEST_FILE, PROVENANCE_FILE, SIGNED_MANIFEST_FILE};
use exportcore::sign::Signer;
use exportcore::{ExportError, Result, Sha256Digest};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `artifactType` of a run pushed as one artifact.
pub const RUN_ARTIFACT_TYPE: &str = "application/vnd.exportcore.run.v1";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A failure while distributing: transient ones were retried within the budget.
#[derive(Debug)]
pub(crate) struct DistributionError {
    message: String,
    pub(crate) transient: bool,
}

impl DistributionError {
    pub(crate) fn fatal(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: false }
    }
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: true }
    }
    fn at(self, target: &str) -> ExportError {
        ExportError::distribution_failed(target, self.message)
    }
}

/// A secret string: shown as `***` by `Debug` and `Display`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself (for the one place that sends it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Registry credentials.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: Secret,
}

impl Credentials {
    /// Credentials for `registry` (`host[:port]`): `EXPORTCORE_OCI_USERNAME` and
    /// `EXPORTCORE_OCI_PASSWORD` when set — for every registry, or, with
    /// `EXPORTCORE_OCI_REGISTRY` (comma-separated `host[:port]`), only for those — else the
    /// docker `config.json` entry (`auth` or `username`/`password`); `None` for anonymous
    /// access.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a malformed `config.json` entry (never showing it).
    pub fn lookup(registry: &str) -> Result<Option<Self>> {
        if let Some(c) = Self::from_env(registry, &|name| std::env::var(name).ok()) {
            return Ok(Some(c));
        }
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        let Some(path) = dir.map(|d| d.join("config.json")).filter(|p| p.is_file()) else { return Ok(None) };
        let text = exportcore::files::read_capped_string(&path, exportcore::files::MAX_KEY_BYTES)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|_| ExportError::invalid("docker config", format!("{} is not JSON", path.display())))?;
        let Some(entry) = v["auths"].as_object().and_then(|a| {
            a.get(registry).or_else(|| {
                a.iter()
                    .find(|(k, _)| {
                        k.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/') == registry
                    })
                    .map(|(_, v)| v)
            })
        }) else {
            return Ok(None);
        };
        if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
            return Ok(Some(Self { username: u.to_owned(), password: Secret(p.to_owned()) }));
        }
        let bad = || {
            ExportError::invalid("docker config", format!("{}: the entry for {registry} is malformed", path.display()))
        };
        let auth = entry["auth"].as_str().ok_or_else(bad)?;
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(auth).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = raw.split_once(':').ok_or_else(bad)?;
        Ok(Some(Self { username: u.to_owned(), password: Secret(p.to_owned()) }))
    }

    /// The environment's credentials for `registry`, read through `var`.
    fn from_env(registry: &str, var: &dyn Fn(&str) -> Option<String>) -> Option<Self> {
        let scoped = var("EXPORTCORE_OCI_REGISTRY")
            .is_none_or(|list| list.split(',').map(str::trim).any(|r| r.eq_ignore_ascii_case(registry)));
        match (scoped, var("EXPORTCORE_OCI_USERNAME"), var("EXPORTCORE_OCI_PASSWORD")) {
            (true, Some(username), Some(password)) => Some(Self { username, password: Secret(password) }),
            _ => None,
        }
    }
}

/// Options of a push.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PushOptions {
    /// Repositories of the same registry to mount blobs from when they are there.
    pub mount_from: Vec<String>,
    /// Signs the pushed manifest (a cosign-compatible `sha256-<hex>.sig` tag).
    pub signer: Option<std::sync::Arc<dyn Signer>>,
    /// The most layers one pushed manifest lists (default [`DEFAULT_MAX_LAYERS`]): a run
    /// artifact of more files is pushed as an image index of part manifests.
    pub max_layers_per_manifest: Option<usize>,
}

/// The most layers a run artifact's manifest lists by default: registries refuse manifests
/// over 4 MiB (distribution, containerd, ORAS) and some cap an image's layers (Amazon ECR:
/// 4,200); 1,000 descriptors with their titles stay near 300 KiB.
pub const DEFAULT_MAX_LAYERS: usize = 1000;
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// What a push left in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OciPushed {
    /// `HOST/REPO:TAG`.
    pub reference: String,
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// `HOST/REPO@sha256:…`: the pullable, immutable reference.
    pub pinned: String,
    /// The signature's tag, when signed.
    pub signature_tag: Option<String>,
    /// Per blob: uploaded, present, mounted.
    pub stats: PushStats,
    /// Digests of every blob the manifest names (config and layers).
    pub blobs: Vec<Sha256Digest>,
    /// For an OCI layout of several tagged images (a mirror): each image, pushed to
    /// `HOST/REPO/<tag>:TAG` (`org.opencontainers.image.ref.name` of its index entry), sorted
    /// by reference.
    pub images: Vec<PushedImage>,
}

/// One image of a multi-image layout, pushed to its own repository.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushedImage {
    /// `HOST/REPO/<tag>:TAG`.
    pub reference: String,
    /// The image manifest's digest (`sha256:…`), as in the layout's `index.json`.
    pub digest: String,
    /// `HOST/REPO/<tag>@sha256:…`.
    pub pinned: String,
    /// The signature's tag, when signed.
    pub signature_tag: Option<String>,
}

/// One blob to push: a file, or bytes made here (a config).
struct Blob {
    digest: Sha256Digest,
    size: u64,
    path: Option<PathBuf>,
    inline: Option<Bytes>,
}

/// What one push puts up: the blobs, then the part manifests (by digest), then the top
/// manifest or index (by digest, then by tag).
struct Image {
    top: Bytes,
    media_type: &'static str,
    parts: Vec<Bytes>,
    blobs: Vec<Blob>,
}

/// The manifest (or index of part manifests) and the blobs of the layout image that `entry`
/// (of `oci/index.json`) names.
fn layout_image(dir: &Path, entry: &Value) -> Result<Image> {
    let path = |d: &Sha256Digest| dir.join(format!("oci/blobs/sha256/{d}"));
    let digest_of = |d: &Value, at: &Path| -> Result<Sha256Digest> {
        d["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")).and_then(|h| h.parse().ok()).ok_or_else(|| {
            ExportError::VerificationFailed { path: at.display().to_string(), reason: "a bad descriptor digest".into() }
        })
    };
    let read = |d: &Sha256Digest| -> Result<(Bytes, Value)> {
        let bytes = exportcore::files::read_capped(&path(d), exportcore::files::MAX_MANIFEST_BYTES)?;
        let doc = serde_json::from_slice(&bytes).map_err(|e| ExportError::VerificationFailed {
            path: path(d).display().to_string(),
            reason: e.to_string(),
        })?;
        Ok((Bytes::from(bytes), doc))
    };
    let digest = digest_of(entry, &dir.join("oci/index.json"))?;
    let (top, doc) = read(&digest)?;
    let (media_type, manifests) = if entry["mediaType"] == INDEX_MEDIA_TYPE {
        let mut parts = Vec::new();
        for d in doc["manifests"].as_array().into_iter().flatten() {
            parts.push(read(&digest_of(d, &path(&digest))?)?);
        }
        (INDEX_MEDIA_TYPE, parts)
    } else {
        (MANIFEST_MEDIA_TYPE, vec![(top.clone(), doc)])
    };
    let mut blobs = Vec::new();
    for (bytes, manifest) in &manifests {
        let at = path(&Sha256Digest::of(bytes));
        for d in std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().into_iter().flatten()) {
            let digest = digest_of(d, &at)?;
            if !blobs.iter().any(|b: &Blob| b.digest == digest) {
                blobs.push(Blob {
                    size: d["size"].as_u64().unwrap_or(0),
                    path: Some(path(&digest)),
                    inline: None,
                    digest,
                });
            }
        }
    }
    let parts =
        if media_type == INDEX_MEDIA_TYPE { manifests.into_iter().map(|(b, _)| b).collect() } else { Vec::new() };
    Ok(Image { top, media_type, parts, blobs })
}

/// The tagged images of a layout holding several (a mirror: `mirror`, `trivy-db`,
/// `trivy-java-db`), each with its tag; empty for any other run.
fn layout_images(dir: &Path) -> Result<Vec<(String, Image)>> {
    let index_path = dir.join("oci/index.json");
    if !index_path.is_file() {
        return Ok(Vec::new());
    }
    let index: Value =
        serde_json::from_slice(&exportcore::files::read_capped(&index_path, exportcore::files::MAX_MANIFEST_BYTES)?)
            .map_err(|e| ExportError::VerificationFailed {
                path: index_path.display().to_string(),
                reason: e.to_string(),
            })?;
    let entries = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
    if entries.len() < 2 {
        return Ok(Vec::new());
    }
    let mut images = Vec::new();
    for entry in entries {
        let Some(tag) = entry["annotations"]["org.opencontainers.image.ref.name"].as_str() else { continue };
        // A repository path component (distribution spec): lowercase letters, digits, separators.
        let valid = !tag.is_empty()
            && tag.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(ExportError::VerificationFailed {
                path: index_path.display().to_string(),
                reason: format!("image tag {tag:?} cannot name a repository"),
            });
        }
        images.push((tag.to_owned(), layout_image(dir, entry)?));
    }
    images.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(images)
}

/// The manifest (or index of part manifests of at most `max_layers` layers) and blobs a run
/// directory is pushed as.
fn plan(dir: &Path, created: &str, max_layers: usize) -> Result<Image> {
    let index_path = dir.join("oci/index.json");
    if index_path.is_file() {
        let index: Value = serde_json::from_slice(&exportcore::files::read_capped(
            &index_path,
            exportcore::files::MAX_MANIFEST_BYTES,
        )?)
        .map_err(|e| ExportError::VerificationFailed {
            path: index_path.display().to_string(),
            reason: e.to_string(),
        })?;
        if let [only] = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default() {
            return layout_image(dir, only);
        }
    }
    // One artifact: every file of the run, the run manifest and its signatures included.
    let manifest = exportcore::Manifest::parse(&exportcore::files::read_capped(
        &dir.join(MANIFEST_FILE),
        exportcore::files::MAX_MANIFEST_BYTES,
    )?)
    .map_err(|e| ExportError::VerificationFailed { path: MANIFEST_FILE.into(), reason: e })?;
    let mut files: Vec<(String, String)> =
        manifest.entries.iter().map(|e| (e.path.to_string(), e.media_type.clone())).collect();
    files.push((MANIFEST_FILE.into(), "application/json".into()));
    for side in [SIGNED_MANIFEST_FILE, PROVENANCE_FILE] {
        if dir.join(side).is_file() {
            files.push((side.into(), exportcore::manifest::DSSE_MEDIA_TYPE.into()));
        }
    }
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    for (path, media_type) in files {
        let local = dir.join(&path);
        let f = exportcore::files::open_regular(&local)?;
        let (size, digest) = exportcore::hashing::hash_reader(f).map_err(|e| ExportError::io(&local, e))?;
        layers.push(json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": size,
                           "annotations": {"org.opencontainers.image.title": path}}));
        blobs.push(Blob { digest, size, path: Some(local), inline: None });
    }
    let config_digest = Sha256Digest::of(b"{}");
    blobs.push(Blob { digest: config_digest, size: 2, path: None, inline: Some(Bytes::from_static(b"{}")) });
    let serialise = |doc: &Value| -> Result<Bytes> {
        exportcore::canonical::to_vec(doc)
            .map(Bytes::from)
            .map_err(|e| ExportError::internal_caused("oci", "serialising a manifest", e))
    };
    let manifest = |layers: &[Value]| {
        serialise(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": RUN_ARTIFACT_TYPE,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": format!("sha256:{config_digest}"), "size": 2, "data": "e30="},
            "layers": layers,
            "annotations": {"org.opencontainers.image.created": created},
        }))
    };
    let max_layers = max_layers.max(1);
    if layers.len() <= max_layers {
        return Ok(Image { top: manifest(&layers)?, media_type: MANIFEST_MEDIA_TYPE, parts: Vec::new(), blobs });
    }
    // More files than one manifest should list: an index of part manifests, in order.
    let parts = layers.chunks(max_layers).map(manifest).collect::<Result<Vec<_>>>()?;
    let count = parts.len();
    let descriptors: Vec<Value> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // No `artifactType` here (each part has it): skopeo 1.9 cannot copy an index
            // with it unchanged.
            json!({"mediaType": MANIFEST_MEDIA_TYPE,
                   "digest": format!("sha256:{}", Sha256Digest::of(p)), "size": p.len(),
                   "annotations": {"org.opencontainers.image.title": format!("run part {} of {count}", i + 1)}})
        })
        .collect();
    let top = serialise(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "artifactType": RUN_ARTIFACT_TYPE,
        "manifests": descriptors,
        "annotations": {"org.opencontainers.image.created": created},
    }))?;
    Ok(Image { top, media_type: INDEX_MEDIA_TYPE, parts, blobs })
}

/// Nothing that does not verify leaves the machine. A run pushed as its own one-manifest OCI
/// layout is checked where the push relies on local bytes — `oci/index.json` and the manifest
/// blob against the run manifest — while every other blob is checked by the registry, which
/// refuses an upload whose bytes do not match the digest the manifest names (so the large
/// files are read once, not twice). Any other run is verified whole.
fn check_before_push(dir: &Path) -> Result<()> {
    let fail = |path: &str, problem: &str| ExportError::VerificationFailed {
        path: dir.join(path).display().to_string(),
        reason: format!("not pushed: the output does not verify: {problem}"),
    };
    let single_layout = dir.join("oci/index.json").is_file() && {
        let index: Value = serde_json::from_slice(&exportcore::files::read_capped(
            &dir.join("oci/index.json"),
            exportcore::files::MAX_MANIFEST_BYTES,
        )?)
        .unwrap_or(Value::Null);
        index["manifests"].as_array().is_some_and(|m| m.len() == 1)
    };
    if !single_layout {
        let report = exportcore::verify::verify_path(dir)?;
        return match report.failures.first() {
            Some(f) => Err(fail(&f.path, &f.problem)),
            None => Ok(()),
        };
    }
    let manifest = exportcore::Manifest::parse(&exportcore::files::read_capped(
        &dir.join(MANIFEST_FILE),
        exportcore::files::MAX_MANIFEST_BYTES,
    )?)
    .map_err(|e| fail(MANIFEST_FILE, &e))?;
    let index: Value = serde_json::from_slice(&exportcore::files::read_capped(
        &dir.join("oci/index.json"),
        exportcore::files::MAX_MANIFEST_BYTES,
    )?)
    .map_err(|e| fail("oci/index.json", &e.to_string()))?;
    let blob = index["manifests"][0]["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")).unwrap_or_default();
    for path in ["oci/index.json".to_owned(), format!("oci/blobs/sha256/{blob}")] {
        let entry = manifest.entry(&path).ok_or_else(|| fail(&path, "not listed in the run manifest"))?;
        let f = exportcore::files::open_regular(&dir.join(&path))?;
        let (size, sha) = exportcore::hashing::hash_reader(f).map_err(|e| ExportError::io(dir.join(&path), e))?;
        if size != entry.size || sha != entry.sha256 {
            return Err(fail(&path, "differs from the run manifest"));
        }
    }
    Ok(())
}

/// Pushes the run output in `dir` to `target` (see the crate docs).
///
/// # Errors
/// `ERR_EXPORT_VERIFY_FAILED` when `dir` does not verify against its run manifest;
/// `ERR_EXPORT_DISTRIBUTION_FAILED` naming the target and the cause (after the retry budget for
/// transient failures); I/O errors reading `dir`.
pub async fn push_oci(
    dir: &Path,
    target: &OciTarget,
    credentials: Option<Credentials>,
    options: &PushOptions,
) -> Result<OciPushed> {
    check_before_push(dir)?;
    let created = exportcore::Manifest::parse(&exportcore::files::read_capped(
        &dir.join(MANIFEST_FILE),
        exportcore::files::MAX_MANIFEST_BYTES,
    )?)
    .map(|m| m.created_at.to_string())
    .unwrap_or_default();
    let run = plan(dir, &created, options.max_layers_per_manifest.unwrap_or(DEFAULT_MAX_LAYERS))?;
    let images = layout_images(dir)?;
    let mut stats = PushStats::default();
    let (digest, signature_tag) = push_image(target, credentials.clone(), &run, options, &mut stats).await?;
    // A mirror's images, each to its own repository, their blobs mounted from the one just
    // pushed (nothing is uploaded twice).
    let mut pushed_images = Vec::new();
    for (tag, image) in &images {
        let sub = target.with_repository(format!("{}/{tag}", target.repository));
        let mut mount = options.clone();
        mount.mount_from.insert(0, target.repository.clone());
        let (d, sig) = push_image(&sub, credentials.clone(), image, &mount, &mut stats).await?;
        pushed_images.push(PushedImage {
            reference: sub.reference(),
            digest: format!("sha256:{d}"),
            pinned: format!("{}/{}@sha256:{d}", sub.registry, sub.repository),
            signature_tag: sig,
        });
    }
    Ok(OciPushed {
        reference: target.reference(),
        digest: format!("sha256:{digest}"),
        pinned: format!("{}/{}@sha256:{digest}", target.registry, target.repository),
        signature_tag,
        stats,
        blobs: run.blobs.iter().map(|b| b.digest).collect(),
        images: pushed_images,
    })
}

/// Pushes one image and its blobs to `target`: each blob `HEAD`ed, mounted or uploaded, then
/// its part manifests by digest, then the manifest (or index) by digest, then the signature,
/// then the tag. Returns the manifest's digest and the signature's tag.
async fn push_image(
    target: &OciTarget,
    credentials: Option<Credentials>,
    image: &Image,
    options: &PushOptions,
    stats: &mut PushStats,
) -> Result<(Sha256Digest, Option<String>)> {
    let name = format!("oci://{}", target.reference());
    let registry = oci::Registry::new(target, credentials).map_err(|e| e.at(&name))?;
    for b in &image.blobs {
        if registry.has_blob(&b.digest).await.map_err(|e| e.at(&name))? {
            stats.present += 1;
            continue;
        }
        let mut mounted = false;
        for from in &options.mount_from {
            if registry.mount(&b.digest, from).await.map_err(|e| e.at(&name))? {
                mounted = true;
                break;
            }
        }
        if mounted {
            stats.mounted += 1;
            continue;
        }
        match (&b.inline, &b.path) {
            (Some(bytes), _) => registry.upload_bytes(bytes.clone(), &b.digest).await,
            (None, Some(path)) => registry.upload(path, &b.digest, b.size).await,
            (None, None) => Err(DistributionError::fatal("a blob without bytes")),
        }
        .map_err(|e| e.at(&name))?;
        stats.uploaded += 1;
        stats.bytes += b.size;
    }
    // The parts and the manifest by digest first, then the tag: a tag never names something
    // half pushed.
    for part in &image.parts {
        let digest = Sha256Digest::of(part);
        registry.put_manifest(&format!("sha256:{digest}"), MANIFEST_MEDIA_TYPE, part).await.map_err(|e| e.at(&name))?;
    }
    let (top, media_type) = (&image.top, image.media_type);
    let digest = Sha256Digest::of(top);
    registry.put_manifest(&format!("sha256:{digest}"), media_type, top).await.map_err(|e| e.at(&name))?;
    // The signature names the manifest by digest, so it goes before the tag: a reader who
    // checks signatures never finds the tag on an unsigned manifest, and a failed signing
    // leaves the tag where it was.
    let signature_tag = match &options.signer {
        None => None,
        Some(s) => Some(cosign::push_signature(&registry, target, &digest, &**s).await.map_err(|e| e.at(&name))?),
    };
    registry.put_manifest(&target.tag, media_type, top).await.map_err(|e| e.at(&name))?;
    Ok((digest, signature_tag))
}

/// The engine's distribution step for `distribution {type: oci, ref: "oci://HOST/REPO:TAG"}`
/// (or `HOST/REPO:TAG`): pushes the published run with [`push_oci`] (signed when the run is),
/// credentials from [`Credentials::lookup`], and records where it went. The run must be
/// published by a filesystem sink (its outputs are read from their directory).
#[derive(Clone, Debug, Default)]
pub struct OciDistributor {
    insecure: Vec<String>,
    mount_from: Vec<String>,
    allowed: Destinations,
}

/// The destinations a distributor delivers to: any (the default, for a caller who chose the
/// reference itself), or only references under the prefixes an operator allows (a server
/// whose tenants name the reference: else a tenant could write files anywhere the server can,
/// send the server's registry credentials to a host of its own, or overwrite, squat on and
/// read back another tenant's deliveries).
///
/// A prefix is for every tenant (`s3://exports/common/`), for one (`acme=s3://exports/acme/`),
/// or for each under its own name (`s3://exports/{tenant}/`, `{tenant}` replaced by the
/// tenant of the run). A prefix every tenant may use is shared: what one tenant delivers
/// there another may overwrite; give each tenant its own.
#[derive(Clone, Debug, Default)]
pub struct Destinations(Option<Vec<(Option<exportcore::TenantId>, String)>>);

impl Destinations {
    /// Only references under one of `prefixes` (`[TENANT=]PREFIX`, `{tenant}` allowed in
    /// PREFIX: `oci://registry.internal/{tenant}/`, `acme=s3://exports/acme/`,
    /// `file:///srv/exports/{tenant}/`); none at all when `prefixes` is empty.
    pub fn only(prefixes: impl IntoIterator<Item = String>) -> Self {
        let scoped = |p: String| match p.split_once('=') {
            Some((t, rest)) if !t.contains("://") => match exportcore::TenantId::parse(t) {
                Ok(tenant) => (Some(tenant), rest.to_owned()),
                Err(_) => (None, p),
            },
            _ => (None, p),
        };
        Self(Some(prefixes.into_iter().map(scoped).collect()))
    }

    /// Refuses a reference outside the prefixes allowed to `tenant`, or one that could climb
    /// out of them.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming `distribution.ref`.
    pub fn check(&self, tenant: &exportcore::TenantId, reference: &str) -> Result<()> {
        let Some(prefixes) = &self.0 else { return Ok(()) };
        let shown = exportcore::error::redact_urls(reference);
        // A prefix ends at a path boundary: `oci://reg.internal` does not allow
        // `oci://reg.internal.evil.example/…`.
        let rest = prefixes
            .iter()
            .filter(|(scope, _)| scope.as_ref().is_none_or(|s| s == tenant))
            .map(|(_, p)| p.replace("{tenant}", tenant.as_str()))
            .find_map(|p| {
                reference
                    .strip_prefix(p.as_str())
                    .filter(|rest| p.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
                    .map(str::to_owned)
            });
        let Some(rest) = rest else {
            return Err(ExportError::invalid(
                "distribution.ref",
                format!("{shown:?} is not a destination this server delivers to for tenant {tenant}"),
            ));
        };
        let climbs = rest.split(['/', '\\']).any(|s| s == ".." || s == ".") || rest.contains(['%', '?', '#', '@']);
        if climbs {
            return Err(ExportError::invalid("distribution.ref", format!("{shown:?}: plain path segments only")));
        }
        Ok(())
    }
}

impl OciDistributor {
    /// A distributor.
    pub fn new() -> Self {
        Self::default()
    }
    /// Uses plain HTTP for these registries (`HOST:PORT`) besides loopback ones.
    #[must_use]
    pub fn insecure(mut self, registries: impl IntoIterator<Item = String>) -> Self {
        self.insecure.extend(registries);
        self
    }
    /// Mounts blobs from these repositories when the registry has them there.
    #[must_use]
    pub fn mount_from(mut self, repositories: impl IntoIterator<Item = String>) -> Self {
        self.mount_from.extend(repositories);
        self
    }
    /// Delivers only to these destinations (a server: see [`Destinations`]).
    #[must_use]
    pub fn only(mut self, destinations: Destinations) -> Self {
        self.allowed = destinations;
        self
    }
}

#[async_trait::async_trait]
impl exportcore::run::Distributor for OciDistributor {
    fn handles(&self, kind: exportcore::DistributionType) -> bool {
        kind == exportcore::DistributionType::Oci
    }

    fn accepts(&self, tenant: &exportcore::TenantId, d: &exportcore::Distribution) -> Result<()> {
        let reference = d.reference.as_deref().unwrap_or_default();
        let uri = if reference.starts_with("oci://") { reference.to_owned() } else { format!("oci://{reference}") };
        self.allowed.check(tenant, &uri)
    }

    async fn distribute(&self, ctx: exportcore::run::DistributeContext<'_>) -> Result<exportcore::DistributionRecord> {
        let reference = ctx
            .distribution
            .reference
            .as_deref()
            .ok_or_else(|| ExportError::invalid("distribution.ref", "required for type oci"))?;
        let uri = if reference.starts_with("oci://") { reference.to_owned() } else { format!("oci://{reference}") };
        // Again at delivery: the run may have waited in the queue while the operator changed
        // what is allowed.
        self.allowed.check(&ctx.run.tenant, &uri)?;
        let target = OciTarget::parse(&uri, "distribution.ref")?;
        let target = if self.insecure.contains(&target.registry) { target.insecure(true) } else { target };
        let dir = run_dir(ctx.run, "oci")?;
        let options =
            PushOptions { mount_from: self.mount_from.clone(), signer: ctx.signer.cloned(), ..Default::default() };
        let pushed = push_oci(&dir, &target, Credentials::lookup(&target.registry)?, &options).await?;
        let artifacts = ctx
            .run
            .outputs
            .iter()
            .filter(|o| pushed.blobs.contains(&o.sha256))
            .map(|o| {
                // An image manifest of a mirror is reachable at its own repository.
                let digest = format!("sha256:{}", o.sha256);
                let at = pushed.images.iter().find(|i| i.digest == digest).map_or(&pushed.pinned, |i| &i.pinned);
                exportcore::DistributedArtifact::new(o.path.clone(), o.sha256, o.size, at.clone())
            })
            .collect();
        Ok(exportcore::DistributionRecord::succeeded(
            ctx.run.run_id.clone(),
            ctx.run.tenant.clone(),
            exportcore::DistributionType::Oci,
            pushed.reference,
            artifacts,
            exportcore::Timestamp::now(),
        ))
    }
}

/// The engine's distribution step for `distribution {type: object, ref: "s3://BUCKET/PREFIX"}`
/// (or `file://DIR`): uploads the published run with [`s3::push_s3`] (or copies it), and
/// records each object's location (`s3://BUCKET/KEY`, or the file's path). The run must be
/// published by a filesystem sink.
#[derive(Clone, Debug)]
pub struct ObjectDistributor {
    config: s3::S3Config,
    allowed: Destinations,
}

impl ObjectDistributor {
    /// A distributor reaching object storage with `config` ([`s3::S3Config::from_env`] for the
    /// environment's).
    pub fn new(config: s3::S3Config) -> Self {
        Self { config, allowed: Destinations::default() }
    }
    /// Delivers only to these destinations (a server: see [`Destinations`]).
    #[must_use]
    pub fn only(mut self, destinations: Destinations) -> Self {
        self.allowed = destinations;
        self
    }
}

/// The directory a published run lives in (its manifest output's `file://` URL).
fn run_dir(run: &exportcore::Run, what: &str) -> Result<PathBuf> {
    let manifest = run
        .outputs
        .iter()
        .find(|o| o.path == MANIFEST_FILE)
        .ok_or_else(|| ExportError::internal("distributor", "the run has no manifest output"))?;
    manifest.url.strip_prefix("file://").map(Path::new).and_then(Path::parent).map(Path::to_path_buf).ok_or_else(|| {
        ExportError::NotSupported {
            feature: format!(
                "distribution to {what} from {}: the run must be published to a filesystem sink",
                manifest.url
            ),
        }
    })
}

/// Copies the run output in `dir` (verified first) into `target` (created; must be empty or
/// absent), each file linked or copied and checked; returns the files' paths.
///
/// # Errors
/// `ERR_EXPORT_REQUEST_INVALID` for a target inside `dir`; `ERR_EXPORT_VERIFY_FAILED` for output that does not verify; `ERR_EXPORT_DISTRIBUTION_FAILED`
/// naming the target.
pub async fn push_dir(dir: &Path, target: &Path) -> Result<Vec<(String, PathBuf)>> {
    if exportcore::files::lies_inside(target, dir) {
        return Err(ExportError::invalid(
            "target",
            format!("file://{} lies inside the run output {}", target.display(), dir.display()),
        ));
    }
    let report = exportcore::verify::verify_path(dir)?;
    if let Some(f) = report.failures.first() {
        return Err(ExportError::VerificationFailed {
            path: dir.join(&f.path).display().to_string(),
            reason: format!("not copied: the output does not verify: {}", f.problem),
        });
    }
    let name = format!("file://{}", target.display());
    if std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ExportError::distribution_failed(&name, "the directory is not empty"));
    }
    // Built beside the target and renamed onto it once whole and flushed: a failure leaves
    // nothing at the target (a retry finds it empty), and two pushes to one target cannot
    // mix their files (the second rename fails).
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ExportError::distribution_failed(&name, e.to_string()))?;
    }
    let staging = exportcore::files::staging_beside(target, PUSH_STAGING_PREFIX)?;
    let sink =
        exportcore::FsSink::new(staging.path()).map_err(|e| ExportError::distribution_failed(&name, e.report()))?;
    let manifest = exportcore::Manifest::parse(&report.read_verified(dir, MANIFEST_FILE)?)
        .map_err(|e| ExportError::VerificationFailed { path: MANIFEST_FILE.into(), reason: e })?;
    let mut paths: Vec<String> = manifest.entries.iter().map(|e| e.path.to_string()).collect();
    for side in [SIGNED_MANIFEST_FILE, PROVENANCE_FILE, MANIFEST_FILE] {
        if dir.join(side).is_file() {
            paths.push(side.to_owned());
        }
    }
    let mut out = Vec::new();
    for p in paths {
        let ap = exportcore::ArtifactPath::parse(&p)?;
        let src = dir.join(&p);
        // FsSink links or copies, fsyncs, hashes and checks.
        let receipt = exportcore::Sink::put_file(&sink, &ap, &src)
            .await
            .map_err(|e| ExportError::distribution_failed(&name, e.report()))?;
        // What arrived is what was verified (not a file changed since).
        if let Some(e) = manifest.entry(&p) {
            if (receipt.size, receipt.sha256) != (e.size, e.sha256) {
                return Err(ExportError::VerificationFailed {
                    path: src.display().to_string(),
                    reason: "changed after it was verified: not copied".into(),
                });
            }
        }
        out.push((p, target.join(receipt.path.as_str())));
    }
    exportcore::files::publish_dir(staging, target).map_err(|e| ExportError::distribution_failed(&name, e.report()))?;
    Ok(out)
}

/// Prefix of the staging directory a `file://` push builds beside its target.
const PUSH_STAGING_PREFIX: &str = ".exportcore-push-";

#[async_trait::async_trait]
impl exportcore::run::Distributor for ObjectDistributor {
    fn handles(&self, kind: exportcore::DistributionType) -> bool {
        kind == exportcore::DistributionType::Object
    }

    fn accepts(&self, tenant: &exportcore::TenantId, d: &exportcore::Distribution) -> Result<()> {
        self.allowed.check(tenant, d.reference.as_deref().unwrap_or_default())
    }

    async fn distribute(&self, ctx: exportcore::run::DistributeContext<'_>) -> Result<exportcore::DistributionRecord> {
        let reference = ctx
            .distribution
            .reference
            .as_deref()
            .ok_or_else(|| ExportError::invalid("distribution.ref", "required for type object"))?;
        self.allowed.check(&ctx.run.tenant, reference)?;
        let dir = run_dir(ctx.run, reference)?;
        let sha_of = |path: &str| ctx.run.outputs.iter().find(|o| o.path == path).map(|o| (o.sha256, o.size));
        let mut artifacts = Vec::new();
        if let Some(local) = reference.strip_prefix("file://") {
            let target = PathBuf::from(local);
            let copied = push_dir(&dir, &target).await?;
            for (path, at) in copied {
                if let Some((sha, size)) = sha_of(&path) {
                    artifacts.push(exportcore::DistributedArtifact::new(
                        exportcore::ArtifactPath::parse(&path)?,
                        sha,
                        size,
                        at.display().to_string(),
                    ));
                }
            }
        } else {
            let target = s3::S3Target::parse(reference, "distribution.ref")?;
            let pushed = s3::push_s3(&dir, &target, &self.config).await?;
            for o in pushed.objects {
                if let Some((sha, size)) = sha_of(&o.path) {
                    artifacts.push(exportcore::DistributedArtifact::new(
                        exportcore::ArtifactPath::parse(&o.path)?,
                        sha,
                        size,
                        format!("s3://{}/{}", target.bucket, o.key),
                    ));
                }
            }
        }
        Ok(exportcore::DistributionRecord::succeeded(
            ctx.run.run_id.clone(),
            ctx.run.tenant.clone(),
            exportcore::DistributionType::Object,
            reference.to_owned(),
            artifacts,
            exportcore::Timestamp::now(),
        ))
    }
}

/// What a reader uses to fetch one distributed artifact.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ReaderUrl {
    /// The artifact's path in the run.
    pub path: exportcore::ArtifactPath,
    /// A pullable reference (OCI), a presigned URL (S3), a path (directory) or a signed URL
    /// (HTTP through the gateway).
    pub url: String,
    /// Its digest.
    pub sha256: Sha256Digest,
    /// Its size.
    pub size: u64,
    /// When the URL stops working (`None`: a pinned reference or a path, which do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<exportcore::Timestamp>,
}

/// The URLs a reader can use for a record's artifacts, valid for `ttl` from `now` (never past
/// the record's `expiresAt`): OCI records give the pinned `HOST/REPO@sha256:…` reference;
/// object records in S3 a presigned `GET` URL (`s3` reaches the store), in a directory the
/// path; HTTP records a gateway URL (`/export-center/runs/{runId}/artifacts/{path}`) signed
/// with `http` for the record's tenant. Records keep locations, not URLs: this is where URLs
/// are made, when a reader asks (`GET /export-center/distributions/{id}`).
///
/// # Errors
/// `ERR_EXPORT_NOT_FOUND` for an expired record; `ERR_EXPORT_REQUEST_INVALID` for an HTTP record
/// without a URL signer; presigning errors.
pub async fn reader_urls(
    record: &exportcore::DistributionRecord,
    s3: &s3::S3Config,
    http: Option<&signed_url::UrlSigner>,
    now: exportcore::Timestamp,
    ttl: std::time::Duration,
) -> Result<Vec<ReaderUrl>> {
    use exportcore::DistributionType as T;
    if record.expires_at.is_some_and(|e| e <= now) {
        return Err(ExportError::NotFound { path: format!("distribution {} (expired)", record.id) });
    }
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 4);
    let mut until = exportcore::Timestamp::from_unix(now.unix().saturating_add(ttl_secs))?;
    if let Some(e) = record.expires_at {
        until = until.min(e);
    }
    let left = std::time::Duration::from_secs(u64::try_from(until.unix() - now.unix()).unwrap_or(0));
    let mut out = Vec::new();
    for a in &record.artifacts {
        let (url, expires_at) = match record.kind {
            T::Object if a.location.starts_with("s3://") => {
                let (bucket, key) = a.location["s3://".len()..].split_once('/').unwrap_or((&a.location, ""));
                (s3::presign(s3, bucket, key, left).await?, Some(until))
            }
            T::Http => {
                let signer = http.ok_or_else(|| ExportError::invalid("http", "no URL signer configured"))?;
                let path = format!("/export-center/runs/{}/artifacts/{}", record.run_id, a.path);
                (signer.sign("GET", &path, &record.tenant, until)?, Some(until))
            }
            _ => (a.location.clone(), None),
        };
        out.push(ReaderUrl { path: a.path.clone(), url, sha256: a.sha256, size: a.size, expires_at });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use exportcore::{DistributedArtifact, DistributionRecord, DistributionType, RunId, TenantId, Timestamp};

    /// The environment's credentials go to every registry, or with `EXPORTCORE_OCI_REGISTRY`
    /// only to the ones it lists.
    #[test]
    fn environment_credentials_can_be_scoped_to_registries() {
        let env = |scope: Option<&'static str>| {
            move |name: &str| match name {
                "EXPORTCORE_OCI_USERNAME" => Some("u".to_owned()),
                "EXPORTCORE_OCI_PASSWORD" => Some("p".to_owned()),
                "EXPORTCORE_OCI_REGISTRY" => scope.map(str::to_owned),
                _ => None,
            }
        };
        assert!(Credentials::from_env("any.example", &env(None)).is_some());
        let scoped = env(Some("registry.example:5000, other.example"));
        assert!(Credentials::from_env("registry.example:5000", &scoped).is_some());
        assert!(Credentials::from_env("OTHER.example", &scoped).is_some());
        assert!(Credentials::from_env("evil.example", &scoped).is_none());
        assert!(Credentials::from_env("registry.example", &scoped).is_none(), "the port is part of the name");
    }

    fn record(kind: DistributionType, location: &str) -> DistributionRecord {
        let a = DistributedArtifact::new(
            exportcore::ArtifactPath::parse("db.tar.gz").unwrap(),
            Sha256Digest::of(b"x"),
            1,
            location,
        );
        let now = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        DistributionRecord::succeeded(
            RunId::parse("r1").unwrap(),
            TenantId::parse("acme").unwrap(),
            kind,
            "ref",
            vec![a],
            now,
        )
    }

    #[tokio::test]
    async fn reader_urls_by_kind_and_expiry() {
        let now = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let none = s3::S3Config::default();
        let oci = reader_urls(&record(DistributionType::Oci, "reg/x@sha256:00"), &none, None, now, day).await.unwrap();
        assert_eq!((oci[0].url.as_str(), oci[0].expires_at), ("reg/x@sha256:00", None));
        let signer = signed_url::UrlSigner::new("k1", &[1u8; 32]).unwrap();
        let mut http = record(DistributionType::Http, "");
        http.expires_at = Some(Timestamp::parse("2025-01-01T06:00:00Z").unwrap());
        let urls = reader_urls(&http, &none, Some(&signer), now, day).await.unwrap();
        assert!(
            urls[0].url.starts_with("/export-center/runs/r1/artifacts/db.tar.gz?tenant=acme&exp="),
            "{}",
            urls[0].url
        );
        assert_eq!(urls[0].expires_at, http.expires_at, "never past the record's expiry");
        let q = urls[0].url.split_once('?').unwrap().1;
        signer
            .verify("GET", "/export-center/runs/r1/artifacts/db.tar.gz", &TenantId::parse("acme").unwrap(), q, now)
            .unwrap();
        assert!(reader_urls(&http, &none, None, now, day).await.is_err(), "HTTP needs a signer");
        let later = Timestamp::parse("2025-01-02T00:00:00Z").unwrap();
        let e = reader_urls(&http, &none, Some(&signer), later, day).await.unwrap_err();
        assert_eq!(e.code(), "ERR_EXPORT_NOT_FOUND");
    }
}
