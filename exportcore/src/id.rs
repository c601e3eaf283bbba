//! Typed ids: [`TenantId`], [`ProfileId`] and [`RunId`]. Each is parsed once, at the edge
//! (`parse`, `FromStr`, serde), so a value of the type is always well-formed; on the wire each
//! is the seed's plain string.
//!
//! ```
//! use exportcore::{ProfileId, RunId, TenantId};
//! let tenant = TenantId::parse("tenant-a")?;
//! let run = RunId::generate(&tenant);
//! assert!(run.as_str().starts_with("export-run::tenant-a::"));
//! assert_eq!(ProfileId::parse("json:raw")?, "json:raw");
//! assert_eq!(TenantId::parse("a b").unwrap_err().code(), "ERR_EXPORT_REQUEST_INVALID");
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use crate::error::{ExportError, Result};
use std::fmt;

macro_rules! typed_id {
    ($(#[$m:meta])* $name:ident, field = $field:literal, max = $max:literal, allowed = $allowed:expr, what = $what:literal) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Parses and checks a ", $what, ": 1 to ", stringify!($max), " characters, none of them whitespace or control characters.")]
            ///
            /// # Errors
            /// `ERR_EXPORT_REQUEST_INVALID` naming the field and what is wrong.
            pub fn parse(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                let allowed: fn(char) -> bool = $allowed;
                if s.is_empty() {
                    return Err(ExportError::invalid($field, "must not be empty"));
                }
                if s.chars().count() > $max {
                    return Err(ExportError::invalid($field, format!("longer than {} characters", $max)));
                }
                if let Some(c) = s.chars().find(|c| !allowed(*c)) {
                    return Err(ExportError::invalid($field, format!("character {c:?} is not allowed in {s:?}")));
                }
                Ok(Self(s))
            }
            /// An id from a string literal, for ids fixed at compile time.
            ///
            /// # Panics
            /// If `s` is not a valid id (a programming error, like `http`'s `from_static`).
            pub fn from_static(s: &'static str) -> Self {
                match Self::parse(s) {
                    Ok(id) => id,
                    Err(e) => panic!("{}::from_static({s:?}): {e}", stringify!($name)),
                }
            }
            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = ExportError;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = ExportError;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(s)
            }
        }
        impl TryFrom<&str> for $name {
            type Error = ExportError;
            fn try_from(s: &str) -> Result<Self> {
                Self::parse(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

fn id_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control()
}

fn tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

typed_id!(
    /// A tenant: 1 to 128 ASCII letters, digits, `-`, `_` or `.` (it is embedded in run ids,
    /// saved-profile ids and storage paths, so it has no separators of its own).
    TenantId, field = "tenant", max = 128, allowed = tenant_char, what = "tenant id"
);
typed_id!(
    /// A profile: a built-in `kind:variant` (`json:raw`, `trivy:db`) or a saved profile's
    /// `export-profile::<tenant>::<name>`.
    ProfileId, field = "profileId", max = 256, allowed = id_char, what = "profile id"
);
typed_id!(
    /// A run: `export-run::<tenant>::<uuid v7>` when generated, any well-formed string when an
    /// embedder brings its own.
    RunId, field = "runId", max = 256, allowed = id_char, what = "run id"
);

impl RunId {
    /// A fresh, time-ordered run id of `tenant`: `export-run::<tenant>::<uuid v7>`.
    pub fn generate(tenant: &TenantId) -> Self {
        Self(format!("export-run::{tenant}::{}", uuid_v7()))
    }

    /// The sink prefix of this run's artifacts when an engine publishes one directory per run:
    /// `runs/<run id, characters other than ASCII letters, digits and `._-` replaced by `_`>`.
    pub fn sink_prefix(&self) -> Result<crate::ArtifactPath> {
        let safe: String =
            self.0.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        crate::ArtifactPath::parse(format!("runs/{safe}"))
    }

    /// The sink prefix of one attempt's artifacts: `runs/<id>/attempt-<n>` (under
    /// [`RunId::sink_prefix`]). Each attempt of a run publishes under its own prefix, so a
    /// worker that lost its lease — still writing, or rolling back its failed attempt — can
    /// only touch its own attempt's files, never those of the attempt that took over.
    pub fn attempt_prefix(&self, attempt: u32) -> Result<crate::ArtifactPath> {
        self.sink_prefix()?.join(&format!("attempt-{attempt}"))
    }
}

/// A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 bits that are unique
/// in practice: SHA-256 of the nanosecond clock, the process id and a process-wide counter.
/// Written here so the core needs neither `uuid` nor `rand` (decision "Core API").
pub(crate) fn uuid_v7() -> String {
    use sha2::Digest;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let r = h.finalize();
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&(now.as_millis() as u64).to_be_bytes()[2..]);
    b[6..].copy_from_slice(&r[..10]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let x = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_once_and_round_trip_as_strings() {
        let t = TenantId::parse("tenant-default").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"tenant-default\"");
        let back: TenantId = serde_json::from_str("\"tenant-default\"").unwrap();
        assert_eq!(back, t);
        for bad in ["", "a b", "a/b", "a::b", "ü", &"x".repeat(129)] {
            assert_eq!(TenantId::parse(bad).unwrap_err().code(), "ERR_EXPORT_REQUEST_INVALID", "{bad:?}");
        }
        assert!(serde_json::from_str::<TenantId>("\"a b\"").is_err());
        for good in ["json:raw", "export-profile::tenant-a::daily-vex"] {
            ProfileId::parse(good).unwrap();
        }
        for bad in ["", " ", "a\nb", "a\u{0}"] {
            let e = ProfileId::parse(bad).unwrap_err();
            assert!(matches!(e, ExportError::RequestInvalid { ref field, .. } if field == "profileId"), "{e:?}");
        }
    }

    #[test]
    fn generated_ids_are_unique_v7_and_ordered() {
        let a = uuid_v7();
        let b = uuid_v7();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "7");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert!(a[..13] <= b[..13]);
    }

    #[test]
    fn run_prefix_is_a_safe_path() {
        let r = RunId::parse("export-run::t::0190-ab").unwrap();
        assert_eq!(r.sink_prefix().unwrap().as_str(), "runs/export-run__t__0190-ab");
        assert_eq!(r.attempt_prefix(2).unwrap().as_str(), "runs/export-run__t__0190-ab/attempt-2");
    }
}
