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

/// The encoder of a data file: [`crate::patch`] rebuilds shards with it, byte for byte.
pub(crate) fn shard_encoder<W: Write>(w: W) -> std::io::Result<zstd::Encoder<'static, W>> {
    zstd::Encoder::new(w, ZSTD_LEVEL)
}

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

/// The percentage `done` of `total` (> 0) reaches within the span `(from, to)` of a run.
fn in_span((from, to): (u8, u8), done: u64, total: u64) -> u8 {
    from + ((done.min(total) * u64::from(to - from)) / total) as u8
}

/// One data file being written: zstd over a hashing writer over a scratch file.
struct ShardWriter {
    path: PathBuf,
    encoder: zstd::Encoder<'static, HashingWriter<BufWriter<File>>>,
    records: u64,
    /// Bytes before compression.
    plain: u64,
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
    /// The unsealed shards: name, staged file, bytes before compression.
    pub shards: Vec<(String, PathBuf, u64)>,
}

/// The most shards (ecosystem families) one kind of records may fill.
pub const MAX_SHARDS: usize = 256;

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
                // Each shard holds an open file and a compressor until the end: a bound keeps
                // evidence with a made-up ecosystem per record from exhausting memory.
                if shards.len() == MAX_SHARDS {
                    return Err(ExportError::EvidenceInvalid {
                        location: exportcore::Location::file(format!("{} {}", kind.evidence.as_str(), row.id)),
                        reason: format!(
                            "ecosystem family {:?} would be shard {} of {}/: a mirror holds at most {MAX_SHARDS} \
                             (OSV knows about 40 ecosystems)",
                            row.shard,
                            MAX_SHARDS + 1,
                            kind.dir
                        ),
                    });
                }
                let (path, file) = ctx.scratch_file()?;
                let sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
                let encoder = shard_encoder(sink).map_err(|e| ExportError::io(&path, e))?;
                shards.insert(row.shard.clone(), ShardWriter { path, encoder, records: 0, plain: 0 });
            }
            let w = shards.get_mut(&row.shard).ok_or_else(|| ExportError::internal("mirror", "shard vanished"))?;
            w.encoder.write_all(&row.line).map_err(|e| ExportError::io(&w.path, e))?;
            w.records += 1;
            w.plain += row.line.len() as u64;
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
        ctx.progress(Progress {
            percent: in_span(progress, done, total),
            items_completed: out.records,
            items_total: 0,
        });
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
                let staged = ctx.adopt_file_with_digest(spec, &w.path, size, sha256)?;
                out.shards.push((name.clone(), staged.local.clone(), w.plain));
                out.files.push(staged);
            }
            Some(sealer) => {
                // One AES-256-GCM message per file, streamed from the compressed shard.
                let nonce = sealer.nonce()?;
                let spec =
                    ArtifactSpec::new(&path, ArtifactType::Data, "jsonl+zstd+aes-256-gcm", "application/octet-stream")?;
                let (staged, _) = ctx.write_artifact(spec, |wr| {
                    let mut plain = File::open(&w.path).map_err(|e| ExportError::io(&w.path, e))?;
                    sealer.seal_stream(&rel, &nonce, &mut plain, wr)
                })?;
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

/// Where blobs go, under `mirror/`.
pub(crate) const BLOB_DIR: &str = "data/blobs";
/// The blob index, under `mirror/indexes/`.
pub(crate) const BLOB_INDEX: &str = "blobs.index.json";

/// The media type of a blob, from its name (`application/octet-stream` when unknown).
fn blob_media_type(name: &str) -> &'static str {
    const TYPES: [(&str, &str); 9] = [
        (".tar.gz", "application/gzip"),
        (".tgz", "application/gzip"),
        (".gz", "application/gzip"),
        (".tar.zst", "application/zstd"),
        (".zst", "application/zstd"),
        (".tar", "application/x-tar"),
        (".zip", "application/zip"),
        (".json", "application/json"),
        (".db", "application/vnd.sqlite3"),
    ];
    TYPES.iter().find(|(ext, _)| name.ends_with(ext)).map_or("application/octet-stream", |(_, t)| t)
}

/// One blob to copy: its evidence item, a scratch file, and a nonce when sealed.
struct BlobJob {
    item: exportcore::EvidenceItem,
    rel: String,
    scratch: (PathBuf, File),
    nonce: Option<[u8; 12]>,
}

/// A copied blob: the scratch file holding it and both digests.
struct CopiedBlob {
    rel: String,
    scratch: PathBuf,
    plain: (u64, Sha256Digest),
    stored: (u64, Sha256Digest),
}

/// Reads a blob once: hashes it and writes it (sealed or not) into its scratch file.
fn copy_blob(
    evidence: &dyn exportcore::EvidenceSource,
    sealer: Option<&crate::encryption::Sealer>,
    job: BlobJob,
) -> Result<CopiedBlob> {
    let BlobJob { item, rel, scratch: (path, file), nonce } = job;
    let src = evidence.open(&item.path)?;
    let mut reader = exportcore::hashing::HashingReader::new(std::io::BufReader::with_capacity(1 << 20, src));
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    match (sealer, nonce) {
        (Some(sealer), Some(nonce)) => {
            sealer.seal_stream(&rel, &nonce, &mut reader, &mut out)?;
        }
        _ => {
            std::io::copy(&mut reader, &mut out).map_err(|e| ExportError::io(item.path.as_str(), e))?;
        }
    }
    let (buf, size, sha256) = out.finish();
    buf.into_inner().map_err(|e| ExportError::io(&path, e.into_error()))?;
    Ok(CopiedBlob { rel, scratch: path, plain: reader.finish(), stored: (size, sha256) })
}

/// Copies every `blobs/` file of the evidence, byte for byte (sealed when encrypting), to
/// `mirror/data/blobs/`, reading each once and hashing it on the way, on all workers; writes
/// `mirror/indexes/blobs.index.json` (name, media type, size and SHA-256 of each blob's own
/// bytes). Returns nothing staged when there is no blob.
pub(crate) fn write_blobs(
    ctx: &mut ExportContext<'_>,
    progress: (u8, u8),
    sealer: Option<&crate::encryption::Sealer>,
) -> Result<KindOutput> {
    let evidence = ctx.evidence();
    let items = evidence.list(EvidenceKind::Blob)?;
    let mut out = KindOutput::default();
    if items.is_empty() {
        return Ok(out);
    }
    let total = items.iter().map(|i| i.size).sum::<u64>().max(1);
    let workers = parallel::default_workers();
    let mut done = 0u64;
    let mut entries = Vec::with_capacity(items.len());
    // Scratch files and nonces are taken on this thread in the blobs' order (repeatable with
    // seeded entropy), a few jobs per worker at a time (bounded open files).
    for chunk in items.chunks(4 * workers.max(1)) {
        let mut jobs = Vec::with_capacity(chunk.len());
        for item in chunk {
            let rel = format!("{BLOB_DIR}/{}", item.path.as_str().strip_prefix("blobs/").unwrap_or(item.path.as_str()));
            let nonce = sealer.map(crate::encryption::Sealer::nonce).transpose()?;
            jobs.push(BlobJob { item: item.clone(), rel, scratch: ctx.scratch_file()?, nonce });
        }
        let mut copied = Vec::with_capacity(jobs.len());
        parallel::ordered_map(
            jobs.into_iter().map(Ok),
            workers,
            |job| copy_blob(evidence, sealer, job),
            |c| {
                copied.push(c);
                Ok(())
            },
        )?;
        for c in copied {
            let media_type = blob_media_type(&c.rel);
            let spec = match sealer {
                None => ArtifactSpec::new(&format!("mirror/{}", c.rel), ArtifactType::Data, "raw", media_type)?,
                Some(_) => ArtifactSpec::new(
                    &format!("mirror/{}", c.rel),
                    ArtifactType::Data,
                    "raw+aes-256-gcm",
                    "application/octet-stream",
                )?,
            };
            out.files.push(ctx.adopt_file_with_digest(spec, &c.scratch, c.stored.0, c.stored.1)?);
            entries.push(serde_json::json!({
                "file": c.rel,
                "mediaType": media_type,
                "sha256": c.plain.1.to_hex(),
                "size": c.plain.0,
            }));
            out.records += 1;
            done += c.plain.0;
        }
        ctx.check_cancelled()?;
        let percent = in_span(progress, done, total);
        ctx.progress(Progress { percent, items_completed: out.records, items_total: items.len() as u64 });
    }
    let index = serde_json::json!({"entries": entries, "kind": "blob", "version": INDEX_VERSION});
    let bytes = canonical::to_vec(&index)
        .map_err(|e| ExportError::internal_caused("mirror", "serialising the blob index", e))?;
    let spec =
        ArtifactSpec::new(&format!("mirror/indexes/{BLOB_INDEX}"), ArtifactType::Metadata, "json", "application/json")?;
    let (staged, ()) = ctx.write_artifact(spec, |w| w.write_all(&bytes).map_err(|e| ExportError::io(BLOB_INDEX, e)))?;
    out.files.push(staged);
    Ok(out)
}
