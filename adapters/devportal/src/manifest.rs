//! The bundle's `manifest.json` (`devportal-offline/v1`) and how its `bundleId` is derived.
//!
//! ```
//! use exportcore_devportal::manifest::{bundle_id, Category, Entry};
//! use exportcore::{ArtifactPath, Sha256Digest};
//! let entries = vec![Entry {
//!     category: Category::Portal,
//!     path: ArtifactPath::parse("portal/index.html")?,
//!     sha256: Sha256Digest::of(b"<html></html>"),
//!     size_bytes: 13,
//!     content_type: "text/html".into(),
//! }];
//! let id = bundle_id(&entries);
//! assert_eq!(id.len(), 36);
//! assert_eq!(&id[14..15], "8"); // UUID version 8
//! assert_eq!(id, bundle_id(&entries)); // same content, same id
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use exportcore::{canonical, ArtifactPath, Sha256Digest, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `version` of a devportal bundle manifest.
pub const MANIFEST_VERSION: &str = "devportal-offline/v1";

/// What part of the portal an asset belongs to: its top-level directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// `portal/**`: the static portal site.
    Portal,
    /// `specs/**`: API specifications (OpenAPI, JSON Schema, ...).
    Specs,
    /// `sdks/<name>/**`: one client SDK per directory.
    Sdk,
    /// `changelog/**`: release notes.
    Changelog,
}

impl Category {
    /// The top-level directory holding this category.
    pub fn dir(&self) -> &'static str {
        match self {
            Category::Portal => "portal",
            Category::Specs => "specs",
            Category::Sdk => "sdks",
            Category::Changelog => "changelog",
        }
    }

    /// The wire name (`portal`, `specs`, `sdk`, `changelog`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Category::Portal => "portal",
            Category::Specs => "specs",
            Category::Sdk => "sdk",
            Category::Changelog => "changelog",
        }
    }

    /// The category of a bundle path by its first segment, with the SDK name for `sdks/`.
    /// `Err` explains why a path under `sdks/` is not inside an SDK directory; `Ok(None)` means
    /// the path is not an asset path at all.
    pub fn of_path(path: &str) -> Result<Option<(Category, Option<&str>)>, String> {
        let mut segs = path.split('/');
        let top = segs.next().unwrap_or_default();
        Ok(Some(match top {
            "portal" => (Category::Portal, None),
            "specs" => (Category::Specs, None),
            "changelog" => (Category::Changelog, None),
            "sdks" => {
                let name = segs.next();
                match (name, segs.next()) {
                    (Some(name), Some(_)) => (Category::Sdk, Some(name)),
                    _ => return Err("SDK files must live in sdks/<name>/ (one directory per SDK)".into()),
                }
            }
            _ => return Ok(None),
        }))
    }
}

/// Which asset groups the bundle holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sources {
    /// `portal/` has files (always true for bundles this crate writes: the portal is required).
    pub portal_included: bool,
    /// `specs/` has files.
    pub specs_included: bool,
    /// Names of the `sdks/<name>/` directories that have files, sorted.
    pub sdk_names: Vec<String>,
    /// `changelog/` has files.
    pub changelog_included: bool,
}

/// Sums over the entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Totals {
    /// Number of entries.
    pub entry_count: u64,
    /// Sum of `sizeBytes`.
    pub total_size_bytes: u64,
}

/// One asset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// Its category.
    pub category: Category,
    /// Path inside the bundle (NFC, relative, `/`-separated).
    pub path: ArtifactPath,
    /// SHA-256 of its bytes.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Content type, from [`crate::content_type`].
    pub content_type: String,
}

/// `manifest.json` of a devportal bundle. Serialised with RFC 8785 ([`BundleManifest::to_bytes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleManifest {
    /// [`MANIFEST_VERSION`].
    pub version: String,
    /// The bundle's own files a user runs or reads (`verify-offline.sh`,
    /// `instructions-portable.txt`) by path, with their sha256: in the signed manifest, so a
    /// replaced script cannot keep "signatures valid".
    pub bundle_files: BTreeMap<String, Sha256Digest>,
    /// A UUID derived from the entries ([`bundle_id`]).
    pub bundle_id: String,
    /// The run's pinned time.
    pub generated_at: Timestamp,
    /// Free string facts the embedder sets (`releaseVersion`, a build tag, ...).
    pub metadata: BTreeMap<String, String>,
    /// Which asset groups are present.
    pub sources: Sources,
    /// Sums.
    pub totals: Totals,
    /// Assets, sorted by path.
    pub entries: Vec<Entry>,
}

impl BundleManifest {
    /// Builds a manifest from entries in any order: sorts them, derives `bundleId`, `sources`
    /// and `totals`.
    pub fn new(
        generated_at: Timestamp,
        metadata: BTreeMap<String, String>,
        bundle_files: BTreeMap<String, Sha256Digest>,
        mut entries: Vec<Entry>,
    ) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let sources = sources_of(&entries);
        let totals =
            Totals { entry_count: entries.len() as u64, total_size_bytes: entries.iter().map(|e| e.size_bytes).sum() };
        Self {
            version: MANIFEST_VERSION.to_owned(),
            bundle_files,
            bundle_id: bundle_id(&entries),
            generated_at,
            metadata,
            sources,
            totals,
            entries,
        }
    }

    /// RFC 8785 canonical JSON bytes (what `manifest.json` holds and what is signed).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain data structs always serialise.
        canonical::to_vec_direct(self).unwrap_or_default()
    }

    /// Parses `manifest.json` (unknown fields are refused).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a devportal-offline manifest: {e}"))
    }

    /// Everything a manifest must satisfy besides matching the files: version, canonical
    /// form, sorted unique entries whose category matches their path, and `bundleId`,
    /// `sources` and `totals` derived from the entries. Returns the problems found.
    pub fn check(&self, bytes: &[u8]) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version != MANIFEST_VERSION {
            problems.push(format!("version {:?}, expected {MANIFEST_VERSION:?}", self.version));
        }
        if self.to_bytes() != bytes {
            problems.push("not in RFC 8785 canonical form (edited?)".into());
        }
        if self.entries.windows(2).any(|w| w[0].path >= w[1].path) {
            problems.push("entries are not sorted by path or have duplicates".into());
        }
        for e in &self.entries {
            match Category::of_path(e.path.as_str()) {
                Ok(Some((c, _))) if c == e.category => {}
                Ok(Some((c, _))) => problems.push(format!(
                    "{}: category {} but the path is {}",
                    e.path,
                    e.category.as_str(),
                    c.as_str()
                )),
                Ok(None) => problems.push(format!("{}: not under portal/, specs/, sdks/<name>/ or changelog/", e.path)),
                Err(why) => problems.push(format!("{}: {why}", e.path)),
            }
        }
        let id = bundle_id(&self.entries);
        if self.bundle_id != id {
            problems.push(format!("bundleId {} is not derived from the entries (expected {id})", self.bundle_id));
        }
        if self.sources != sources_of(&self.entries) {
            problems.push("sources do not match the entries".into());
        }
        let totals = Totals {
            entry_count: self.entries.len() as u64,
            total_size_bytes: self.entries.iter().map(|e| e.size_bytes).sum(),
        };
        if self.totals != totals {
            problems.push(format!(
                "totals {{entryCount {}, totalSizeBytes {}}} do not match the entries ({}, {})",
                self.totals.entry_count, self.totals.total_size_bytes, totals.entry_count, totals.total_size_bytes
            ));
        }
        problems
    }
}

fn sources_of(entries: &[Entry]) -> Sources {
    let has = |c: Category| entries.iter().any(|e| e.category == c);
    let mut sdk_names: Vec<String> = entries
        .iter()
        .filter(|e| e.category == Category::Sdk)
        .filter_map(|e| e.path.as_str().split('/').nth(1).map(str::to_owned))
        .collect();
    sdk_names.sort();
    sdk_names.dedup();
    Sources {
        portal_included: has(Category::Portal),
        specs_included: has(Category::Specs),
        sdk_names,
        changelog_included: has(Category::Changelog),
    }
}

/// The `bundleId` of a bundle with these entries (sorted by path, as in the manifest):
/// the SHA-256 of the RFC 8785 canonical JSON of the `entries` array, its first 16 bytes
/// made a UUID version 8 (RFC 9562: version nibble `8`, variant bits `10`), printed
/// lowercase and hyphenated.
///
/// Only the assets count: the same portal, specs, SDKs and changelog give the same id
/// whatever the time, metadata or signature, so a bundle id names its content.
pub fn bundle_id(entries: &[Entry]) -> String {
    let bytes = canonical::to_vec(entries).unwrap_or_default();
    let digest = Sha256Digest::of(&bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_bytes()[..16]);
    uuid::Uuid::new_v8(first).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, body: &[u8]) -> Entry {
        Entry {
            category: Category::of_path(path).unwrap().unwrap().0,
            path: ArtifactPath::parse(path).unwrap(),
            sha256: Sha256Digest::of(body),
            size_bytes: body.len() as u64,
            content_type: crate::content_type::content_type(path).into(),
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let t = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        let m = BundleManifest::new(
            t,
            BTreeMap::from([("releaseVersion".into(), "1.2.3".into())]),
            BTreeMap::from([("verify-offline.sh".into(), Sha256Digest::of(b"#!/bin/sh"))]),
            vec![entry("sdks/python/a.py", b"x"), entry("portal/index.html", b"<p>"), entry("sdks/dotnet/A.cs", b"")],
        );
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"bundleFiles":{"verify-offline.sh":""#), "{text}");
        assert!(text.contains(r#"},"bundleId":""#), "{text}");
        assert!(text.contains(r#""generatedAt":"2025-01-01T00:00:00Z","metadata":{"releaseVersion":"1.2.3"}"#));
        assert!(text.contains(r#""sources":{"changelogIncluded":false,"portalIncluded":true,"sdkNames":["dotnet","python"],"specsIncluded":false}"#), "{text}");
        assert!(text.contains(r#""totals":{"entryCount":3,"totalSizeBytes":4}"#), "{text}");
        assert!(text.contains(r#"{"category":"sdk","contentType":"text/x-csharp","path":"sdks/dotnet/A.cs","sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","sizeBytes":0}"#), "{text}");
        let back = BundleManifest::parse(&bytes).unwrap();
        assert_eq!(back, m);
        assert!(back.check(&bytes).is_empty(), "{:?}", back.check(&bytes));

        let mut bad = m.clone();
        bad.entries[0].sha256 = Sha256Digest::of(b"other");
        let problems = bad.check(&bad.to_bytes());
        assert!(problems.iter().any(|p| p.contains("bundleId")), "{problems:?}");
        let mut bad = m.clone();
        bad.entries[0].category = Category::Specs;
        assert!(bad.check(&bad.to_bytes()).iter().any(|p| p.contains("category specs")));
        assert!(!m.check(text.replace("\"totals\"", " \"totals\"").as_bytes()).is_empty());
        assert!(BundleManifest::parse(text.replace("\"metadata\"", "\"x\":1,\"metadata\"").as_bytes()).is_err());
    }

    #[test]
    fn bundle_id_is_a_v8_uuid_of_the_entries() {
        let a = vec![entry("portal/index.html", b"a")];
        let b = vec![entry("portal/index.html", b"b")];
        let id = bundle_id(&a);
        let u = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(u.get_version_num(), 8);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(id, bundle_id(&b));
        // The documented derivation, step by step.
        let digest = Sha256Digest::of(&canonical::to_vec(&a).unwrap()).to_hex();
        let mut hexid = digest[..32].to_owned();
        hexid.replace_range(12..13, "8");
        let v = u8::from_str_radix(&hexid[16..17], 16).unwrap();
        hexid.replace_range(16..17, &format!("{:x}", (v & 0x3) | 0x8));
        assert_eq!(id.replace('-', ""), hexid);
    }

    #[test]
    fn categories() {
        assert_eq!(Category::of_path("sdks/go/x.go").unwrap(), Some((Category::Sdk, Some("go"))));
        assert!(Category::of_path("sdks/README.md").is_err());
        assert_eq!(Category::of_path("manifest.json").unwrap(), None);
        assert_eq!(Category::of_path("changelog/a/b.md").unwrap(), Some((Category::Changelog, None)));
    }
}
