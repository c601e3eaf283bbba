//! The `mirror/` tree: records as zstd-compressed JSON Lines, sharded by ecosystem, with an
//! index per kind.

use exportcore::evidence::RecordBatch;
use exportcore::hashing::HashingWriter;
use exportcore::{
    canonical, parallel, ArtifactSpec, ArtifactType, EvidenceKind, ExportContext, ExportError, Progress, Records,
    Result, Sha256Digest, StagedArtifact, Timestamp,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// zstd level of the data files: fast, and the same bytes on every machine.
const ZSTD_LEVEL: i32 = 3;

/// Raw bytes per batch handed to a worker.
const BATCH_BYTES: usize = 256 << 10;

/// Version of the index files.
pub(crate) const INDEX_VERSION: &str = "exportcore-mirror-index/v1";

/// One kind of records in the tree.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kind {
    pub evidence: EvidenceKind,
    /// Directory of its data files, under `mirror/`.
    pub dir: &'static str,
    /// Its index file, under `mirror/indexes/`.
    pub index: &'static str,
    /// Name in counts (`advisory`, ...).
    pub name: &'static str,
}

pub(crate) const KINDS: [Kind; 3] = [
    Kind {
        evidence: EvidenceKind::Advisory,
        dir: "data/raw/advisories",
        index: "advisories.index.json",
        name: "advisory",
    },
    Kind { evidence: EvidenceKind::Vex, dir: "data/raw/vex", index: "vex.index.json", name: "vex" },
    Kind { evidence: EvidenceKind::Policy, dir: "data/policy", index: "findings.index.json", name: "policy" },
];

/// A record, canonical, with what the index needs.
struct Row {
    shard: String,
    line: Vec<u8>,
    id: String,
    modified: Option<Timestamp>,
}

/// The shard of an advisory: its first package's ecosystem family, as a file name
/// (`pypi`, `alpine`, `crates-io`); VEX documents and findings have one shard each.
fn shard(kind: EvidenceKind, v: &Value) -> String {
    match kind {
        EvidenceKind::Advisory => {
            shard_name(v["affected"].as_array().into_iter().flatten().find_map(|a| a["package"]["ecosystem"].as_str()))
        }
        EvidenceKind::Vex => "openvex".into(),
        _ => "findings".into(),
    }
}

fn id_of(kind: EvidenceKind, v: &Value) -> String {
    let key = match kind {
        EvidenceKind::Advisory => "id",
        EvidenceKind::Vex => "@id",
        _ => "findingId",
    };
    v[key].as_str().unwrap_or_default().to_owned()
}

/// The shard name of an ecosystem (`Alpine:v3.19` → `alpine`, `crates.io` → `crates-io`).
fn shard_name(ecosystem: Option<&str>) -> String {
    let family = ecosystem.unwrap_or("none").split(':').next().unwrap_or("none").to_ascii_lowercase();
    let name: String = family.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    if name.trim_matches('-').is_empty() {
        "none".into()
    } else {
        name
    }
}

fn rows(batch: RecordBatch) -> Result<Vec<Row>> {
    let kind = batch.kind();
    let mut out = Vec::with_capacity(batch.len());
    for i in 0..batch.len() {
        // Fast path (as json:raw's): an OSV record already in canonical form is checked
        // through the typed view and copied as it is, the bytes the slow path would write.
        let raw = batch.raw(i);
        if kind == EvidenceKind::Advisory && canonical::is_canonical(raw) {
            if let Ok(osv) = exportcore::evidence::osv::Osv::from_json(raw) {
                if let Ok(modified) = osv.check() {
                    let eco = osv
                        .affected
                        .items()
                        .iter()
                        .filter_map(|a| a.get())
                        .find_map(|a| a.package.get().and_then(|p| p.ecosystem.as_str().map(str::to_owned)));
                    let mut line = Vec::with_capacity(raw.len() + 1);
                    line.extend_from_slice(raw);
                    line.push(b'\n');
                    out.push(Row {
                        shard: shard_name(eco.as_deref()),
                        id: osv.id.as_str().unwrap_or_default().to_owned(),
                        modified: Some(modified),
                        line,
                    });
                    continue;
                }
            }
        }
        let rec = batch.parse(i)?;
        let mut line = canonical::to_vec(&rec.value)
            .map_err(|e| ExportError::internal_caused("mirror", "serialising a record", e))?;
        line.push(b'\n');
        out.push(Row { shard: shard(kind, &rec.value), id: id_of(kind, &rec.value), modified: rec.timestamp, line });
    }
    Ok(out)
}

/// One data file being written: zstd over a hashing writer over a scratch file.
struct ShardWriter {
    path: PathBuf,
    encoder: zstd::Encoder<'static, HashingWriter<BufWriter<File>>>,
    records: u64,
}

/// What [`write_kind`] produced for one kind.
#[derive(Debug, Default)]
pub(crate) struct KindOutput {
    /// Records written.
    pub records: u64,
    /// The newest record time.
    pub newest: Option<Timestamp>,
    /// Data files and the index, staged.
    pub files: Vec<StagedArtifact>,
}

/// Reads every record of `kind`, writes `mirror/<dir>/<shard>.jsonl.zst` files and
/// `mirror/indexes/<index>`. Returns nothing staged when the kind has no records.
pub(crate) fn write_kind(
    ctx: &mut ExportContext<'_>,
    kind: Kind,
    progress: (u8, u8),
    sealer: Option<&crate::encryption::Sealer>,
) -> Result<KindOutput> {
    let evidence = ctx.evidence();
    let mut records = Records::new(evidence, kind.evidence)?;
    let total = records.bytes_total().max(1);
    let mut shards: BTreeMap<String, ShardWriter> = BTreeMap::new();
    // Index entries go to a scratch file as they come: memory does not grow with the input.
    let (index_path, index_file) = ctx.scratch_file()?;
    let mut index = BufWriter::new(index_file);
    let mut out = KindOutput::default();
    let mut first = true;
    let batches = std::iter::from_fn(|| records.next_batch(BATCH_BYTES).transpose());
    let mut done = 0u64;
    parallel::ordered_map(batches, parallel::default_workers(), rows, |rows: Vec<Row>| {
        for row in rows {
            if !shards.contains_key(&row.shard) {
                let (path, file) = ctx.scratch_file()?;
                let sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
                let encoder = zstd::Encoder::new(sink, ZSTD_LEVEL).map_err(|e| ExportError::io(&path, e))?;
                shards.insert(row.shard.clone(), ShardWriter { path, encoder, records: 0 });
            }
            let w = shards.get_mut(&row.shard).ok_or_else(|| ExportError::internal("mirror", "shard vanished"))?;
            w.encoder.write_all(&row.line).map_err(|e| ExportError::io(&w.path, e))?;
            w.records += 1;
            let entry = serde_json::json!({
                "file": format!("{}/{}.jsonl.zst", kind.dir, row.shard),
                "id": row.id,
                "line": w.records,
                "modified": row.modified.map(|t| t.to_string()),
                "sha256": Sha256Digest::of(&row.line[..row.line.len() - 1]).to_hex(),
            });
            let bytes = canonical::to_vec(&entry)
                .map_err(|e| ExportError::internal_caused("mirror", "serialising an index entry", e))?;
            if !first {
                index.write_all(b",").map_err(|e| ExportError::io(&index_path, e))?;
            }
            first = false;
            index.write_all(&bytes).map_err(|e| ExportError::io(&index_path, e))?;
            out.records += 1;
            out.newest = out.newest.max(row.modified);
            done += row.line.len() as u64;
        }
        ctx.check_cancelled()?;
        let (a, b) = progress;
        let pct = a + ((done.min(total) * u64::from(b - a)) / total) as u8;
        ctx.progress(Progress { percent: pct, items_completed: out.records, items_total: 0 });
        Ok(())
    })?;
    index.flush().map_err(|e| ExportError::io(&index_path, e))?;
    drop(index);
    if out.records == 0 {
        return Ok(out);
    }
    for (name, w) in shards {
        let hashing = w.encoder.finish().map_err(|e| ExportError::io(&w.path, e))?;
        let (mut buf, size, sha256) = hashing.finish();
        buf.flush().map_err(|e| ExportError::io(&w.path, e))?;
        drop(buf);
        let rel = format!("{}/{name}.jsonl.zst", kind.dir);
        let path = format!("mirror/{rel}");
        match sealer {
            None => {
                let spec = ArtifactSpec::new(&path, ArtifactType::Data, "jsonl+zstd", "application/zstd")?;
                out.files.push(ctx.adopt_file_with_digest(spec, &w.path, size, sha256)?);
            }
            Some(sealer) => {
                // One AES-256-GCM message per file: the shard is read whole (compressed).
                let plain = std::fs::read(&w.path).map_err(|e| ExportError::io(&w.path, e))?;
                let sealed = sealer.seal(&rel, &plain)?;
                let spec =
                    ArtifactSpec::new(&path, ArtifactType::Data, "jsonl+zstd+aes-256-gcm", "application/octet-stream")?;
                let (staged, ()) =
                    ctx.write_artifact(spec, |wr| wr.write_all(&sealed).map_err(|e| ExportError::io(&path, e)))?;
                out.files.push(staged);
            }
        }
    }
    // The index document: `{"entries":[...],"kind":...,"version":...}` (canonical: keys sorted).
    let spec = ArtifactSpec::new(
        &format!("mirror/indexes/{}", kind.index),
        ArtifactType::Metadata,
        "json",
        "application/json",
    )?;
    let (staged, ()) = ctx.write_artifact(spec, |w| {
        let io = |e: std::io::Error| ExportError::io(&index_path, e);
        w.write_all(b"{\"entries\":[").map_err(io)?;
        let mut f = File::open(&index_path).map_err(io)?;
        std::io::copy(&mut f, w).map_err(io)?;
        write!(w, "],\"kind\":\"{}\",\"version\":\"{INDEX_VERSION}\"}}", kind.name).map_err(io)?;
        Ok(())
    })?;
    out.files.push(staged);
    Ok(out)
}
