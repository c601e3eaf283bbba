use crate::db::Collector;
use crate::mapping::{self, Skipped, Target};
use crate::package::{self, DB_LAYER_MEDIA_TYPE, JAVADB_LAYER_MEDIA_TYPE};
use crate::report::DbReport;
use exportcore::archive::{FileMode, StreamedTarGz};
use exportcore::evidence::osv::{Osv, Text};
use exportcore::{
    ArtifactPath, ArtifactSpec, ArtifactType, EvidenceKind, ExportContext, ExportError, Profile, ProfileDescriptor,
    Progress, Records, Result, RunRequest, Timestamp,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The `trivy:db` profile: a Trivy vulnerability DB (schema 2) from OSV advisories.
///
/// Artifacts: `db/trivy.db`, `db/metadata.json` (ready to drop into `<cache-dir>/db/`),
/// `db.tar.gz` (what Trivy downloads), `oci/` (an OCI image layout of the artifact Trivy
/// pulls, tag `2`), and `trivy-export.json` (counts, including what was skipped and why).
#[derive(Clone, Copy, Debug, Default)]
pub struct TrivyDb;

/// The `trivy:java-db` profile: Trivy's Java DB (schema 1, SQLite) from Maven index entries.
///
/// Artifacts: `java-db/trivy-java.db`, `java-db/metadata.json`, `javadb.tar.gz`, `oci/`
/// (tag `1`), `trivy-export.json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrivyJavaDb;

/// Trivy reads gzip only (`db.tar.gz`, `javadb.tar.gz`).
fn descriptor(id: &'static str, description: &str) -> ProfileDescriptor {
    ProfileDescriptor::new(id, description).compressions([exportcore::Compression::Gzip])
}

fn no_targets(d: &ProfileDescriptor, request: &RunRequest) -> Result<()> {
    if !request.formats.is_empty() {
        return Err(ExportError::invalid("formats", format!("{} writes its own format", d.id)));
    }
    if request.targets.iter().any(|t| !matches!(t, exportcore::Target::Advisory | exportcore::Target::Vex)) {
        return Err(ExportError::invalid(
            "targets",
            format!("{} exports advisories (optionally filtered by vex)", d.id),
        ));
    }
    Ok(())
}

fn stage_bytes(
    ctx: &mut ExportContext<'_>,
    path: &str,
    media: &str,
    kind: ArtifactType,
    bytes: &[u8],
) -> Result<std::path::PathBuf> {
    let spec = ArtifactSpec::new(path, kind, "json", media)?;
    let (staged, ()) = ctx.write_artifact(spec, |w| w.write_all(bytes).map_err(|e| ExportError::io(path, e)))?;
    Ok(staged.local)
}

fn report_artifact(ctx: &mut ExportContext<'_>, report: &DbReport) -> Result<()> {
    let bytes = exportcore::canonical::to_vec(report)
        .map_err(|e| ExportError::internal_caused("trivy", "serialising trivy-export.json", e))?;
    stage_bytes(ctx, "trivy-export.json", "application/json", ArtifactType::Metadata, &bytes)?;
    Ok(())
}

/// One advisory mapped to its DB entries.
struct MappedAdvisory {
    id: String,
    modified: Timestamp,
    /// (root bucket, package key, advisory JSON, ecosystem)
    entries: Vec<(String, String, Vec<u8>, String)>,
    vulnerability: Option<Vec<u8>>,
}

/// A batch of advisories mapped on a worker thread.
struct MappedBatch {
    read: u64,
    raw_bytes: u64,
    newest: Option<Timestamp>,
    skipped: Skipped,
    advisories: Vec<MappedAdvisory>,
}

fn map_batch(
    batch: &exportcore::evidence::RecordBatch,
    vex: &crate::vex::VexIndex,
    strict: bool,
) -> Result<MappedBatch> {
    let mut out = MappedBatch {
        read: 0,
        raw_bytes: batch.raw_bytes() as u64,
        newest: None,
        skipped: Skipped::default(),
        advisories: Vec::new(),
    };
    for i in 0..batch.len() {
        // The typed view straight from the bytes; a record it cannot take (malformed JSON,
        // invalid UTF-8 — which serde_json does not check in the fields it skips —, a field
        // given twice) goes through the core's `Value` parser, which reports the error or keeps
        // the last of duplicate fields, as every other profile sees it.
        let fallback: Value;
        let raw = batch.raw(i);
        // Bytes already in canonical form are I-JSON and UTF-8 (`is_canonical` checks both,
        // in one pass that costs a quarter of the I-JSON check): evidence written by tools
        // that canonicalise (ours do) skips the separate checks.
        let canonical = exportcore::canonical::is_canonical(raw);
        if !canonical {
            batch.check_ijson(i)?;
        }
        let direct = (canonical || std::str::from_utf8(raw).is_ok()).then(|| Osv::from_json(raw).ok()).flatten();
        let osv = match direct {
            Some(osv) => osv,
            None => {
                fallback = batch.parse(i)?.value;
                Osv::deserialize(&fallback).map_err(|e| ExportError::evidence(batch.location(i), e.to_string()))?
            }
        };
        let modified = osv.check().map_err(|reason| ExportError::evidence(batch.location(i), reason))?;
        if let Some(j) = osv.affected.items().iter().position(|a| {
            a.get()
                .and_then(|a| a.package.get())
                .is_some_and(|p| [&p.ecosystem, &p.name].iter().any(|t| t.as_str().is_some_and(|s| s.contains('\0'))))
        }) {
            return Err(ExportError::evidence(
                batch.location(i),
                format!("affected[{j}].package: a NUL character cannot be part of a Trivy bucket or package name"),
            ));
        }
        out.read += 1;
        out.newest = out.newest.max(Some(modified));
        let before = out.skipped.unknown_ecosystem;
        let mapped = map_advisory(&osv, modified, vex, &mut out.skipped);
        if strict && out.skipped.unknown_ecosystem > before {
            return Err(ExportError::evidence(
                batch.location(i),
                "an affected ecosystem has no Trivy bucket (the request is strict; without strict it is skipped and counted)",
            ));
        }
        if let Some(m) = mapped {
            out.advisories.push(m);
        }
    }
    Ok(out)
}

fn map_advisory(
    osv: &Osv<'_>,
    modified: Timestamp,
    vex: &crate::vex::VexIndex,
    skipped: &mut Skipped,
) -> Option<MappedAdvisory> {
    if !matches!(osv.withdrawn, Text::Missing | Text::Null) {
        skipped.withdrawn += 1;
        return None;
    }
    let id = mapping::vuln_id(osv);
    let mut entries = Vec::new();
    for affected in osv.affected.items().iter().filter_map(|a| a.get()) {
        let Some((eco, name)) = affected.package.get().and_then(|p| Some((p.ecosystem.as_str()?, p.name.as_str()?)))
        else {
            skipped.no_package += 1;
            continue;
        };
        let Some(target) = mapping::target(eco) else {
            skipped.unknown_ecosystem += 1;
            continue;
        };
        let Some(mut adv) = mapping::advisory(&target, affected, skipped) else { continue };
        if !vex.is_empty() {
            let mut ids: Vec<&str> = vec![osv.id.as_str().unwrap_or_default()];
            ids.extend(osv.aliases.items().iter().filter_map(Text::as_str));
            let family = eco.split(':').next().unwrap_or(eco);
            let cleared = vex.lookup(&ids, family, name);
            if !cleared.is_empty() {
                if matches!(target, Target::Os(_)) {
                    skipped.vex_os_ignored += cleared.len() as u64;
                } else if cleared.contains(&None) {
                    skipped.vex_dropped += 1;
                    continue;
                } else {
                    for v in cleared.into_iter().flatten() {
                        adv.unaffected_versions.push(mapping::exact(&target, &v));
                        skipped.vex_unaffected_versions += 1;
                    }
                }
            }
        }
        let root = match &target {
            Target::Os(b) | Target::Lang { bucket: b, .. } => b.clone(),
        };
        let mut value = Vec::with_capacity(128);
        serde_json::to_writer(&mut value, &adv).unwrap_or_default();
        entries.push((root, mapping::package_key(&target, name), value, eco.to_owned()));
    }
    if entries.is_empty() {
        return None;
    }
    // Sized up front: descriptions make these values hundreds of bytes long.
    let mut vulnerability = Vec::with_capacity(1024);
    serde_json::to_writer(&mut vulnerability, &mapping::vulnerability(osv)).unwrap_or_default();
    let vulnerability = Some(vulnerability);
    Some(MappedAdvisory { id, modified, entries, vulnerability })
}

impl Profile for TrivyDb {
    fn descriptor(&self) -> ProfileDescriptor {
        descriptor(
            "trivy:db",
            "Trivy vulnerability DB (schema 2, BoltDB) from OSV advisories, as db.tar.gz and an OCI layout",
        )
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        no_targets(&self.descriptor(), request)
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        let (runs_prefix, file) = ctx.scratch_file()?;
        drop(file);
        let mut collector = Collector::new(runs_prefix);
        let mut report = DbReport { schema_version: 2, ..Default::default() };
        let mut newest: Option<Timestamp> = None;
        let mut records = Records::new(ctx.evidence(), EvidenceKind::Advisory)?;
        let total_bytes = records.bytes_total().max(1);
        let mut buckets = std::collections::BTreeSet::new();
        let vex = if ctx.request().targets.contains(&exportcore::Target::Vex) {
            crate::vex::VexIndex::load(ctx.evidence())?
        } else {
            crate::vex::VexIndex::default()
        };
        // Parse and map advisories on all cores in ordered batches; collect in order.
        let batches = std::iter::from_fn(|| records.next_batch(256 << 10).transpose());
        let ctx_ref = &*ctx;
        let vex_ref = &vex;
        let strict = ctx.request().strict;
        let mut done_bytes = 0u64;
        exportcore::parallel::ordered_map(
            batches,
            exportcore::parallel::default_workers(),
            |batch| map_batch(&batch, vex_ref, strict),
            |mapped: MappedBatch| {
                report.advisories_read += mapped.read;
                report.skipped.add(&mapped.skipped);
                newest = newest.max(mapped.newest);
                for m in mapped.advisories {
                    for (root, pkg, value, eco) in m.entries {
                        collector.nested(&root, &pkg, &m.id, value, m.modified)?;
                        collector.data_source(&root, || {
                            serde_json::to_vec(&json!({"ID": "osv", "Name": format!("OSV {eco}")})).unwrap_or_default()
                        })?;
                        buckets.insert(root);
                    }
                    if let Some(v) = m.vulnerability {
                        collector.vulnerability(&m.id, v, m.modified)?;
                    }
                }
                done_bytes += mapped.raw_bytes;
                ctx_ref.check_cancelled()?;
                let pct = (done_bytes * 70 / total_bytes) as u8;
                ctx_ref.progress(Progress { percent: pct, items_completed: report.advisories_read, items_total: 0 });
                Ok(())
            },
        )?;
        if collector.is_empty() {
            ctx.no_records("OSV advisories Trivy can use")?;
        }
        report.buckets = buckets.into_iter().collect();
        let sk = report.skipped;
        for (n, code, what) in [
            (
                sk.unknown_ecosystem,
                "WARN_TRIVY_UNKNOWN_ECOSYSTEM",
                "affected entries whose ecosystem Trivy has no bucket for",
            ),
            (sk.no_package, "WARN_TRIVY_NO_PACKAGE", "affected entries without a package"),
            (sk.git_ranges, "WARN_TRIVY_GIT_RANGE", "GIT ranges (commit hashes mean nothing to Trivy)"),
            (sk.no_versions, "WARN_TRIVY_NO_VERSIONS", "affected entries with no usable ranges or versions"),
            (sk.withdrawn, "WARN_TRIVY_WITHDRAWN", "withdrawn advisories"),
            (sk.vex_os_ignored, "WARN_TRIVY_VEX_OS_IGNORED", "VEX statements on OS packages (not applicable)"),
        ] {
            if n > 0 {
                ctx.warn(code, format!("skipped {n} {what}; counts in the Trivy report (trivy-export.json; db.report.json in a mirror)"));
            }
        }
        let anchor = ctx.time_anchor(newest);
        let (db_path, file) = ctx.scratch_file()?;
        drop(file);
        std::fs::remove_file(&db_path).map_err(|e| ExportError::io(&db_path, e))?;
        let read = report.advisories_read;
        let meta = package::metadata(2, anchor.created_at, 24);
        // db.tar.gz is deflated while the DB is written: its blocks stream through the tee,
        // only its first 1 MiB (tar headers, the DB's meta pages) waits for the end.
        let (spill_path, spill) = ctx.scratch_file()?;
        let options = package::gzip_options(ctx, anchor.mtime())?;
        let mut tgz = StreamedTarGz::new(
            spill,
            &options,
            &[(ArtifactPath::parse("metadata.json")?, FileMode::Regular, &meta)],
            ArtifactPath::parse("trivy.db")?,
            FileMode::Regular,
        )?;
        let written = collector.write_bolt(&db_path, Some(&mut tgz), |done, total| {
            let pct = 70 + (done * 22 / total.max(1)) as u8;
            ctx.progress(Progress { percent: pct, items_completed: read, items_total: read });
        })?;
        report.advisory_entries = written.advisory_entries;
        report.vulnerabilities = written.vulnerabilities;
        // The DB is hashed on another thread while the archive is completed.
        let hashing = {
            let path = db_path.clone();
            std::thread::spawn(move || std::fs::File::open(&path).and_then(exportcore::hashing::hash_reader))
        };
        let mut meta_pages = vec![0u8; 2 * 4096];
        std::fs::File::open(&db_path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut meta_pages))
            .map_err(|e| ExportError::io(&db_path, e))?;
        let spec = ArtifactSpec::new("db.tar.gz", ArtifactType::Database, "tar+gzip", "application/gzip")?;
        let finished = ctx.write_artifact(spec, |w| tgz.finish(&meta_pages, w));
        let digest = hashing
            .join()
            .map_err(|_| ExportError::internal("trivy", "hashing trivy.db panicked"))?
            .map_err(|e| ExportError::io(&db_path, e))?;
        let (tgz, ()) = finished?;
        let _ = std::fs::remove_file(&spill_path);
        stage_bytes(ctx, "db/metadata.json", "application/json", ArtifactType::Metadata, &meta)?;
        let spec = ArtifactSpec::new("db/trivy.db", ArtifactType::Database, "db", "application/vnd.aquasec.trivy.db")?;
        ctx.adopt_file_with_digest(spec, &db_path, digest.0, digest.1)?;
        package::oci_layout(ctx, "oci", &tgz, DB_LAYER_MEDIA_TYPE, "db.tar.gz", "2", anchor.created_at)?;
        report_artifact(ctx, &report)?;
        ctx.progress(Progress { percent: 100, items_completed: read, items_total: read });
        Ok(())
    }
}

impl Profile for TrivyJavaDb {
    fn descriptor(&self) -> ProfileDescriptor {
        descriptor(
            "trivy:java-db",
            "Trivy Java DB (schema 1, SQLite) from Maven index entries, as javadb.tar.gz and an OCI layout",
        )
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        no_targets(&self.descriptor(), request)
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        let (db_path, file) = ctx.scratch_file()?;
        drop(file);
        std::fs::remove_file(&db_path).map_err(|e| ExportError::io(&db_path, e))?;
        let mut report = DbReport { schema_version: 1, ..Default::default() };
        crate::java::build(ctx, &db_path, &mut report)?;
        if report.maven_entries == 0 {
            ctx.no_records("Maven index entries (java/*.ndjson)")?;
        }
        let anchor = ctx.time_anchor(None);
        let meta = package::metadata(1, anchor.created_at, 24 * 3);
        let meta_local = stage_bytes(ctx, "java-db/metadata.json", "application/json", ArtifactType::Metadata, &meta)?;
        let (tgz, digests) = package::tarball(
            ctx,
            "javadb.tar.gz",
            &[("trivy-java.db", &db_path), ("metadata.json", &meta_local)],
            anchor.mtime(),
        )?;
        let spec =
            ArtifactSpec::new("java-db/trivy-java.db", ArtifactType::Database, "sqlite3", "application/vnd.sqlite3")?;
        ctx.adopt_file_with_digest(spec, &db_path, digests[0].0, digests[0].1)?;
        package::oci_layout(ctx, "oci", &tgz, JAVADB_LAYER_MEDIA_TYPE, "javadb.tar.gz", "1", anchor.created_at)?;
        report_artifact(ctx, &report)?;
        Ok(())
    }
}
