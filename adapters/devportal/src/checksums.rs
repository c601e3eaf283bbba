//! `checksums.txt`: a `root <sha256 of manifest.json>` line, then one `<sha256>  <path>` line
//! per file of the bundle except `checksums.txt` itself, sorted by path (bytewise), LF line
//! endings, a final newline. Without its first line it is exactly what `sha256sum -c` (and
//! `shasum -a 256 -c`) read.
//!
//! ```
//! use exportcore_devportal::checksums::Checksums;
//! use exportcore::{ArtifactPath, Sha256Digest};
//! let c = Checksums {
//!     root: Sha256Digest::of(b"{}"),
//!     files: vec![(ArtifactPath::parse("manifest.json")?, Sha256Digest::of(b"{}"))],
//! };
//! let text = c.render();
//! assert_eq!(text, format!("root {0}\n{0}  manifest.json\n", Sha256Digest::of(b"{}")));
//! assert_eq!(Checksums::parse(&text).unwrap(), c);
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use exportcore::{ArtifactPath, Sha256Digest};

/// File name of the checksums file.
pub const CHECKSUMS_FILE: &str = "checksums.txt";

/// The parsed contents of `checksums.txt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksums {
    /// SHA-256 of `manifest.json`'s bytes.
    pub root: Sha256Digest,
    /// Every other file and its digest, sorted by path.
    pub files: Vec<(ArtifactPath, Sha256Digest)>,
}

impl Checksums {
    /// The file's text. `files` are written in the order given; [`Checksums::parse`] requires
    /// it sorted.
    pub fn render(&self) -> String {
        let mut out = format!("root {}\n", self.root);
        for (path, digest) in &self.files {
            out.push_str(&format!("{digest}  {path}\n"));
        }
        out
    }

    /// Parses the text strictly: the root line first, well-formed lines with safe paths,
    /// sorted by path without duplicates, no line for `checksums.txt`, a final newline.
    /// The error names the line at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains('\r') {
            return Err("has CR characters (line endings must be LF)".into());
        }
        let Some(body) = text.strip_suffix('\n') else {
            return Err(if text.is_empty() { "is empty".into() } else { "does not end with a newline".into() });
        };
        let mut lines = body.split('\n');
        let first = lines.next().unwrap_or_default();
        let root = first
            .strip_prefix("root ")
            .and_then(|h| h.parse::<Sha256Digest>().ok().filter(|_| !h.starts_with("sha256:")))
            .ok_or_else(|| format!("line 1 must be `root <64 lowercase hex digits>`, found {first:?}"))?;
        let mut files: Vec<(ArtifactPath, Sha256Digest)> = Vec::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let (hex, path) =
                line.split_once("  ").ok_or_else(|| format!("line {n} must be `<sha256>  <path>`, found {line:?}"))?;
            let digest = hex
                .parse::<Sha256Digest>()
                .ok()
                .filter(|_| hex.len() == 64)
                .ok_or_else(|| format!("line {n}: {hex:?} is not 64 lowercase hex digits"))?;
            let path = ArtifactPath::parse(path).map_err(|e| format!("line {n}: {e}"))?;
            if path.as_str() == CHECKSUMS_FILE {
                return Err(format!("line {n}: {CHECKSUMS_FILE} cannot list itself"));
            }
            if let Some((prev, _)) = files.last() {
                if *prev >= path {
                    return Err(format!("line {n}: {path} is not sorted after {prev} (or is listed twice)"));
                }
            }
            files.push((path, digest));
        }
        Ok(Self { root, files })
    }

    /// The digest listed for `path`.
    pub fn get(&self, path: &str) -> Option<Sha256Digest> {
        self.files.binary_search_by(|(p, _)| p.as_str().cmp(path)).ok().map(|i| self.files[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing() {
        let h = Sha256Digest::of(b"x").to_hex();
        let ok = format!("root {h}\n{h}  a\n{h}  b/c\n");
        let c = Checksums::parse(&ok).unwrap();
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.get("b/c"), Some(Sha256Digest::of(b"x")));
        assert_eq!(c.render(), ok);
        for (bad, why) in [
            (String::new(), "empty"),
            (format!("root {h}"), "newline"),
            (format!("root {h}\r\n"), "CR"),
            (format!("{h}  a\n"), "line 1"),
            (format!("root sha256:{h}\n"), "line 1"),
            (format!("root {h}\n{h} a\n"), "line 2"),
            (format!("root {h}\n{}  a\n", h.to_uppercase()), "line 2"),
            (format!("root {h}\n{h}  b\n{h}  a\n"), "not sorted"),
            (format!("root {h}\n{h}  a\n{h}  a\n"), "twice"),
            (format!("root {h}\n{h}  ../a\n"), "dot segment"),
            (format!("root {h}\n{h}  /a\n"), "absolute"),
            (format!("root {h}\n{h}  checksums.txt\n"), "itself"),
            (format!("root {h}\n\n"), "line 2"),
        ] {
            let err = Checksums::parse(&bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
