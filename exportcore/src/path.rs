//! Relative, normalised paths for artifacts and evidence: parsed once, safe everywhere after.

use crate::error::{ExportError, Result};
use std::fmt;

/// A relative `/`-separated path with no `.`/`..`/empty segments, no backslashes, no NUL or
/// other control characters, and no leading `/`. Every sink and archive entry is named by one,
/// so no artifact can escape its root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactPath(String);

impl ArtifactPath {
    /// Parses and checks a path.
    ///
    /// ```
    /// use exportcore::ArtifactPath;
    /// assert!(ArtifactPath::parse("raw/advisory.ndjson").is_ok());
    /// assert_eq!(ArtifactPath::parse("../etc/passwd").unwrap_err().code(), "ERR_EXPORT_PATH_UNSAFE");
    /// ```
    pub fn parse(s: impl AsRef<str>) -> Result<Self> {
        let s = s.as_ref();
        let bad = |reason: &str| ExportError::PathUnsafe { path: s.to_owned(), reason: reason.to_owned() };
        if s.is_empty() {
            return Err(bad("empty path"));
        }
        if s.len() > 4096 {
            return Err(bad("longer than 4096 bytes"));
        }
        if s.starts_with('/') {
            return Err(bad("absolute path"));
        }
        if s.contains('\\') {
            return Err(bad("backslash in path"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(bad("control character in path"));
        }
        for seg in s.split('/') {
            match seg {
                "" => return Err(bad("empty segment")),
                "." | ".." => return Err(bad("dot segment")),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Joins a relative child (itself checked).
    pub fn join(&self, child: &str) -> Result<Self> {
        Self::parse(format!("{}/{child}", self.0))
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True when `self` is `prefix` or lies under it.
    pub fn starts_with(&self, prefix: &ArtifactPath) -> bool {
        self.0 == prefix.0 || (self.0.starts_with(&prefix.0) && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

impl PartialEq<str> for ArtifactPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ArtifactPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl AsRef<str> for ArtifactPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ArtifactPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ArtifactPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for ArtifactPath {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl serde::Serialize for ArtifactPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ArtifactPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for bad in ["", "/abs", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\0b", "a\nb"] {
            let err = ArtifactPath::parse(bad).unwrap_err();
            assert_eq!(err.code(), "ERR_EXPORT_PATH_UNSAFE", "{bad:?}");
        }
    }

    #[test]
    fn accepts_normal_paths() {
        for good in ["a", "a/b.json", "sdks/python/x.py", "..a/b..", "ü/€"] {
            assert_eq!(ArtifactPath::parse(good).unwrap().as_str(), good);
        }
        let p = ArtifactPath::parse("raw/a.json").unwrap();
        assert!(p.starts_with(&ArtifactPath::parse("raw").unwrap()));
        assert!(!p.starts_with(&ArtifactPath::parse("ra").unwrap()));
        assert_eq!(p.file_name(), "a.json");
    }
}
