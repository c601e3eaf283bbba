//! # exportcore-mirror
//!
//! **`mirror:full`** ([`MirrorFull`]): everything an air-gapped site needs to seed a
//! vulnerability-data mirror, in one run, verifiable on the far side:
//!
//! ```text
//! mirror/   export.json provenance.json README.md
//!           indexes/{advisories,vex,findings}.index.json
//!           data/raw/advisories/<ecosystem>.jsonl.zst  data/raw/vex/openvex.jsonl.zst
//!           data/policy/findings.jsonl.zst             trivy/db.tar.gz trivy/javadb.tar.gz
//!           data/blobs/…  (the evidence's `blobs/`, byte for byte)  indexes/blobs.index.json
//! oci/      an OCI image layout: tags `mirror`, `trivy-db`, `trivy-java-db`
//!           (`mirror` an index of part manifests beyond 1,000 files: `oci_max_layers`)
//! tuf/      metadata/{1.root,root,1.targets,1.snapshot,timestamp}.json, targets/<sha256>.<name>
//!           (and `1.bins-<prefix>.json` hashed bins beyond 10,000 files: `TufOptions`)
//! manifest.json (+ manifest.dsse.json, provenance.dsse.json when signed)
//! ```
//!
//! Records are written in RFC 8785 canonical form, one per line, zstd-compressed, sharded by
//! ecosystem family; each index lists every record's id, time, file, line and the SHA-256 of
//! its canonical bytes. The Trivy DBs are built by `exportcore-trivy` inside the same run
//! ([`exportcore::ExportContext::run_nested_with`]), `trivy:db` from the mirror's own
//! shards, so a site applying a delta builds the same DB from the records it already holds
//! instead of receiving it ([`exportcore::export_detached`]). `oci/` holds the same bytes as artifacts with
//! Trivy's own media types, so `skopeo copy oci:OUT/oci:trivy-db docker://REGISTRY/trivy-db:2`
//! gives a repository the real Trivy pulls from. `tuf/` is a TUF 1.0 repository (consistent
//! snapshots) whose targets are the files of `mirror/`, signed through the run's signer
//! ([`tuf`]; separate role keys and thresholds with [`TufOptions`]); its expiry is computed
//! from the pinned time, so two builds of the same inputs are byte-identical. The OCI layout
//! and TUF metadata are written by hand on the `oci-spec` types and `serde_json`: no
//! maintained Rust TUF crate writes a static repository (see `tuf`).
//!
//! [`verify_path_with`] checks a run directory as a whole: the run manifest (and its
//! signatures), the OCI layout's digests and the TUF chain at a chosen time.
//!
//! ```
//! use exportcore::{InMemorySink, MemoryEvidence, RunBuilder, RunRequest};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut ev = MemoryEvidence::new();
//! ev.insert("advisories/a.json", r#"{"id":"GHSA-1","modified":"2024-05-01T00:00:00Z",
//!   "affected":[{"package":{"ecosystem":"npm","name":"lodash"},
//!     "ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"4.17.21"}]}]}]}"#)?;
//! let sink = InMemorySink::new();
//! let run = RunBuilder::new(exportcore_mirror::MirrorFull::default(), ev, sink.clone())
//!     .execute(RunRequest::builder("mirror:full").build()?)
//!     .await?
//!     .run;
//! assert!(run.outputs.iter().any(|o| o.path == "mirror/data/raw/advisories/npm.jsonl.zst"));
//! assert!(run.outputs.iter().any(|o| o.path == "tuf/metadata/timestamp.json"));
//! assert!(run.outputs.iter().any(|o| o.path == "oci/index.json"));
//! # Ok::<(), exportcore::ExportError>(())
//! # }).unwrap();
//! ```

mod delta;
pub mod encryption;
mod gcm;
mod oci;
mod patch;
mod records;
mod tree;
pub mod tuf;
mod verify;

pub use delta::{
    apply, Applied, Base, MirrorDelta, APPLIED_LOG, APPLY_STAGING_PREFIX, DIFF_FILE, DIFF_VERSION, FULL_MANIFEST,
    FULL_MANIFEST_DSSE, FULL_PROVENANCE, PATCH_DIR,
};
pub use oci::{check_layout, check_layout_with, DEFAULT_MAX_LAYERS, MIRROR_ARTIFACT_TYPE};
pub use tree::MAX_SHARDS;
pub use tuf::{Role, TufOptions};
pub use verify::{is_delta, is_mirror, verify_path_with};

use exportcore::{
    check_supported, ArtifactSpec, ArtifactType, EvidenceKind, ExportContext, ExportError, Profile, ProfileDescriptor,
    Progress, Result, RunRequest, StagedArtifact,
};
use serde_json::{json, Value};
use std::sync::Arc;

/// `version` of `mirror/export.json`.
pub const EXPORT_VERSION: &str = "exportcore-mirror/v1";

/// What both mirror profiles are configured with.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub tuf: TufOptions,
    pub resolvers: Vec<Arc<dyn encryption::KeyResolver>>,
    pub entropy: Arc<dyn encryption::Entropy>,
    pub oci_max_layers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tuf: TufOptions::default(),
            resolvers: Vec::new(),
            entropy: Arc::new(encryption::OsEntropy),
            oci_max_layers: oci::DEFAULT_MAX_LAYERS,
        }
    }
}

/// The `mirror:full` profile (see the crate docs).
#[derive(Clone, Debug, Default)]
pub struct MirrorFull {
    options: Options,
}

macro_rules! mirror_options {
    () => {
        /// Signs the TUF metadata with these role keys, thresholds and lifetimes instead of
        /// the defaults (every role signed by the run's signer, threshold 1).
        #[must_use]
        pub fn tuf(mut self, options: $crate::TufOptions) -> Self {
            self.options.tuf = options;
            self
        }

        /// Adds a resolver for `encryption.kmsKey` references other than age recipients
        /// (a key service); age recipients (`age1…`, `age:age1…`) are built in.
        #[must_use]
        pub fn key_resolver(mut self, resolver: std::sync::Arc<dyn $crate::encryption::KeyResolver>) -> Self {
            self.options.resolvers.push(resolver);
            self
        }

        /// Takes the data key and nonces from `entropy` instead of the operating system
        /// (tests: [`crate::encryption::SeededEntropy`] makes encrypted builds repeatable, all but the
        /// age-wrapped keys).
        #[must_use]
        pub fn entropy(mut self, entropy: std::sync::Arc<dyn $crate::encryption::Entropy>) -> Self {
            self.options.entropy = entropy;
            self
        }

        /// Lists at most `layers` files in one manifest of the `oci/` layout (default
        /// [`crate::DEFAULT_MAX_LAYERS`], at least 1): the `mirror` image of a mirror with more
        /// files is an image index of part manifests.
        #[must_use]
        pub fn oci_max_layers(mut self, layers: usize) -> Self {
            self.options.oci_max_layers = layers.max(1);
            self
        }
    };
}

impl MirrorFull {
    mirror_options!();
}

pub(crate) use mirror_options;

/// A registry holding `mirror:full` and an unconfigured `mirror:delta` (its runs are refused
/// until it is registered again with a base: [`MirrorDelta::new`]).
pub fn profiles() -> exportcore::Profiles {
    exportcore::Profiles::new().with(MirrorFull::default()).with(MirrorDelta::default())
}

fn stage_json(ctx: &mut ExportContext<'_>, path: &str, kind: ArtifactType, v: &Value) -> Result<StagedArtifact> {
    let bytes = exportcore::canonical::to_vec(v)
        .map_err(|e| ExportError::internal_caused("mirror", format!("serialising {path}"), e))?;
    stage_bytes(ctx, path, kind, "application/json", &bytes)
}

fn stage_bytes(
    ctx: &mut ExportContext<'_>,
    path: &str,
    kind: ArtifactType,
    media_type: &str,
    bytes: &[u8],
) -> Result<StagedArtifact> {
    let spec = ArtifactSpec::new(path, kind, "raw", media_type)?;
    let (staged, ()) = ctx.write_artifact(spec, |w| w.write_all(bytes).map_err(|e| ExportError::io(path, e)))?;
    Ok(staged)
}

/// Runs a Trivy profile inside the mirror run (over `source`, else the run's evidence) and
/// keeps its package (`keep` → new path) and report; `None` when the evidence has nothing
/// that profile can use.
fn nested_trivy(
    ctx: &mut ExportContext<'_>,
    profile: &dyn Profile,
    source: Option<&records::ShardEvidence>,
    package: &str,
    report: &str,
) -> Result<Option<(StagedArtifact, StagedArtifact)>> {
    let nested = match source {
        Some(s) => ctx.run_nested_with(profile, s),
        None => ctx.run_nested(profile),
    };
    let staged = match nested {
        Ok(s) => s,
        Err(ExportError::EvidenceEmpty { what, .. }) => {
            ctx.warn("WARN_MIRROR_NO_TRIVY_DB", format!("no {package}: the evidence holds no {what}"));
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let find = |name: &str| staged.iter().find(|a| a.spec.path == name).cloned();
    let (Some(pkg), Some(rep)) = (find(package), find("trivy-export.json")) else {
        return Err(ExportError::internal("mirror", format!("the nested Trivy profile wrote no {package}")));
    };
    let pkg = ctx.alias_artifact(
        ArtifactSpec::new(&format!("mirror/trivy/{package}"), ArtifactType::Database, "tar+gzip", "application/gzip")?,
        &pkg,
    )?;
    let rep = ctx.alias_artifact(
        ArtifactSpec::new(&format!("mirror/trivy/{report}"), ArtifactType::Metadata, "json", "application/json")?,
        &rep,
    )?;
    Ok(Some((pkg, rep)))
}

const README: &str = "# Air-gap mirror (exportcore mirror:full)

This directory is one mirror bundle. Every file is listed with its size and SHA-256 in
`export.json`, in the TUF targets metadata of `../tuf/` and in the run's `../manifest.json`.

- `data/raw/advisories/*.jsonl.zst`, `data/raw/vex/*.jsonl.zst`, `data/policy/*.jsonl.zst`:
  records in RFC 8785 canonical JSON, one per line, zstd-compressed (`zstd -dc FILE`).
- `data/blobs/`: files carried as they are (archives, image layers, pre-built databases);
  `indexes/blobs.index.json` lists each with its media type, size and SHA-256.
- `indexes/*.index.json`: every record's id, time, file, line and SHA-256.
- `trivy/db.tar.gz`, `trivy/javadb.tar.gz`: databases for `trivy --cache-dir` (extract into
  `db/` and `java-db/`), also in `../oci/` as `trivy-db` and `trivy-java-db` for a registry.

Verify before use, on the far side:

    exportctl verify OUT --key PUBLIC_KEY.pem [--now 2025-01-01T00:00:00Z]

or with any TUF client, trusting `../tuf/metadata/1.root.json`.
";

impl Profile for MirrorFull {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new(
            "mirror:full",
            "Air-gap mirror: canonical evidence, Trivy DBs, an OCI image layout and TUF metadata",
        )
        .encrypts()
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        check_supported(&self.descriptor(), request)
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        build_tree(ctx, &self.options, None)
    }
}

/// Builds the whole output (`mirror/`, `oci/`, `tuf/`) into the run; with `previous`, the TUF
/// metadata continues that repository (its root, the next versions). The tree always
/// describes a full mirror (`profileId` `mirror:full` in `export.json`): a delta applied to its
/// base gives exactly the `mirror/` a full build of the same evidence gives.
pub(crate) fn build_tree(
    ctx: &mut ExportContext<'_>,
    options: &Options,
    previous: Option<&tuf::Previous>,
) -> Result<()> {
    let profile_id = "mirror:full";
    let tuf_options = &options.tuf;
    let sealer = match ctx.request().encryption.as_ref().filter(|e| e.enabled) {
        None => None,
        Some(e) => Some(encryption::Sealer::new(
            e.kms_key.as_deref().unwrap_or_default(),
            &options.resolvers,
            Arc::clone(&options.entropy),
            ctx.run_id(),
            ctx.tenant(),
        )?),
    };
    {
        let mut files: Vec<StagedArtifact> = Vec::new();
        let mut counts = serde_json::Map::new();
        let mut newest = None;
        let spans = [(0u8, 30u8), (30, 35), (35, 40)];
        // The Trivy DB is built from the mirror's own shards (see `records`), unless they
        // are sealed: then from the evidence.
        let mut shards = records::ShardEvidence::default();
        for (kind, span) in tree::KINDS.iter().zip(spans) {
            let out = tree::write_kind(ctx, *kind, span, sealer.as_ref())?;
            counts.insert(kind.name.into(), json!(out.records));
            newest = newest.max(out.newest);
            files.extend(out.files);
            if records::SOURCES.iter().any(|s| s.0 == kind.evidence) {
                for (name, local, plain) in out.shards {
                    shards.add(kind.evidence, &name, local, plain)?;
                }
            }
        }
        let trivy_source = if sealer.is_none() { Some(&shards) } else { None };
        let blobs = tree::write_blobs(ctx, (40, 45), sealer.as_ref())?;
        if !blobs.files.is_empty() {
            counts.insert("blob".into(), json!(blobs.records));
        }
        files.extend(blobs.files);
        let java = !ctx.evidence().list(EvidenceKind::Java)?.is_empty();
        let records: u64 = counts.values().filter_map(Value::as_u64).sum();
        if records == 0 && !java {
            ctx.no_records("advisories, VEX documents, policy findings, Maven index entries or blobs")?;
        }
        let anchor = ctx.time_anchor(newest);
        let mut trivy = Vec::new();
        if counts["advisory"].as_u64().unwrap_or(0) > 0 {
            if let Some((db, report)) =
                nested_trivy(ctx, &exportcore_trivy::TrivyDb, trivy_source, "db.tar.gz", "db.report.json")?
            {
                trivy.push((
                    "trivy-db",
                    exportcore_trivy::CONFIG_MEDIA_TYPE,
                    exportcore_trivy::DB_LAYER_MEDIA_TYPE,
                    db.clone(),
                ));
                files.extend([db, report]);
            }
        }
        ctx.progress(Progress { percent: 70, items_completed: records, items_total: 0 });
        if java {
            if let Some((db, report)) =
                nested_trivy(ctx, &exportcore_trivy::TrivyJavaDb, None, "javadb.tar.gz", "javadb.report.json")?
            {
                trivy.push((
                    "trivy-java-db",
                    exportcore_trivy::CONFIG_MEDIA_TYPE,
                    exportcore_trivy::JAVADB_LAYER_MEDIA_TYPE,
                    db.clone(),
                ));
                files.extend([db, report]);
            }
        }
        ctx.progress(Progress { percent: 85, items_completed: records, items_total: 0 });

        files.push(stage_bytes(ctx, "mirror/README.md", ArtifactType::Metadata, "text/markdown", README.as_bytes())?);
        files.sort_by(|a, b| a.spec.path.cmp(&b.spec.path));
        let listed: Vec<Value> = files
            .iter()
            .map(|f| {
                json!({"path": rel(f), "size": f.size, "sha256": f.sha256.to_hex(), "mediaType": f.spec.media_type})
            })
            .collect();
        let selectors = &ctx.request().selectors;
        let mut export = json!({
            "version": EXPORT_VERSION,
            "profileId": profile_id,
            "createdAt": anchor.created_at.to_string(),
            "counts": counts,
            "files": listed,
        });
        if !selectors.is_empty() {
            export["selectors"] = serde_json::to_value(selectors).unwrap_or(Value::Null);
        }
        export["tenant"] = json!(ctx.tenant().as_str());
        if let Some(s) = &sealer {
            export["encryption"] = s.record();
            // Said at every encrypted build, since it is easy to assume more is sealed.
            let dbs = if trivy.is_empty() {
                ""
            } else {
                "the Trivy DBs (the advisories' content, under mirror/trivy/ and oci/), "
            };
            ctx.warn(
                "WARN_MIRROR_PARTLY_CLEAR",
                format!("only mirror/data/ is encrypted: {dbs}the indexes (each record's id, time and plaintext digest) and export.json are in the clear"),
            );
        }
        let export_file = stage_json(ctx, "mirror/export.json", ArtifactType::Manifest, &export)?;
        let provenance = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "export.json", "digest": {"sha256": export_file.sha256.to_hex()}}],
            "predicateType": "https://slsa.dev/provenance/v1",
            "predicate": {
                "buildDefinition": {
                    "buildType": "urn:exportcore:buildtype:mirror:v1",
                    "externalParameters": {"profileId": profile_id, "selectors": export.get("selectors").cloned().unwrap_or(json!({}))},
                    "internalParameters": {"counts": export["counts"].clone()},
                    "resolvedDependencies": [],
                },
                "runDetails": {
                    "builder": {"id": exportcore::sign::provenance::builder_id()},
                    "metadata": {"startedOn": anchor.created_at.to_string(), "finishedOn": anchor.created_at.to_string()},
                },
            },
        });
        let mut provenance = provenance;
        if let Some(enc) = export.get("encryption") {
            provenance["predicate"]["buildDefinition"]["internalParameters"]["encryption"] = enc.clone();
        }
        files.push(export_file);
        files.push(stage_json(ctx, "mirror/provenance.json", ArtifactType::Provenance, &provenance)?);
        files.sort_by(|a, b| a.spec.path.cmp(&b.spec.path));

        // oci/: the mirror bundle and each Trivy DB.
        let mut images = vec![oci::Image {
            tag: "mirror",
            artifact_type: MIRROR_ARTIFACT_TYPE,
            config_media_type: oci::EMPTY_MEDIA_TYPE,
            layers: files
                .iter()
                .map(|f| oci::Layer { title: rel(f).to_owned(), media_type: f.spec.media_type.clone(), blob: f })
                .collect(),
        }];
        for (tag, config, layer, db) in &trivy {
            let title = rel(db).rsplit('/').next().unwrap_or_default().to_owned();
            images.push(oci::Image {
                tag,
                artifact_type: config,
                config_media_type: config,
                layers: vec![oci::Layer { title, media_type: (*layer).to_owned(), blob: db }],
            });
        }
        oci::write_layout(ctx, &images, anchor.created_at, options.oci_max_layers)?;
        ctx.progress(Progress { percent: 92, items_completed: records, items_total: 0 });

        // tuf/: targets are the files of mirror/, stored under their hash-prefixed names.
        let targets: Vec<tuf::Target> =
            files.iter().map(|f| tuf::Target { path: rel(f).to_owned(), length: f.size, sha256: f.sha256 }).collect();
        for (t, f) in targets.iter().zip(&files) {
            let spec = ArtifactSpec::new(
                &format!("tuf/targets/{}", t.hashed_path()),
                ArtifactType::Data,
                "raw",
                f.spec.media_type.clone(),
            )?;
            ctx.alias_artifact(spec, f)?;
        }
        let signer = ctx.signer();
        if signer.is_none() && Role::ALL.iter().any(|r| tuf_options.role(*r).signers.is_empty()) {
            ctx.warn(
                "WARN_MIRROR_TUF_UNSIGNED",
                "no signing key: the TUF metadata carries no signatures, and TUF clients will refuse it (sign the run)",
            );
        }
        // Expiry counts from the pinned time (byte-identical builds): a mirror pinned to old
        // evidence can be stale when made. Said, not changed.
        let first_expiry = Role::ALL.iter().map(|r| tuf_options.role(*r).expires_days).min().unwrap_or(0);
        let expires = anchor.created_at.plus_days(first_expiry);
        if expires < exportcore::Timestamp::now() {
            ctx.warn(
                "WARN_MIRROR_TUF_EXPIRED",
                format!(
                    "the TUF metadata expires at {expires}, already past: it counts from {} ({}); pin a later time (--created-at, SOURCE_DATE_EPOCH) for a mirror clients take now",
                    anchor.created_at,
                    match anchor.source {
                        exportcore::TimeSource::Evidence => "the newest evidence time",
                        exportcore::TimeSource::Request => "the request's createdAt",
                        exportcore::TimeSource::SourceDateEpoch => "SOURCE_DATE_EPOCH",
                        exportcore::TimeSource::Epoch => "the epoch: no time in the evidence",
                    }
                ),
            );
        }
        for (name, bytes) in tuf::build(&targets, anchor.created_at, tuf_options, ctx.signer(), previous)? {
            stage_bytes(ctx, &format!("tuf/metadata/{name}"), ArtifactType::Metadata, "application/json", &bytes)?;
        }
        ctx.progress(Progress { percent: 100, items_completed: records, items_total: records });
        Ok(())
    }
}

/// A `mirror/` artifact's path relative to `mirror/`.
fn rel(a: &StagedArtifact) -> &str {
    a.spec.path.as_str().strip_prefix("mirror/").unwrap_or(a.spec.path.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use exportcore::{conformance, DirEvidence, ProfileId};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conforms() {
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/evidence");
        conformance::profile_suite(
            Arc::new(MirrorFull::default()),
            Arc::new(DirEvidence::new(samples).unwrap()),
            RunRequest::new(ProfileId::from_static("mirror:full")),
        )
        .await;
    }
}
