//! `mirror:delta`: only what a base mirror lacks, and applying it.
//!
//! A delta run builds the whole new tree in staging (as `mirror:full` would, with the TUF
//! metadata continuing the base's repository: same root, next versions), compares it file by
//! file with the base's run manifest and publishes only the added and changed files, plus:
//!
//! - `delta/manifest.diff.json`: `baseExportId`, `baseManifestHash`, `exportId`, sorted
//!   `added`/`changed`/`removed` paths, one tombstone (`path`, `sha256`) per removal, record
//!   counts per kind (from the indexes), `resetBaseline`, and `files`: the whole new tree;
//! - `delta/full-manifest.json` (+ `.dsse.json`) and `delta/full-provenance.dsse.json` when
//!   signed: the run manifest and provenance of the new tree, which [`apply`] installs, so the
//!   applied directory verifies like a full run.
//!
//! An export id is `sha256:` + the SHA-256 of a mirror's `mirror/export.json`.

use crate::tuf;
use exportcore::manifest::{ManifestBuilder, ManifestEntry, MANIFEST_FILE, PROVENANCE_FILE, SIGNED_MANIFEST_FILE};
use exportcore::sign::dsse;
use exportcore::{
    check_supported, ArtifactType, ExportContext, ExportError, Profile, ProfileDescriptor, Result, RunRequest,
    Sha256Digest, StagedArtifact,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `version` of `delta/manifest.diff.json`.
pub const DIFF_VERSION: &str = "exportcore-mirror-delta/v1";
/// Where the diff lives in a delta.
pub const DIFF_FILE: &str = "delta/manifest.diff.json";
/// The new tree's run manifest, in a delta.
pub const FULL_MANIFEST: &str = "delta/full-manifest.json";
/// Its signature.
pub const FULL_MANIFEST_DSSE: &str = "delta/full-manifest.dsse.json";
/// The new tree's provenance.
pub const FULL_PROVENANCE: &str = "delta/full-provenance.dsse.json";
/// The files a delta leaves to be built again where it is applied (`trivy:db` over the new
/// tree's shards), and the name `trivy:db` stages each under.
const DERIVED: [(&str, &str); 2] =
    [("mirror/trivy/db.tar.gz", "db.tar.gz"), ("mirror/trivy/db.report.json", "trivy-export.json")];

/// Where a delta keeps its patches (`delta/patches/<path>.patch`).
pub const PATCH_DIR: &str = "delta/patches";
/// The log of applied export ids, one per line, in an applied mirror.
pub const APPLIED_LOG: &str = "appliedExportIds.log";

fn base_err(path: impl Into<String>, reason: impl Into<String>) -> ExportError {
    ExportError::BaseMissing { path: path.into(), reason: reason.into() }
}

/// What a delta needs of its base, read and checked.
#[derive(Clone, Debug)]
pub struct Base {
    dir: PathBuf,
    /// `sha256:` + SHA-256 of `mirror/export.json`.
    pub export_id: String,
    /// SHA-256 of `manifest.json`.
    pub manifest_hash: Sha256Digest,
    /// Every file of the base's tree (run manifest entries): path → (size, sha256).
    pub files: BTreeMap<String, (u64, Sha256Digest)>,
    /// The base's TUF repository state.
    pub previous: tuf::Previous,
    /// Export ids already applied to it (its `appliedExportIds.log`).
    pub applied: Vec<String>,
    /// The tenant its `export.json` names.
    pub tenant: Option<String>,
    /// Whether its `mirror/data/` is sealed (`encryption` in its `export.json`).
    pub encrypted: bool,
}

impl Base {
    /// Opens and checks a base: a directory holding a mirror run's output whose every file
    /// matches its run manifest and whose OCI layout and TUF metadata are whole.
    ///
    /// # Errors
    /// `ERR_EXPORT_BASE_MISSING` naming the file: absent, not a mirror, corrupted.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(base_err(dir.display().to_string(), "missing or not a directory"));
        }
        let mp = dir.join(MANIFEST_FILE);
        if !mp.is_file() {
            return Err(base_err(mp.display().to_string(), "missing: not a run output"));
        }
        // Everything below is read through the verification's report: the bytes it checked,
        // never a second read a changing directory could answer differently.
        let options =
            exportcore::verify::VerifyOptions { local_files: vec![APPLIED_LOG.to_owned()], ..Default::default() };
        let report = exportcore::verify::verify_path_with(dir, &options)?;
        let verified = |rel: &str| {
            report.read_verified(dir, rel).map_err(|e| base_err(dir.join(rel).display().to_string(), e.to_string()))
        };
        let bytes = verified(MANIFEST_FILE)?;
        let manifest = exportcore::Manifest::parse(&bytes).map_err(|e| base_err(mp.display().to_string(), e))?;
        if !manifest.profile_id.starts_with("mirror:") {
            return Err(base_err(
                mp.display().to_string(),
                format!("not a mirror: made by profile {}", manifest.profile_id),
            ));
        }
        let log = dir.join(APPLIED_LOG);
        if let Some(f) = report.failures.first() {
            return Err(base_err(dir.join(&f.path).display().to_string(), format!("corrupted: {}", f.problem)));
        }
        // The export id: the SHA-256 of `mirror/export.json`.
        let export_path = dir.join("mirror/export.json");
        let export_bytes = verified("mirror/export.json")
            .map_err(|e| base_err(export_path.display().to_string(), format!("not a mirror: {e}")))?;
        let export_id = format!("sha256:{}", Sha256Digest::of(&export_bytes));
        let export = serde_json::from_slice::<Value>(&export_bytes).unwrap_or(Value::Null);
        let tenant = export["tenant"].as_str().map(str::to_owned);
        let encrypted = !export["encryption"].is_null();
        let known = |rel: &str| report.digests.get(&format!("oci/{rel}")).copied();
        if let Some(p) = crate::oci::check_layout_with(&dir.join("oci"), &known).first() {
            return Err(base_err(dir.display().to_string(), format!("corrupted: {p}")));
        }
        let meta = dir.join("tuf/metadata");
        let fetch = |name: &str| -> std::result::Result<Option<Vec<u8>>, String> {
            let rel = format!("tuf/metadata/{name}");
            if !report.digests.contains_key(&rel) {
                return Ok(None);
            }
            report.read_verified(dir, &rel).map(Some).map_err(|e| e.to_string())
        };
        // The chain's signatures must hold (thresholds, versions, hashes; not expiry: a base
        // whose root has expired is one whose next delta renews it): a delta signs the
        // versions after the base's, so a base whose unsigned metadata were edited (a version
        // pushed to the end of the range, to freeze its clients) is refused here, before our
        // key signs anything.
        tuf::verify_signatures(&fetch).map_err(|p| {
            base_err(meta.join(&p.file).display().to_string(), format!("TUF metadata do not verify: {}", p.message))
        })?;
        let previous = tuf::Previous::read(&fetch)
            .map_err(|e| base_err(meta.display().to_string(), format!("TUF metadata: {e}")))?;
        let applied: Vec<String> = match std::fs::symlink_metadata(&log) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            _ => exportcore::files::read_capped_string(&log, exportcore::files::MAX_MANIFEST_BYTES)?
                .lines()
                .map(str::to_owned)
                .collect(),
        };
        if let Some(bad) = applied.iter().find(|l| !crate::verify::is_export_id(l)) {
            return Err(base_err(
                log.display().to_string(),
                format!(
                    "corrupted: {:?} is not an export id (sha256:<hex>, one per line)",
                    bad.escape_debug().to_string()
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            export_id,
            manifest_hash: Sha256Digest::of(&bytes),
            files: manifest.entries.iter().map(|e| (e.path.to_string(), (e.size, e.sha256))).collect(),
            previous,
            applied,
            tenant,
            encrypted,
        })
    }

    /// The base directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The `mirror:delta` profile: configured with its base (`exportctl run --base DIR`). Its
/// TUF keys must be the ones the base's root names.
#[derive(Clone, Debug, Default)]
pub struct MirrorDelta {
    base: Option<PathBuf>,
    options: crate::Options,
}

impl MirrorDelta {
    /// A delta against the mirror run output in `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: Some(base.into()), options: crate::Options::default() }
    }

    crate::mirror_options!();
}

/// The new tree, built inside the delta run.
#[derive(Debug)]
struct NewTree {
    options: crate::Options,
    previous: tuf::Previous,
}

impl Profile for NewTree {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("mirror:delta", "the new tree of a delta")
    }
    fn validate(&self, _: &RunRequest) -> Result<()> {
        Ok(())
    }
    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        crate::build_tree(ctx, &self.options, Some(&self.previous))
    }
}

/// One index entry, as the delta counts records: its id and the digest of its bytes.
#[derive(serde::Deserialize)]
struct IndexEntry {
    id: String,
    sha256: Sha256Digest,
}

/// Calls `f` for each entry of an index file, read as a stream: neither a `Value` tree nor a
/// list of entries is built. Nothing happens when the file is absent.
fn for_each_entry(path: &Path, f: &mut dyn FnMut(IndexEntry) -> Result<()>) -> Result<()> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Doc<'a> {
        f: &'a mut dyn FnMut(IndexEntry) -> Result<()>,
        failed: &'a mut Option<ExportError>,
    }
    impl<'de> Visitor<'de> for Doc<'_> {
        type Value = ();
        fn expecting(&self, w: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            w.write_str("an index document")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if key == "entries" {
                    map.next_value_seed(Entries { f: &mut *self.f, failed: &mut *self.failed })?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    struct Entries<'a> {
        f: &'a mut dyn FnMut(IndexEntry) -> Result<()>,
        failed: &'a mut Option<ExportError>,
    }
    impl<'de> DeserializeSeed<'de> for Entries<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Entries<'_> {
        type Value = ();
        fn expecting(&self, w: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            w.write_str("a list of index entries")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
            while let Some(e) = seq.next_element::<IndexEntry>()? {
                if let Err(err) = (self.f)(e) {
                    *self.failed = Some(err);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let file = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ExportError::io(path, e)),
        Ok(f) => f,
    };
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let parsed = de.deserialize_map(Doc { f, failed: &mut failed }).and_then(|()| de.end());
    match (failed, parsed) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => {
            Err(ExportError::VerificationFailed { path: path.display().to_string(), reason: format!("index: {e}") })
        }
        (None, Ok(())) => Ok(()),
    }
}

/// Entries per partition the counting aims at (about 3 MiB of map each).
const PARTITION_ENTRIES: u64 = 50_000;

/// Records added, changed and removed between two indexes (by id and digest), in memory that
/// does not grow with the indexes: both sides are spread over partition files in `scratch` by
/// the SHA-256 of the id (64 bytes an entry: id hash, digest), then each partition's old side
/// is held in a map while its new side streams past.
fn record_counts(scratch: &Path, old: &Path, new: &Path) -> Result<Value> {
    // About 100 bytes an entry in an index file.
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let parts = ((size(old).max(size(new)) / 100).div_ceil(PARTITION_ENTRIES)).clamp(1, 256) as usize;
    counts_in_parts(scratch, old, new, parts)
}

fn counts_in_parts(scratch: &Path, old: &Path, new: &Path, parts: usize) -> Result<Value> {
    use std::io::{BufReader, BufWriter, Read, Write};
    std::fs::create_dir_all(scratch).map_err(|e| ExportError::io(scratch, e))?;
    let spread = |side: &str, index: &Path| -> Result<Vec<PathBuf>> {
        let paths: Vec<PathBuf> = (0..parts).map(|i| scratch.join(format!("{side}-{i}"))).collect();
        let mut files = Vec::with_capacity(parts);
        for p in &paths {
            let f = std::fs::File::create(p).map_err(|e| ExportError::io(p, e))?;
            files.push(BufWriter::with_capacity(8 << 10, f));
        }
        for_each_entry(index, &mut |e: IndexEntry| {
            let id = Sha256Digest::of(e.id.as_bytes());
            let i = usize::from(u16::from_le_bytes([id.as_bytes()[0], id.as_bytes()[1]])) % parts;
            let w = &mut files[i];
            w.write_all(id.as_bytes())
                .and_then(|()| w.write_all(e.sha256.as_bytes()))
                .map_err(|err| ExportError::io(&paths[i], err))
        })?;
        for (w, p) in files.iter_mut().zip(&paths) {
            w.flush().map_err(|e| ExportError::io(p, e))?;
        }
        Ok(paths)
    };
    let (olds, news) = (spread("old", old)?, spread("new", new)?);
    let read_pairs = |p: &Path, f: &mut dyn FnMut([u8; 32], [u8; 32])| -> Result<()> {
        let mut r = BufReader::with_capacity(64 << 10, std::fs::File::open(p).map_err(|e| ExportError::io(p, e))?);
        let mut buf = [0u8; 64];
        loop {
            match r.read_exact(&mut buf) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(ExportError::io(p, e)),
            }
            let (mut id, mut digest) = ([0u8; 32], [0u8; 32]);
            id.copy_from_slice(&buf[..32]);
            digest.copy_from_slice(&buf[32..]);
            f(id, digest);
        }
    };
    let (mut added, mut changed, mut removed) = (0u64, 0u64, 0u64);
    for (o, n) in olds.iter().zip(&news) {
        // An id may be listed more than once (records are kept as they are): each id keeps
        // the count of its old entries, and each new entry of it takes one of them.
        let mut map: std::collections::HashMap<[u8; 32], ([u8; 32], u64)> = std::collections::HashMap::new();
        read_pairs(o, &mut |id, d| {
            let e = map.entry(id).or_insert((d, 0));
            *e = (d, e.1 + 1);
        })?;
        read_pairs(n, &mut |id, d| match map.get_mut(&id) {
            Some((old, left)) if *left > 0 => {
                *left -= 1;
                if *old != d {
                    changed += 1;
                }
            }
            _ => added += 1,
        })?;
        removed += map.values().map(|(_, left)| left).sum::<u64>();
        for p in [o, n] {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(json!({"added": added, "changed": changed, "removed": removed}))
}

impl Profile for MirrorDelta {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new("mirror:delta", "Air-gap mirror update: only what a base mirror lacks, with tombstones")
            .encrypts()
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        check_supported(&self.descriptor(), request)?;
        if self.base.is_none() {
            return Err(ExportError::invalid(
                "base",
                "mirror:delta needs a base: the output directory of an earlier mirror run (exportctl run --base DIR)",
            ));
        }
        Ok(())
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        let dir = self.base.as_ref().ok_or_else(|| ExportError::invalid("base", "mirror:delta needs a base"))?;
        let base = Base::open(dir)?;
        if let Some(tenant) = base.tenant.as_deref().filter(|t| *t != ctx.tenant().as_str()) {
            return Err(base_err(
                base.dir.join("mirror/export.json").display().to_string(),
                format!("belongs to tenant {tenant}, not {}", ctx.tenant()),
            ));
        }
        if base.encrypted && !ctx.request().encryption.as_ref().is_some_and(|e| e.enabled) {
            return Err(ExportError::invalid(
                "encryption",
                format!(
                    "the base {} is encrypted: a delta of it must be encrypted too (--encrypt-to), or its records would travel in the clear",
                    base.dir.display()
                ),
            ));
        }
        let all = ctx.run_nested(&NewTree { options: self.options.clone(), previous: base.previous.clone() })?;
        let anchor = ctx.time_anchor(None);
        let new: BTreeMap<String, &StagedArtifact> = all.iter().map(|a| (a.spec.path.to_string(), a)).collect();
        // The same evidence at the same time gives the base's own tree: a delta of nothing
        // could never be applied (its export id is the base's).
        if new.get("mirror/export.json").is_some_and(|a| format!("sha256:{}", a.sha256) == base.export_id) {
            return Err(ExportError::invalid(
                "evidence",
                "nothing changed: this evidence at this time is the base's own mirror (to renew its TUF metadata, give a later --created-at)",
            ));
        }
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        for (path, a) in &new {
            match base.files.get(path) {
                None => added.push(path.clone()),
                Some((size, sha)) if *size != a.size || *sha != a.sha256 => changed.push(path.clone()),
                Some(_) => {}
            }
        }
        let removed: Vec<String> = base.files.keys().filter(|p| !new.contains_key(*p)).cloned().collect();
        // A changed shard or index travels as a patch of the base's when that is smaller (a
        // uniform 1 % change touches every one of them); the other names of the same bytes (its
        // OCI blob, its TUF target) are then rebuilt from it, not carried.
        let mut patches = Vec::new();
        let mut rebuilt: BTreeSet<Sha256Digest> = BTreeSet::new();
        for path in &changed {
            let a = new[path];
            let Some(units) = crate::patch::Units::of(path) else { continue };
            if a.spec.format.contains("aes") {
                continue; // sealed: a fresh nonce changes every byte
            }
            let (scratch, file) = ctx.scratch_file()?;
            drop(file);
            match crate::patch::make(units, &base.dir.join(path), &a.local, &scratch) {
                Ok(size) if size < a.size => {
                    let at = format!("{PATCH_DIR}/{path}.patch");
                    let spec =
                        exportcore::ArtifactSpec::new(&at, ArtifactType::Data, "patch+zstd", "application/zstd")?;
                    ctx.adopt_file(spec, &scratch)?;
                    patches.push(json!({
                        "path": path,
                        "patch": at,
                        "units": units.name(),
                        "baseSha256": base.files[path].1.to_hex(),
                    }));
                    rebuilt.insert(a.sha256);
                }
                // Not smaller, or the base's copy does not read as one (then it goes whole).
                _ => std::fs::remove_file(&scratch).map_err(|e| ExportError::io(&scratch, e))?,
            }
        }
        // The Trivy DB and its report are built again where the delta is applied, from the
        // shards the new tree holds, as the full build built them (`records`): not carried.
        let mut derived = serde_json::Map::new();
        if !all.iter().any(|a| a.spec.format.contains("aes")) {
            for (path, nested) in DERIVED {
                if let Some(a) = new.get(path).filter(|_| added.iter().chain(&changed).any(|p| p == path)) {
                    derived.insert(path.to_owned(), json!(nested));
                    rebuilt.insert(a.sha256);
                }
            }
        }
        for path in added.iter().chain(&changed) {
            let a = new[path];
            if !rebuilt.contains(&a.sha256) {
                ctx.alias_artifact(a.spec.clone(), a)?;
            }
        }
        // Record counts from the indexes, by id and digest.
        let mut records = serde_json::Map::new();
        let (scratch, file) = ctx.scratch_file()?;
        drop(file);
        std::fs::remove_file(&scratch).map_err(|e| ExportError::io(&scratch, e))?;
        for kind in crate::tree::KINDS {
            let path = format!("mirror/indexes/{}", kind.index);
            let cur = new.get(&path).map_or_else(|| base.dir.join("no-such-index"), |a| a.local.clone());
            records.insert(kind.name.into(), record_counts(&scratch, &base.dir.join(&path), &cur)?);
        }
        let export_id = match new.get("mirror/export.json") {
            Some(a) => format!("sha256:{}", a.sha256),
            None => return Err(ExportError::internal("mirror", "the new tree has no export.json")),
        };
        let files: Vec<Value> = all
            .iter()
            .map(|a| json!({"path": a.spec.path.as_str(), "size": a.size, "sha256": a.sha256.to_hex()}))
            .collect();
        let tombstones: Vec<Value> =
            removed.iter().map(|p| json!({"path": p, "sha256": base.files[p].1.to_hex()})).collect();
        let diff = json!({
            "version": DIFF_VERSION,
            "baseExportId": base.export_id,
            "baseManifestHash": base.manifest_hash.to_hex(),
            "exportId": export_id,
            "createdAt": anchor.created_at.to_string(),
            "resetBaseline": false,
            "added": added,
            "changed": changed,
            "removed": removed,
            "tombstones": tombstones,
            "patches": patches,
            "counts": {"files": {"added": added.len(), "changed": changed.len(), "removed": removed.len(), "patched": patches.len()}, "records": records},
            "files": files,
        });
        let mut diff = diff;
        if !derived.is_empty() {
            let request = ctx.request();
            let mut trivy = RunRequest::new(exportcore::ProfileId::from_static("trivy:db"));
            trivy.targets = request.targets.clone();
            trivy.compression = request.compression;
            trivy.compression_level = request.compression_level;
            trivy.strict = request.strict;
            diff["derived"] = json!({
                "files": derived,
                "request": serde_json::to_value(&trivy)
                    .map_err(|e| ExportError::internal_caused("mirror", "serialising the trivy request", e))?,
            });
        }
        crate::stage_json(ctx, DIFF_FILE, ArtifactType::Manifest, &diff)?;

        // The new tree's run manifest and provenance, for `apply` to install.
        let mut builder = ManifestBuilder::run("mirror:delta", anchor);
        for a in &all {
            builder.add(
                ManifestEntry::new(a.spec.path.clone(), a.size, a.sha256, a.spec.media_type.clone())
                    .with_kind(a.spec.kind, a.spec.format.clone()),
            )?;
        }
        let manifest_bytes = builder.build().to_canonical_bytes();
        let manifest =
            crate::stage_bytes(ctx, FULL_MANIFEST, ArtifactType::Manifest, "application/json", &manifest_bytes)?;
        if let Some(signer) = ctx.signer() {
            let signers: [&dyn exportcore::sign::Signer; 1] = [signer];
            let env = dsse::sign(dsse::MANIFEST_PAYLOAD_TYPE, &manifest_bytes, &signers)?;
            let mut subjects: Vec<exportcore::sign::provenance::Resource> = all
                .iter()
                .map(|a| exportcore::sign::provenance::Resource { name: a.spec.path.to_string(), sha256: a.sha256 })
                .collect();
            subjects
                .push(exportcore::sign::provenance::Resource { name: MANIFEST_FILE.into(), sha256: manifest.sha256 });
            // Only what shapes the tree: this statement describes the new tree whoever built
            // it and however it was delivered (no key path as typed, no priority or timeout).
            let mut request = ctx.request().clone();
            request.distribution = None;
            request.priority = exportcore::Priority::default();
            request.timeout_seconds = None;
            request.retention_days = None;
            let statement = exportcore::sign::provenance::statement(&exportcore::sign::provenance::ProvenanceInput {
                run_id: &export_id,
                request: &request,
                subjects,
                dependencies: Vec::new(),
                time: anchor.created_at,
                tenant: "",
                selection: None,
            });
            let statement_bytes = exportcore::canonical::to_vec_direct(&statement)
                .map_err(|e| ExportError::internal_caused("mirror", "serialising the provenance", e))?;
            let prov = dsse::sign(dsse::INTOTO_PAYLOAD_TYPE, &statement_bytes, &signers)?;
            let media = exportcore::manifest::DSSE_MEDIA_TYPE;
            crate::stage_bytes(ctx, FULL_MANIFEST_DSSE, ArtifactType::Signature, media, &env.to_bytes())?;
            crate::stage_bytes(ctx, FULL_PROVENANCE, ArtifactType::Provenance, media, &prov.to_bytes())?;
        }
        Ok(())
    }
}

/// Creates the directory `dst` goes in.
fn make_parent(dst: &Path) -> Result<()> {
    match dst.parent() {
        Some(p) => std::fs::create_dir_all(p).map_err(|e| ExportError::io(p, e)),
        None => Ok(()),
    }
}

/// Copies the delta's file `src` to the new file `dst`, at most `size + 1` bytes, and returns
/// what was copied. Never a hard link: whoever can still write the delta (it came from
/// outside) could otherwise change the applied mirror after its check, in place. `dst` is
/// checked as written, not re-read.
fn copy_in(src: &Path, dst: &Path, size: u64) -> Result<(u64, Sha256Digest)> {
    make_parent(dst)?;
    let from = exportcore::files::open_regular(src)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
    let to = options.open(dst).map_err(|e| ExportError::io(dst, e))?;
    let mut w = exportcore::HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, to));
    std::io::copy(&mut std::io::Read::take(from, size.saturating_add(1)), &mut w)
        .map_err(|e| ExportError::io(src, e))?;
    let (buffered, len, sha) = w.finish();
    buffered.into_inner().map_err(|e| ExportError::io(dst, e.into_error()))?;
    Ok((len, sha))
}

/// Puts `src`'s bytes (a file already in staging) at `dst`: a hard link, else a copy.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    make_parent(dst)?;
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).map_err(|e| ExportError::io(src, e))?;
    }
    Ok(())
}

/// Builds the files a delta leaves to its applier (`derived`: the Trivy DB and its report)
/// with `trivy:db` over the shards now in `staging`, the request and time the delta records;
/// returns where each landed (under `staging`), for the caller to check against `want`.
fn derive(
    diff: &Value,
    d: &str,
    staging: &Path,
    want: &BTreeMap<String, (u64, Sha256Digest)>,
) -> Result<Vec<(String, PathBuf)>> {
    let files = diff["derived"]["files"].as_object().ok_or_else(|| delta_err(d, "derived.files is not an object"))?;
    let request: RunRequest = serde_json::from_value(diff["derived"]["request"].clone())
        .map_err(|e| delta_err(d, format!("derived.request: {e}")))?;
    if request.profile_id.as_str() != "trivy:db" {
        return Err(delta_err(d, format!("derived.request names {}, not trivy:db", request.profile_id)));
    }
    let mut wanted = Vec::new();
    for (path, nested) in files {
        match DERIVED.iter().find(|(p, _)| p == path) {
            Some((_, n)) if nested == n && want.contains_key(path) => wanted.push((path.clone(), *n)),
            _ => return Err(delta_err(d, format!("derived.files names {path}, which cannot be built here"))),
        }
    }
    let created_at = diff["createdAt"]
        .as_str()
        .and_then(|t| exportcore::Timestamp::parse(t).ok())
        .ok_or_else(|| delta_err(d, "createdAt is missing or not RFC 3339"))?;
    let anchor = exportcore::TimeAnchor { created_at, source: exportcore::TimeSource::Request };
    let evidence = crate::records::ShardEvidence::of_tree(staging)?;
    // Scratch inside the staging directory: whatever happens, it goes with it.
    let scratch =
        tempfile::Builder::new().prefix(".derive-").tempdir_in(staging).map_err(|e| ExportError::io(staging, e))?;
    let staged = exportcore::export_detached(&exportcore_trivy::TrivyDb, &request, &evidence, scratch.path(), anchor)?;
    let mut out = Vec::new();
    for (path, nested) in wanted {
        let a = staged
            .iter()
            .find(|a| a.spec.path == nested)
            .ok_or_else(|| ExportError::internal("mirror", format!("trivy:db wrote no {nested}")))?;
        let dst = staging.join(&path);
        make_parent(&dst)?;
        std::fs::rename(&a.local, &dst)
            .or_else(|_| std::fs::copy(&a.local, &dst).map(|_| ()))
            .map_err(|e| ExportError::io(&dst, e))?;
        out.push((path, dst));
    }
    Ok(out)
}

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// The new export id.
    pub export_id: String,
    /// Files taken from the base, written from the delta, and left out (tombstones).
    pub kept: usize,
    /// Files written from the delta.
    pub written: usize,
    /// Files removed.
    pub removed: usize,
}

fn delta_err(path: &str, reason: impl Into<String>) -> ExportError {
    ExportError::VerificationFailed { path: path.to_owned(), reason: reason.into() }
}

/// Applies `delta` to `base`, writing the new mirror to `out` (absent or empty; filled
/// atomically: built beside it and renamed into place). Before writing anything it checks
/// that the delta is whole (its run manifest; with `options.verifiers`, also signed by one of
/// those keys: without keys nothing proves who made it), that its tombstones are exactly its `removed`
/// list, that the base is the one the delta was built on (`baseManifestHash`,
/// `baseExportId`) and was not given this delta already (`appliedExportIds.log`), and that
/// every removed file is the one the tombstone names. The result's files are checked against
/// the diff's list of the whole new tree; the run manifest and provenance of the new tree
/// replace the base's, and the log gains the new export id.
///
/// # Errors
/// `ERR_EXPORT_BASE_MISSING` for a wrong, changed or corrupted base (or a delta applied
/// twice or out of order); `ERR_EXPORT_VERIFY_FAILED` for a delta that is not whole or not
/// consistent; `ERR_EXPORT_REQUEST_INVALID` for an `out` that is not empty; I/O errors.
pub fn apply(
    base_dir: &Path,
    delta_dir: &Path,
    out: &Path,
    options: &exportcore::verify::VerifyOptions,
) -> Result<Applied> {
    for (input, flag) in [(base_dir, "--base"), (delta_dir, "--delta")] {
        if exportcore::files::lies_inside(out, input) {
            return Err(ExportError::invalid(
                "--out",
                format!("{} lies inside {flag} {}", out.display(), input.display()),
            ));
        }
    }
    if !crate::is_delta(delta_dir) {
        return Err(delta_err(&delta_dir.display().to_string(), format!("not a mirror delta (no {DIFF_FILE})")));
    }
    let report = exportcore::verify::verify_path_with(delta_dir, options)?;
    if let Some(f) = report.failures.first() {
        return Err(delta_err(
            &delta_dir.join(&f.path).display().to_string(),
            format!("the delta is not whole: {}", f.problem),
        ));
    }
    let diff_path = delta_dir.join(DIFF_FILE);
    // The bytes the verification read, not a second read's.
    let diff: Value = serde_json::from_slice(&report.read_verified(delta_dir, DIFF_FILE)?)
        .map_err(|e| delta_err(&diff_path.display().to_string(), format!("not JSON: {e}")))?;
    let d = diff_path.display().to_string();
    if diff["version"] != DIFF_VERSION {
        return Err(delta_err(&d, format!("unknown version {}", diff["version"])));
    }
    // Every path the diff names is relative and stays inside the tree it is joined to.
    let safe = |p: &str, key: &str| -> Result<String> {
        exportcore::ArtifactPath::parse(p).map(|a| a.to_string()).map_err(|e| delta_err(&d, format!("{key}: {e}")))
    };
    let strings = |key: &str| -> Result<Vec<String>> {
        diff[key]
            .as_array()
            .ok_or_else(|| delta_err(&d, format!("{key} is not a list")))?
            .iter()
            .map(|v| {
                let p = v.as_str().ok_or_else(|| delta_err(&d, format!("{key} holds a non-string")))?;
                safe(p, key)
            })
            .collect()
    };
    let (added, changed, removed) = (strings("added")?, strings("changed")?, strings("removed")?);
    let mut tombstones = BTreeMap::new();
    for t in diff["tombstones"].as_array().into_iter().flatten() {
        let (Some(p), Some(sha)) =
            (t["path"].as_str(), t["sha256"].as_str().and_then(|h| h.parse::<Sha256Digest>().ok()))
        else {
            return Err(delta_err(&d, "a tombstone lacks path or sha256"));
        };
        tombstones.insert(safe(p, "tombstones")?, sha);
    }
    if tombstones.keys().cloned().collect::<BTreeSet<_>>() != removed.iter().cloned().collect::<BTreeSet<_>>() {
        return Err(delta_err(&d, "the tombstones disagree with the removed list"));
    }
    let export_id = diff["exportId"].as_str().ok_or_else(|| delta_err(&d, "no exportId"))?.to_owned();
    let base = Base::open(base_dir)?;
    if base.applied.contains(&export_id) || base.export_id == export_id {
        return Err(base_err(base_dir.display().to_string(), format!("delta {export_id} was already applied to it")));
    }
    if diff["baseManifestHash"].as_str() != Some(base.manifest_hash.to_hex().as_str()) {
        return Err(base_err(
            base_dir.join(MANIFEST_FILE).display().to_string(),
            "its manifest hash differs from the delta's baseManifestHash: another base, or deltas out of order",
        ));
    }
    if diff["baseExportId"].as_str() != Some(base.export_id.as_str()) {
        return Err(base_err(base_dir.display().to_string(), "its export id differs from the delta's baseExportId"));
    }
    for (path, sha) in &tombstones {
        if base.files.get(path).map(|f| f.1) != Some(*sha) {
            return Err(base_err(base_dir.join(path).display().to_string(), "differs from the delta's tombstone"));
        }
    }
    // Patches: each rebuilds a changed file from the base's copy, which must be the one named.
    let mut patches: Vec<(String, crate::patch::Units, PathBuf)> = Vec::new();
    for p in diff["patches"].as_array().into_iter().flatten() {
        let (Some(path), Some(at), Some(units), Some(base_sha)) = (
            p["path"].as_str(),
            p["patch"].as_str(),
            p["units"].as_str(),
            p["baseSha256"].as_str().and_then(|h| h.parse::<Sha256Digest>().ok()),
        ) else {
            return Err(delta_err(&d, "a patches[] entry lacks path, patch, units or baseSha256"));
        };
        let units = crate::patch::Units::of(path)
            .filter(|u| u.name() == units && changed.iter().any(|c| c == path))
            .ok_or_else(|| delta_err(&d, format!("patches[] names {path}, which is not a changed shard or index")))?;
        let at = safe(at, "patches")?;
        if !at.starts_with(&format!("{PATCH_DIR}/")) {
            return Err(delta_err(&d, format!("patch {at} lies outside {PATCH_DIR}/")));
        }
        if base.files.get(path).map(|f| f.1) != Some(base_sha) {
            return Err(base_err(
                base_dir.join(path).display().to_string(),
                "is not the file the delta's patch was made against",
            ));
        }
        patches.push((path.to_owned(), units, delta_dir.join(at)));
    }
    let mut want: BTreeMap<String, (u64, Sha256Digest)> = BTreeMap::new();
    for f in diff["files"].as_array().into_iter().flatten() {
        let (Some(p), Some(size), Some(sha)) =
            (f["path"].as_str(), f["size"].as_u64(), f["sha256"].as_str().and_then(|h| h.parse().ok()))
        else {
            return Err(delta_err(&d, "a files[] entry lacks path, size or sha256"));
        };
        let p = safe(p, "files")?;
        // The new tree's files; its run manifest, signatures and log are written below.
        if [MANIFEST_FILE, SIGNED_MANIFEST_FILE, PROVENANCE_FILE, APPLIED_LOG].contains(&p.as_str())
            || p.starts_with("delta/")
        {
            return Err(delta_err(&d, format!("files[] lists {p}, which no mirror tree holds as a file of its own")));
        }
        want.insert(p, (size, sha));
    }
    // ... and exactly the files the new tree's run manifest (signed with the delta) lists.
    let full_path = delta_dir.join(FULL_MANIFEST);
    let full = exportcore::Manifest::parse(&report.read_verified(delta_dir, FULL_MANIFEST)?)
        .map_err(|e| delta_err(&full_path.display().to_string(), e))?;
    let listed: BTreeMap<String, (u64, Sha256Digest)> =
        full.entries.iter().map(|e| (e.path.to_string(), (e.size, e.sha256))).collect();
    if listed != want {
        return Err(delta_err(&d, format!("files[] differs from the new tree's manifest {FULL_MANIFEST}")));
    }

    // Claim `out`, build beside it, rename into place.
    match std::fs::read_dir(out) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(ExportError::invalid("--out", format!("{} is not empty", out.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ExportError::io(out, e)),
    }
    let staging = exportcore::files::staging_beside(out, APPLY_STAGING_PREFIX)?;
    let from_delta: BTreeSet<&String> = added.iter().chain(&changed).collect();
    let (mut kept, mut written) = (0, 0);
    // Bytes already in place, by digest: the other names of a patched file link to it.
    let mut by_sha: BTreeMap<Sha256Digest, PathBuf> = BTreeMap::new();
    let mut deferred = Vec::new();
    let check = |dst: &Path, src: &Path, who: &str, (size, sha): (u64, Sha256Digest)| -> Result<()> {
        // A link swapped into the base meanwhile is linked as a link: never one in NEW.
        if !std::fs::symlink_metadata(dst).is_ok_and(|m| m.file_type().is_file()) {
            return Err(delta_err(&src.display().to_string(), format!("{who} is not a regular file")));
        }
        let (got_size, got_sha) = exportcore::files::hash_regular(dst)?;
        if got_size != size || got_sha != sha {
            return Err(delta_err(&src.display().to_string(), format!("{who} is not the file the new tree lists")));
        }
        Ok(())
    };
    for (path, units, patch) in &patches {
        let target = *want.get(path).ok_or_else(|| delta_err(&d, format!("patches {path}, which files[] lacks")))?;
        let dst = staging.path().join(path);
        make_parent(&dst)?;
        let file = std::fs::File::create(&dst).map_err(|e| ExportError::io(&dst, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        crate::patch::apply(*units, &base_dir.join(path), patch, target.0, &mut w)?;
        w.into_inner().map_err(|e| ExportError::io(&dst, e.into_error()))?;
        check(&dst, patch, "what the patch rebuilds", target)?;
        by_sha.insert(target.1, dst);
        written += 1;
    }
    for (path, &(size, sha)) in &want {
        let dst = staging.path().join(path);
        if by_sha.get(&sha) == Some(&dst) {
            continue;
        }
        let (src, who) = if from_delta.contains(path) {
            written += 1;
            let own = delta_dir.join(path);
            match by_sha.get(&sha) {
                _ if own.exists() => (own, "the delta's copy"),
                Some(same) => (same.clone(), "the patched file"),
                // Another name of a file built below from the new records.
                None => {
                    deferred.push((path.clone(), dst, (size, sha)));
                    continue;
                }
            }
        } else {
            kept += 1;
            (base_dir.join(path), "the base's copy")
        };
        // The base's unchanged files are linked (the bulk of a mirror: blobs; the base is the
        // operator's own tree, in the same hands as NEW); what came with the delta, from
        // outside, is copied, so whoever can still write the delta cannot change NEW.
        if src.starts_with(staging.path()) || src.starts_with(base_dir) {
            link_or_copy(&src, &dst)?;
            check(&dst, &src, who, (size, sha))?;
        } else if copy_in(&src, &dst, size)? != (size, sha) {
            return Err(delta_err(&src.display().to_string(), format!("{who} is not the file the new tree lists")));
        }
    }
    if diff.get("derived").is_some() {
        for (path, dst) in derive(&diff, &d, staging.path(), &want)? {
            check(&dst, &dst, "the Trivy DB built from the new tree's records", want[&path])?;
            by_sha.insert(want[&path].1, dst);
            written += 1;
        }
    }
    for (path, dst, target) in deferred {
        let src = by_sha
            .get(&target.1)
            .ok_or_else(|| delta_err(&delta_dir.join(&path).display().to_string(), "missing from the delta"))?;
        if *src == dst {
            continue; // built in place
        }
        link_or_copy(src, &dst)?;
        check(&dst, src, "the rebuilt file", target)?;
    }
    for (from, to) in
        [(FULL_MANIFEST, MANIFEST_FILE), (FULL_MANIFEST_DSSE, SIGNED_MANIFEST_FILE), (FULL_PROVENANCE, PROVENANCE_FILE)]
    {
        // The bytes the delta's verification read (a file swapped since is an error).
        if delta_dir.join(from).exists() {
            write_new(&staging.path().join(to), &report.read_verified(delta_dir, from)?)?;
        }
    }
    let mut log = base.applied;
    log.push(export_id.clone());
    write_new(&staging.path().join(APPLIED_LOG), (log.join("\n") + "\n").as_bytes())?;
    // Into place, durably (files, directories, the rename); on any error the staging
    // directory is dropped (removed).
    exportcore::files::publish_dir(staging, out)?;
    Ok(Applied { export_id, kept, written, removed: removed.len() })
}

/// Prefix of `apply`'s staging directory beside `--out` (`exportctl` removes its own on a
/// signal; one left by a killed process is removed by the next `apply`).
pub const APPLY_STAGING_PREFIX: &str = ".mirror-apply-";

/// Writes a file that must not exist yet (never through a link to a base's file).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| ExportError::io(path, e))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| ExportError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(dir: &Path, name: &str, entries: &[(String, &str)]) -> PathBuf {
        let list: Vec<Value> = entries
            .iter()
            .map(|(id, body)| json!({"file": "f", "id": id, "line": 1, "sha256": Sha256Digest::of(body.as_bytes()).to_hex()}))
            .collect();
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec(&json!({"entries": list, "kind": "advisory", "version": "v1"})).unwrap())
            .unwrap();
        p
    }

    #[test]
    fn counts_are_the_same_in_one_partition_or_many() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<(String, &str)> =
            (0..1000).map(|i| (format!("A-{i}"), if i % 10 == 0 { "x" } else { "y" })).collect();
        // 100 changed (every 10th), 50 removed (900..950), 30 added.
        let mut new: Vec<(String, &str)> =
            (0..1000).filter(|i| !(900..950).contains(i)).map(|i| (format!("A-{i}"), "y")).collect();
        new.extend((0..30).map(|i| (format!("B-{i}"), "z")));
        let (o, n) = (index(dir.path(), "old.json", &old), index(dir.path(), "new.json", &new));
        let want = json!({"added": 30, "changed": 95, "removed": 50});
        for parts in [1, 7, 256] {
            let got = counts_in_parts(&dir.path().join(format!("s{parts}")), &o, &n, parts).unwrap();
            assert_eq!(got, want, "{parts} partitions");
        }
        // An absent side counts as empty; a malformed index is an error naming it.
        let none = counts_in_parts(&dir.path().join("s"), &dir.path().join("absent"), &n, 3).unwrap();
        assert_eq!(none, json!({"added": 980, "changed": 0, "removed": 0}));
        std::fs::write(dir.path().join("bad.json"), b"{\"entries\":[{\"id\":1}]}").unwrap();
        let err = counts_in_parts(&dir.path().join("s"), &dir.path().join("bad.json"), &n, 3).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
    }

    /// Ids listed more than once (records are kept as they are) count one old entry per new
    /// one: no wrap-around of `removed` (a panic in a debug build, 2^64 - 1 in a release one).
    #[test]
    fn repeated_ids_count_entry_by_entry() {
        let dir = tempfile::tempdir().unwrap();
        let old = vec![("A".to_owned(), "x"), ("B".to_owned(), "y"), ("B".to_owned(), "y")];
        let new = vec![("A".to_owned(), "x"), ("A".to_owned(), "x"), ("A".to_owned(), "q"), ("B".to_owned(), "y")];
        let (o, n) = (index(dir.path(), "old.json", &old), index(dir.path(), "new.json", &new));
        for parts in [1, 3] {
            let got = counts_in_parts(&dir.path().join(format!("d{parts}")), &o, &n, parts).unwrap();
            assert_eq!(got, json!({"added": 2, "changed": 0, "removed": 1}), "{parts} partitions");
        }
    }
}
