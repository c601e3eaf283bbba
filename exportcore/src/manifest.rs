//! The deterministic manifest builder. A manifest lists entries (path, size, sha256, media
//! type, and optionally type, format and record count) sorted by path, with totals, the
//! profile and a time anchor, and serialises to RFC 8785 canonical JSON: the same inputs
//! always give the same bytes.
//!
//! ```
//! use exportcore::manifest::{ManifestBuilder, ManifestEntry, TimeAnchor, TimeSource};
//! use exportcore::{ArtifactPath, Sha256Digest, Timestamp};
//! let anchor = TimeAnchor { created_at: Timestamp::parse("2025-01-01T00:00:00Z").unwrap(), source: TimeSource::Request };
//! let mut b = ManifestBuilder::bundle("json:raw", anchor);
//! b.add(ManifestEntry::new(ArtifactPath::parse("raw/vex.ndjson")?, 2, Sha256Digest::of(b"{}"), "application/x-ndjson").with_records(1))?;
//! let bytes = b.build().to_canonical_bytes();
//! assert!(bytes.starts_with(br#"{"createdAt":"2025-01-01T00:00:00Z","createdAtSource":"request","entries":[{"mediaType""#));
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use crate::error::{ExportError, Result};
use crate::hashing::Sha256Digest;
use crate::model::{ArtifactType, Timestamp};
use crate::path::ArtifactPath;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `version` of a manifest inside a bundle archive.
pub const BUNDLE_MANIFEST_VERSION: &str = "exportcore-bundle/v1";
/// `version` of the manifest a run writes next to its artifacts.
pub const RUN_MANIFEST_VERSION: &str = "exportcore-run/v1";
/// File name of both manifests.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of the DSSE envelope over `manifest.json` in a signed run.
pub const SIGNED_MANIFEST_FILE: &str = "manifest.dsse.json";
/// Name of the DSSE envelope holding the in-toto/SLSA provenance of a signed run.
pub const PROVENANCE_FILE: &str = "provenance.dsse.json";
/// Media type of DSSE envelopes.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// Where a manifest's `createdAt` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSource {
    /// The request's `createdAt`.
    Request,
    /// The `SOURCE_DATE_EPOCH` the embedder passed in.
    SourceDateEpoch,
    /// The newest timestamp found in the evidence.
    Evidence,
    /// Nothing was available: the Unix epoch.
    Epoch,
}

/// The pinned time written into every output, and its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeAnchor {
    /// The time.
    pub created_at: Timestamp,
    /// Where it came from.
    pub source: TimeSource,
}

impl TimeAnchor {
    /// Parses a `SOURCE_DATE_EPOCH` value (decimal seconds).
    pub fn from_source_date_epoch(value: &str) -> Result<Self> {
        let secs: i64 = value
            .trim()
            .parse()
            .map_err(|_| ExportError::invalid("SOURCE_DATE_EPOCH", format!("not an integer: {value:?}")))?;
        if secs < 0 {
            // As `createdAt`: tar and zip cannot hold a time before 1970.
            return Err(ExportError::invalid("SOURCE_DATE_EPOCH", format!("{secs} is before 1970")));
        }
        Ok(Self { created_at: Timestamp::from_unix(secs)?, source: TimeSource::SourceDateEpoch })
    }

    /// The anchor for a run: `pinned` if given, else the newest evidence time, else the epoch.
    pub fn resolve(pinned: Option<TimeAnchor>, newest_evidence: Option<Timestamp>) -> Self {
        pinned.unwrap_or_else(|| match newest_evidence {
            Some(t) => Self { created_at: t, source: TimeSource::Evidence },
            None => Self {
                created_at: Timestamp::from_unix(0).unwrap_or_else(|_| Timestamp::now()),
                source: TimeSource::Epoch,
            },
        })
    }

    /// Seconds since the epoch, clamped at 0 (for tar mtimes).
    pub fn mtime(&self) -> u64 {
        self.created_at.unix().max(0) as u64
    }
}

/// One manifest entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestEntry {
    /// Relative path.
    pub path: ArtifactPath,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
    /// IANA media type.
    pub media_type: String,
    /// Artifact type (run manifests).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ArtifactType>,
    /// Serialisation (`ndjson`, `tar+zstd`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Number of records in the file (records files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
}

impl ManifestEntry {
    /// An entry with the required fields.
    pub fn new(path: ArtifactPath, size: u64, sha256: Sha256Digest, media_type: impl Into<String>) -> Self {
        Self { path, size, sha256, media_type: media_type.into(), kind: None, format: None, records: None }
    }
    /// Sets the record count.
    pub fn with_records(mut self, n: u64) -> Self {
        self.records = Some(n);
        self
    }
    /// Sets type and format.
    pub fn with_kind(mut self, kind: ArtifactType, format: impl Into<String>) -> Self {
        self.kind = Some(kind);
        self.format = Some(format.into());
        self
    }
}

/// Sums over all entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Totals {
    /// Number of entries.
    pub entries: u64,
    /// Sum of sizes.
    pub bytes: u64,
    /// Sum of record counts.
    pub records: u64,
}

/// A manifest. Build one with [`ManifestBuilder`]; parse one with [`Manifest::parse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_MANIFEST_VERSION`] or [`RUN_MANIFEST_VERSION`].
    pub version: String,
    /// Profile that produced it.
    pub profile_id: String,
    /// Pinned time.
    pub created_at: Timestamp,
    /// Where `createdAt` came from.
    pub created_at_source: TimeSource,
    /// Free-form, profile-specific facts (targets, formats, counts...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
    /// Sums.
    pub totals: Totals,
    /// Entries sorted by path.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Canonical JSON bytes.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        // Serialising plain data structs cannot fail. Direct: a manifest may list 100,000s.
        crate::canonical::to_vec_direct(self).unwrap_or_default()
    }

    /// Parses a manifest, rejecting unknown fields, unsorted or duplicate entries.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        if m.version != BUNDLE_MANIFEST_VERSION && m.version != RUN_MANIFEST_VERSION {
            return Err(format!("unknown manifest version {:?}", m.version));
        }
        if m.entries.windows(2).any(|w| w[0].path >= w[1].path) {
            return Err("entries are not sorted by path or contain duplicates".into());
        }
        Ok(m)
    }

    /// The entry for `path`.
    pub fn entry(&self, path: &str) -> Option<&ManifestEntry> {
        self.entries.binary_search_by(|e| e.path.as_str().cmp(path)).ok().map(|i| &self.entries[i])
    }
}

/// Collects entries in any order and builds a sorted [`Manifest`].
#[derive(Clone, Debug)]
pub struct ManifestBuilder {
    version: &'static str,
    profile_id: String,
    anchor: TimeAnchor,
    metadata: BTreeMap<String, Value>,
    entries: BTreeMap<ArtifactPath, ManifestEntry>,
}

impl ManifestBuilder {
    /// A bundle manifest (inside an archive).
    pub fn bundle(profile_id: impl Into<String>, anchor: TimeAnchor) -> Self {
        Self::new(BUNDLE_MANIFEST_VERSION, profile_id, anchor)
    }
    /// A run manifest (next to a run's artifacts).
    pub fn run(profile_id: impl Into<String>, anchor: TimeAnchor) -> Self {
        Self::new(RUN_MANIFEST_VERSION, profile_id, anchor)
    }
    fn new(version: &'static str, profile_id: impl Into<String>, anchor: TimeAnchor) -> Self {
        Self { version, profile_id: profile_id.into(), anchor, metadata: BTreeMap::new(), entries: BTreeMap::new() }
    }
    /// Sets a metadata field.
    pub fn metadata(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Adds an entry; a second entry with the same path is an error.
    pub fn add(&mut self, entry: ManifestEntry) -> Result<&mut Self> {
        if entry.path.as_str() == MANIFEST_FILE {
            return Err(ExportError::PathUnsafe {
                path: MANIFEST_FILE.into(),
                reason: "reserved for the manifest".into(),
            });
        }
        if self.entries.contains_key(&entry.path) {
            return Err(ExportError::PathUnsafe { path: entry.path.to_string(), reason: "duplicate entry".into() });
        }
        self.entries.insert(entry.path.clone(), entry);
        Ok(self)
    }
    /// The finished manifest.
    pub fn build(self) -> Manifest {
        let entries: Vec<ManifestEntry> = self.entries.into_values().collect();
        let totals = Totals {
            entries: entries.len() as u64,
            bytes: entries.iter().map(|e| e.size).sum(),
            records: entries.iter().filter_map(|e| e.records).sum(),
        };
        Manifest {
            version: self.version.to_owned(),
            profile_id: self.profile_id,
            created_at: self.anchor.created_at,
            created_at_source: self.anchor.source,
            metadata: self.metadata,
            totals,
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor() -> TimeAnchor {
        TimeAnchor { created_at: Timestamp::parse("2025-01-01T00:00:00Z").unwrap(), source: TimeSource::Request }
    }

    fn entry(p: &str) -> ManifestEntry {
        ManifestEntry::new(ArtifactPath::parse(p).unwrap(), 1, Sha256Digest::of(p.as_bytes()), "text/plain")
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut a = ManifestBuilder::bundle("p", anchor());
        let mut b = ManifestBuilder::bundle("p", anchor());
        for p in ["z", "a/b", "a"] {
            a.add(entry(p)).unwrap();
        }
        for p in ["a", "z", "a/b"] {
            b.add(entry(p)).unwrap();
        }
        let (ma, mb) = (a.build(), b.build());
        assert_eq!(ma.to_canonical_bytes(), mb.to_canonical_bytes());
        let parsed = Manifest::parse(&ma.to_canonical_bytes()).unwrap();
        assert_eq!(parsed, ma);
        assert_eq!(parsed.entry("a/b").unwrap().size, 1);
        assert_eq!(parsed.totals.entries, 3);
    }

    #[test]
    fn rejects_duplicates_and_reserved() {
        let mut b = ManifestBuilder::bundle("p", anchor());
        b.add(entry("x")).unwrap();
        assert!(b.add(entry("x")).is_err());
        assert!(b.add(entry("manifest.json")).is_err());
    }

    #[test]
    fn source_date_epoch() {
        let a = TimeAnchor::from_source_date_epoch("1700000000").unwrap();
        assert_eq!(a.created_at.to_string(), "2023-11-14T22:13:20Z");
        assert!(TimeAnchor::from_source_date_epoch("soon").is_err());
        assert!(TimeAnchor::from_source_date_epoch("-5").unwrap_err().to_string().contains("before 1970"));
        let r = TimeAnchor::resolve(None, None);
        assert_eq!(r.source, TimeSource::Epoch);
        assert_eq!(r.mtime(), 0);
    }
}
