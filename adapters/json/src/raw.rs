use exportcore::bundle::{write_bundle, Spool, SpooledFile};
use exportcore::evidence::osv::Osv;
use exportcore::evidence::RecordBatch;
use exportcore::parallel;
use exportcore::{
    canonical, check_supported, Compression, EvidenceKind, ExportContext, ExportError, Format, ManifestBuilder,
    Profile, ProfileDescriptor, Progress, Records, Result, RunRequest, Target, Timestamp,
};
use serde_json::Value;
use std::io::Write;

/// The `json:raw` profile (see the crate docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonRaw;

pub(crate) const ALL_TARGETS: [Target; 3] = [Target::Advisory, Target::Vex, Target::Policy];

pub(crate) fn media_type(format: Format) -> &'static str {
    match format {
        Format::Json => "application/json",
        Format::Ndjson => "application/x-ndjson",
    }
}

fn ext(format: Format) -> &'static str {
    match format {
        Format::Json => "json",
        Format::Ndjson => "ndjson",
    }
}

/// Writes canonical records to one spool file, framed as a JSON array or as NDJSON.
#[derive(Debug)]
pub(crate) struct RecordWriter {
    spool: Spool,
    format: Format,
    count: u64,
}

impl RecordWriter {
    pub(crate) fn new(ctx: &mut ExportContext<'_>, stem: &str, format: Format) -> Result<Self> {
        let spool = ctx.spool(&format!("{stem}.{}", ext(format)), media_type(format))?;
        Ok(Self { spool, format, count: 0 })
    }

    fn io(&self, e: std::io::Error) -> ExportError {
        ExportError::internal_caused("json spool", self.spool.path().to_string(), e)
    }

    pub(crate) fn push(&mut self, value: &Value) -> Result<()> {
        let mut line = Vec::with_capacity(512);
        canonical::write_value(&mut line, value).map_err(|e| self.io(e))?;
        line.push(b'\n');
        self.push_lines(&line, 1)
    }

    /// Writes `count` canonical records given as `record\n` lines.
    pub(crate) fn push_lines(&mut self, lines: &[u8], count: u64) -> Result<()> {
        let r = match self.format {
            Format::Ndjson => {
                self.count += count;
                self.spool.write_all(lines)
            }
            Format::Json => (|| {
                for rec in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    self.spool.write_all(if self.count == 0 { b"[" } else { b"," })?;
                    self.spool.write_all(rec)?;
                    self.count += 1;
                }
                Ok(())
            })(),
        };
        r.map_err(|e| self.io(e))
    }

    pub(crate) fn finish(mut self) -> Result<SpooledFile> {
        if self.format == Format::Json {
            let tail: &[u8] = if self.count == 0 { b"[]" } else { b"]" };
            self.spool.write_all(tail).map_err(|e| self.io(e))?;
        }
        self.spool.finish(Some(self.count))
    }
}

/// Streams every requested target into one [`RecordWriter`] per format. Returns the spooled
/// files, the record count and the newest record timestamp.
pub(crate) fn export_raw(
    ctx: &mut ExportContext<'_>,
    targets: &[Target],
    formats: &[Format],
    progress_span: (u8, u8),
) -> Result<(Vec<SpooledFile>, u64, Option<Timestamp>)> {
    let evidence = ctx.evidence();
    let mut readers = Vec::new();
    for t in targets {
        readers.push((*t, Records::new(evidence, EvidenceKind::from(*t))?));
    }
    let total_bytes: u64 = readers.iter().map(|(_, r)| r.bytes_total()).sum();
    let mut done = 0u64;
    let mut records_done = 0u64;
    let mut newest: Option<Timestamp> = None;
    let mut files = Vec::new();
    for (target, mut records) in readers {
        let mut writers =
            formats.iter().map(|f| RecordWriter::new(ctx, &format!("raw/{target}"), *f)).collect::<Result<Vec<_>>>()?;
        let batches = std::iter::from_fn(|| records.next_batch(BATCH_BYTES).transpose());
        let ctx_ref = &*ctx;
        parallel::ordered_map(batches, parallel::default_workers(), canonicalise, |c: Canonical| {
            for w in &mut writers {
                w.push_lines(&c.lines, c.count)?;
            }
            newest = newest.max(c.newest);
            records_done += c.count;
            done += c.raw_bytes as u64;
            ctx_ref.check_cancelled()?;
            ctx_ref.progress(span_progress(progress_span, done, total_bytes, records_done));
            Ok(())
        })?;
        for w in writers {
            files.push(w.finish()?);
        }
    }
    ctx.progress(span_progress(progress_span, total_bytes, total_bytes, records_done));
    Ok((files, records_done, newest))
}

/// Raw bytes per batch handed to a worker.
const BATCH_BYTES: usize = 256 << 10;

/// A batch of records in canonical form, one per line.
struct Canonical {
    lines: Vec<u8>,
    count: u64,
    newest: Option<Timestamp>,
    raw_bytes: usize,
}

fn canonicalise(batch: RecordBatch) -> Result<Canonical> {
    let mut lines = Vec::with_capacity(batch.raw_bytes() + batch.len());
    let mut newest = None;
    for i in 0..batch.len() {
        // Fast path: an OSV record already in canonical form is checked through the typed
        // view and copied as it is (the bytes the slow path would write).
        let raw = batch.raw(i);
        if batch.kind() == EvidenceKind::Advisory && canonical::is_canonical(raw) {
            if let Some(modified) = Osv::from_json(raw).ok().and_then(|osv| osv.check().ok()) {
                newest = newest.max(Some(modified));
                lines.extend_from_slice(raw);
                lines.push(b'\n');
                continue;
            }
        }
        // Anything else (or any failure, for its exact error) goes through the `Value` tree.
        let rec = batch.parse(i)?;
        newest = newest.max(rec.timestamp);
        // Writing into a Vec cannot fail.
        let _ = canonical::write_value(&mut lines, &rec.value);
        lines.push(b'\n');
    }
    Ok(Canonical { lines, count: batch.len() as u64, newest, raw_bytes: batch.raw_bytes() })
}

/// Progress whose percent runs within `span` as `done` goes to `total` bytes.
pub(crate) fn span_progress(span: (u8, u8), done: u64, total: u64, items: u64) -> Progress {
    let frac = if total == 0 { 1.0 } else { done.min(total) as f64 / total as f64 };
    let percent = span.0 + ((span.1 - span.0) as f64 * frac) as u8;
    Progress { percent, items_completed: items, items_total: 0 }
}

/// Sorted, de-duplicated targets of the request (or all), so request order never changes bytes.
pub(crate) fn sorted<T: Ord + Copy>(items: Vec<T>) -> Vec<T> {
    let mut v = items;
    v.sort();
    v.dedup();
    v
}

pub(crate) fn base_manifest(
    profile: &str,
    anchor: exportcore::TimeAnchor,
    targets: &[Target],
    formats: &[Format],
    compression: Compression,
) -> ManifestBuilder {
    let mut m = ManifestBuilder::bundle(profile, anchor);
    m.metadata("targets", targets.iter().map(|t| t.as_str()).collect::<Vec<_>>());
    m.metadata("formats", formats.iter().map(|f| f.as_str()).collect::<Vec<_>>());
    m.metadata("compression", compression.as_str());
    m
}

impl Profile for JsonRaw {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new(
            "json:raw",
            "Evidence (OSV advisories, OpenVEX, policy findings) as canonical JSON/NDJSON in a deterministic bundle",
        )
        .targets(ALL_TARGETS.iter().copied())
        .formats([Format::Json, Format::Ndjson])
        .compressions(Compression::ALL.iter().copied())
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        check_supported(&self.descriptor(), request)
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        let targets = sorted(ctx.targets_or(&ALL_TARGETS));
        let formats = sorted(ctx.formats_or(&[Format::Ndjson]));
        let compression = ctx.compression_or(Compression::Zstd);
        let (files, records, newest) = export_raw(ctx, &targets, &formats, (0, 90))?;
        if records == 0 {
            ctx.no_records(targets.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "))?;
        }
        let anchor = ctx.time_anchor(newest);
        let manifest = base_manifest("json:raw", anchor, &targets, &formats, compression);
        let name = format!("json-raw{}", exportcore::archive::archive_suffix(compression));
        write_bundle(ctx, &name, compression, manifest, files)?;
        ctx.progress(Progress { percent: 100, items_completed: records, items_total: records });
        Ok(())
    }
}
