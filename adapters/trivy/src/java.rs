//! The Java DB: SQLite with Trivy's schema (trivy-java-db `pkg/db/db.go`), rows inserted in
//! sorted order into a fresh file with a fixed page size, so the same entries give the same
//! bytes.

use crate::report::DbReport;
use exportcore::{EvidenceKind, ExportContext, ExportError, Records, Result};
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE artifacts(id INTEGER PRIMARY KEY, group_id TEXT, artifact_id TEXT);
CREATE TABLE indices(artifact_id INTEGER, version TEXT, sha1 BLOB, archive_type TEXT,
                     foreign key (artifact_id) references artifacts(id));
CREATE UNIQUE INDEX artifacts_idx ON artifacts(artifact_id, group_id);
CREATE INDEX indices_artifact_idx ON indices(artifact_id);
CREATE UNIQUE INDEX indices_sha1_idx ON indices(sha1);
";

/// (version, raw SHA-1, archive type) of one artifact.
type Version = (String, [u8; 20], String);

/// Builds `trivy-java.db` at `out` from every Maven index entry of the run's evidence; stops
/// with `Cancelled` as soon as the run is cancelled.
pub(crate) fn build(ctx: &ExportContext<'_>, out: &Path, report: &mut DbReport) -> Result<()> {
    let evidence = ctx.evidence();
    // (group, artifact) -> [(version, sha1, archive type)]; sha1 -> first owner wins.
    let mut artifacts: BTreeMap<(String, String), Vec<Version>> = BTreeMap::new();
    let mut by_sha1: BTreeMap<[u8; 20], (String, String, String)> = BTreeMap::new();
    for rec in Records::new(evidence, EvidenceKind::Java)? {
        ctx.check_cancelled()?;
        let rec = rec?;
        let v = &rec.value;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let mut sha1 = [0u8; 20];
        hex::decode_to_slice(s("sha1").to_ascii_lowercase(), &mut sha1)
            .map_err(|e| ExportError::evidence(rec.location.clone(), format!("sha1: {e}")))?;
        let (g, a, ver) = (s("groupId"), s("artifactId"), s("version"));
        let kind = v["archiveType"].as_str().unwrap_or("jar").to_owned();
        let owner = (g.clone(), a.clone(), ver.clone());
        match by_sha1.get(&sha1) {
            Some(prev) if *prev <= owner => {
                report.duplicate_sha1 += 1;
                continue;
            }
            Some(prev) => {
                // Keep the smallest GAV for a sha1 so input order does not matter.
                let prev = prev.clone();
                if let Some(list) = artifacts.get_mut(&(prev.0.clone(), prev.1.clone())) {
                    list.retain(|(pv, ps, _)| !(pv == &prev.2 && ps == &sha1));
                }
                report.duplicate_sha1 += 1;
            }
            None => {}
        }
        by_sha1.insert(sha1, owner);
        artifacts.entry((g, a)).or_default().push((ver, sha1, kind));
    }
    let db_err = |e: rusqlite::Error| ExportError::internal_caused("java-db sqlite", "writing trivy-java.db", e);
    let mut conn = Connection::open(out).map_err(db_err)?;
    conn.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(db_err)?;
    conn.execute_batch(SCHEMA).map_err(db_err)?;
    let tx = conn.transaction().map_err(db_err)?;
    {
        let mut ins_a =
            tx.prepare("INSERT INTO artifacts(id, group_id, artifact_id) VALUES (?1, ?2, ?3)").map_err(db_err)?;
        let mut ins_i = tx
            .prepare("INSERT INTO indices(artifact_id, version, sha1, archive_type) VALUES (?1, ?2, ?3, ?4)")
            .map_err(db_err)?;
        let mut id = 0i64;
        for ((g, a), mut versions) in artifacts {
            ctx.check_cancelled()?;
            if versions.is_empty() {
                continue;
            }
            id += 1;
            ins_a.execute(params![id, g, a]).map_err(db_err)?;
            versions.sort();
            for (ver, sha1, kind) in versions {
                ins_i.execute(params![id, ver, &sha1[..], kind]).map_err(db_err)?;
                report.maven_entries += 1;
            }
        }
    }
    tx.commit().map_err(db_err)?;
    conn.execute_batch("VACUUM;").map_err(db_err)?;
    drop(conn);
    Ok(())
}
