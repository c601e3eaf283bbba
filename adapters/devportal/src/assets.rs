//! Listing the portal assets of an evidence source: paths normalised to Unicode NFC,
//! classified by category, checked for collisions.

use crate::manifest::Category;
use exportcore::{ArtifactPath, EvidenceKind, EvidenceSource, ExportError, Location, Result};
use std::collections::BTreeMap;
use unicode_normalization::UnicodeNormalization;

/// One asset to pack.
#[derive(Clone, Debug)]
pub(crate) struct Asset {
    /// Path in the evidence source (as listed).
    pub(crate) source: ArtifactPath,
    /// Path in the bundle (NFC).
    pub(crate) path: ArtifactPath,
    /// Category.
    pub(crate) category: Category,
    /// Size as listed (progress only; the digest pass measures the real size).
    pub(crate) listed_size: u64,
}

/// Every asset of `evidence`, sorted by bundle path.
///
/// `EvidenceSource::list` already refuses symlinks out of the tree, devices, FIFOs, sockets
/// and names that are not UTF-8 (`ERR_EXPORT_PATH_UNSAFE`). Here names are normalised to NFC
/// (so a portal written on macOS, whose file system hands out NFD names, packs the same as
/// one written on Linux); two names that normalise to the same path are refused
/// (`ERR_EXPORT_PATH_UNSAFE`), as is a file directly under `sdks/` (`ERR_EXPORT_EVIDENCE_INVALID`).
pub(crate) fn collect(evidence: &dyn EvidenceSource) -> Result<Vec<Asset>> {
    let mut by_path: BTreeMap<ArtifactPath, Asset> = BTreeMap::new();
    // Names that differ only in case are one file on macOS and Windows: unpacked there, one
    // would overwrite the other.
    let mut folded: BTreeMap<String, String> = BTreeMap::new();
    for item in evidence.list(EvidenceKind::Portal)? {
        let raw = item.path.as_str();
        let nfc: String = raw.nfc().collect();
        let path = ArtifactPath::parse(&nfc)?;
        let category = match Category::of_path(path.as_str()) {
            Ok(Some((c, _))) => c,
            Ok(None) => {
                return Err(ExportError::evidence(
                    Location::file(raw),
                    "not a portal asset (expected portal/, specs/, sdks/<name>/ or changelog/)",
                ))
            }
            Err(why) => return Err(ExportError::evidence(Location::file(raw), why)),
        };
        if let Some(prev) = by_path.get(&path) {
            return Err(ExportError::PathUnsafe {
                path: raw.to_owned(),
                reason: format!(
                    "its Unicode NFC form {path:?} is also the NFC form of {:?}; two files would share one name",
                    prev.source.as_str()
                ),
            });
        }
        // The path and every directory on it: `portal/Docs/a` and `portal/docs/b` would share
        // one directory there.
        let mut prefix = String::new();
        for part in path.as_str().split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match folded.get(&prefix.to_lowercase()) {
                Some(prev) if *prev != prefix || prefix == path.as_str() => {
                    return Err(ExportError::PathUnsafe {
                        path: raw.to_owned(),
                        reason: format!(
                            "{prefix:?} differs from {prev:?} only in case; on a case-insensitive file system (macOS, Windows) they would be one"
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    folded.insert(prefix.to_lowercase(), prefix.clone());
                }
            }
        }
        by_path.insert(path.clone(), Asset { source: item.path, path, category, listed_size: item.size });
    }
    Ok(by_path.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use exportcore::MemoryEvidence;

    #[test]
    fn normalises_and_refuses_collisions() {
        let mut ev = MemoryEvidence::new();
        ev.insert("portal/cafe\u{301}.html", "nfd").unwrap();
        ev.insert("portal/index.html", "i").unwrap();
        let assets = collect(&ev).unwrap();
        assert_eq!(assets[0].path.as_str(), "portal/caf\u{e9}.html");
        assert_eq!(assets[0].source.as_str(), "portal/cafe\u{301}.html");

        ev.insert("portal/caf\u{e9}.html", "nfc").unwrap();
        let err = collect(&ev).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_PATH_UNSAFE", "{err}");

        let mut ev = MemoryEvidence::new();
        ev.insert("portal/README.md", "a").unwrap();
        ev.insert("portal/readme.md", "b").unwrap();
        let err = collect(&ev).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_PATH_UNSAFE", "{err}");
        assert!(err.to_string().contains("only in case"), "{err}");
        // Directories too.
        let mut ev = MemoryEvidence::new();
        ev.insert("portal/Docs/a.md", "a").unwrap();
        ev.insert("portal/docs/b.md", "b").unwrap();
        let err = collect(&ev).unwrap_err();
        assert!(err.to_string().contains("only in case"), "{err}");
        // Same directory, different files: fine.
        let mut ev = MemoryEvidence::new();
        ev.insert("portal/docs/a.md", "a").unwrap();
        ev.insert("portal/docs/b.md", "b").unwrap();
        collect(&ev).unwrap();

        let mut ev = MemoryEvidence::new();
        ev.insert("sdks/README.md", "x").unwrap();
        let err = collect(&ev).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_EVIDENCE_INVALID");
        assert!(err.to_string().contains("sdks/README.md") && err.to_string().contains("sdks/<name>/"), "{err}");
    }
}
