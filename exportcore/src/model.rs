//! The gateway contract's types (seed 000): run requests, run records, outputs and events.
//!
//! Wire shapes are camelCase JSON. Requests reject unknown fields; every field is parsed into
//! a typed value at the edge ([`RunRequest::from_json`]), and errors name the JSON path of the
//! offending field.

use crate::error::{ExportError, Result};
use crate::hashing::Sha256Digest;
use crate::id::{ProfileId, RunId, TenantId};
use crate::path::ArtifactPath;
use crate::select::Selectors;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time, always UTC, printed as RFC 3339 with a `Z` suffix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// The current wall-clock time. Only run records use it; outputs never do.
    pub fn now() -> Self {
        Self(OffsetDateTime::now_utc())
    }
    /// Seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Result<Self> {
        OffsetDateTime::from_unix_timestamp(secs)
            .map(Self)
            .map_err(|e| ExportError::invalid("createdAt", e.to_string()))
    }
    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        self.0.unix_timestamp()
    }
    /// Parses RFC 3339 (any offset; converted to UTC). A local time whose UTC lies past
    /// [`Timestamp::MAX`] (`9999-12-31T23:59:59-01:00`) is an error, not a panic.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("not an RFC 3339 timestamp ({e}): {s:?}"))?;
        t.checked_to_offset(time::UtcOffset::UTC)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is after 9999-12-31T23:59:59Z in UTC"))
    }
    /// The latest time a timestamp holds: 9999-12-31T23:59:59.999999999Z (RFC 3339 has four
    /// digits for the year).
    pub const MAX: Timestamp = Timestamp(time::macros::datetime!(9999-12-31 23:59:59.999_999_999 UTC));

    /// This time plus `d`, to the nanosecond, at most [`Timestamp::MAX`] (a lease or an
    /// expiry that far away never lapses).
    pub fn plus(&self, d: std::time::Duration) -> Self {
        time::Duration::try_from(d).ok().and_then(|d| self.0.checked_add(d)).map_or(Self::MAX, Self).min(Self::MAX)
    }
    /// This time plus whole days, at most [`Timestamp::MAX`].
    pub fn plus_days(&self, days: u32) -> Self {
        self.checked_plus_days(days).unwrap_or(Self::MAX)
    }
    /// This time plus whole days; `None` past [`Timestamp::MAX`] (for a time that must be
    /// exact, such as a signed expiry).
    pub fn checked_plus_days(&self, days: u32) -> Option<Self> {
        self.0.checked_add(time::Duration::days(i64::from(days))).map(Self).filter(|t| *t <= Self::MAX)
    }
    /// The underlying `time` value.
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "@{}", self.0.unix_timestamp()),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The wire spelling.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("unknown {} {s:?}, expected one of: {}", stringify!($name),
                        [$($text),+].join(", "))),
                }
            }
        }
    };
}

wire_enum!(
    /// What evidence a run exports.
    Target {
        /// OSV advisories.
        Advisory = "advisory",
        /// OpenVEX statements.
        Vex = "vex",
        /// Policy findings.
        Policy = "policy",
    }
);

wire_enum!(
    /// Record serialisation of JSON outputs.
    Format {
        /// One JSON document (an array of records).
        Json = "json",
        /// One record per line.
        Ndjson = "ndjson",
    }
);

wire_enum!(
    /// Compression of bundle archives.
    Compression {
        /// Plain tar.
        None = "none",
        /// tar.gz (fixed header: mtime 0, no name).
        Gzip = "gzip",
        /// tar.zst (level 3, content checksum).
        Zstd = "zstd",
    }
);

wire_enum!(
    /// Queue priority.
    Priority {
        /// Runs before normal and low.
        High = "high",
        /// The default.
        Normal = "normal",
        /// Runs last.
        Low = "low",
    }
);

wire_enum!(
    /// Where artifacts are distributed.
    DistributionType {
        /// Streamed download from the gateway.
        Http = "http",
        /// Pushed to an OCI registry (`ref` names the repository).
        Oci = "oci",
        /// Written to object storage (`ref` names bucket/prefix).
        Object = "object",
        /// Written to a local directory.
        Filesystem = "filesystem",
    }
);

wire_enum!(
    /// Lifecycle state of a run.
    RunStatus {
        /// Accepted, waiting for a worker.
        Queued = "queued",
        /// A worker is exporting.
        Running = "running",
        /// All artifacts are published and verified.
        Succeeded = "succeeded",
        /// Stopped with an error; no artifact of it is reported ready.
        Failed = "failed",
        /// Retention elapsed; artifacts deleted.
        Expired = "expired",
    }
);

impl RunStatus {
    /// True for states a run never leaves by itself (`expired` only follows `succeeded`/`failed`).
    pub fn is_terminal(&self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Expired)
    }
}

#[allow(clippy::derivable_impls)] // the enum comes from a macro
impl Default for Priority {
    fn default() -> Self {
        Priority::Normal
    }
}

/// `distribution.signing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Signing {
    /// Sign the run's manifest and provenance.
    #[serde(default)]
    pub enabled: bool,
    /// Key reference (`file:PATH`, `env:VAR`, `kms://...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ref: Option<String>,
}

/// `distribution`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Distribution {
    /// Driver.
    #[serde(rename = "type")]
    pub kind: DistributionType,
    /// Destination reference (registry repository, bucket prefix, directory).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Signing options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
}

/// One artifact as a distribution placed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct DistributedArtifact {
    /// Its path in the run.
    pub path: ArtifactPath,
    /// SHA-256.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
    /// Where it is: a pullable reference (`HOST/REPO@sha256:…`), an object key, a path.
    pub location: String,
}

impl DistributedArtifact {
    /// An artifact at `location`.
    pub fn new(path: ArtifactPath, sha256: Sha256Digest, size: u64, location: impl Into<String>) -> Self {
        Self { path, sha256, size, location: location.into() }
    }
}

/// Outcome of a distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistributionStatus {
    /// Everything is where the record says.
    Succeeded,
    /// It failed (see `error`).
    Failed,
}

/// A distribution of a run's outputs (`GET /export-center/distributions/{id}`): kept in the
/// run store; the URLs a reader uses are made from it when it is read (signed, expiring).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct DistributionRecord {
    /// Id (`dist-` + a UUIDv7).
    pub id: String,
    /// The run.
    pub run_id: RunId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Driver.
    #[serde(rename = "type")]
    pub kind: DistributionType,
    /// The destination (`HOST/REPO:TAG`, `s3://BUCKET/PREFIX`, a directory): never holding
    /// credentials.
    pub reference: String,
    /// What went where.
    pub artifacts: Vec<DistributedArtifact>,
    /// Outcome.
    pub status: DistributionStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When its artifacts stop being served (the run's expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl DistributionRecord {
    /// A succeeded distribution of `run_id` to `reference`, made `now`.
    pub fn succeeded(
        run_id: RunId,
        tenant: TenantId,
        kind: DistributionType,
        reference: impl Into<String>,
        artifacts: Vec<DistributedArtifact>,
        now: Timestamp,
    ) -> Self {
        Self {
            id: format!("dist-{}", crate::id::uuid_v7()),
            run_id,
            tenant,
            kind,
            reference: reference.into(),
            artifacts,
            status: DistributionStatus::Succeeded,
            error: None,
            created_at: now,
            expires_at: None,
        }
    }
}

/// `encryption`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Encryption {
    /// Encrypt the payload.
    #[serde(default)]
    pub enabled: bool,
    /// KMS key or age recipient reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

/// The body of `POST /export-center/runs`, plus two optional extensions of ours
/// (`createdAt` to pin output time, `compression`), documented in `docs/decisions.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RunRequest {
    /// Profile to run (`json:raw`, ...).
    pub profile_id: ProfileId,
    /// Evidence kinds to export; empty = the profile's default.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Output serialisations; empty = the profile's default.
    #[serde(default)]
    pub formats: Vec<Format>,
    /// Where the artifacts go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// Days until the run and its artifacts expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Payload encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Queue priority.
    #[serde(default)]
    pub priority: Priority,
    /// Extension: the time written into every output (else `SOURCE_DATE_EPOCH`, else the newest
    /// evidence timestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// Extension: bundle compression (profile default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Extension: compression level of the archives a run writes (gzip 1–9, zstd 1–19;
    /// profile default when absent): trade size for build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<u32>,
    /// Extension: run timeout in seconds (default: the engine's, 60 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Extension: treat evidence a profile would skip with a warning (e.g. an ecosystem Trivy
    /// has no bucket for) as an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Which evidence to export (ecosystems, packages, ids, a modification window); empty
    /// means everything. See [`crate::select`].
    #[serde(default, skip_serializing_if = "Selectors::is_empty")]
    pub selectors: Selectors,
}

/// Limits enforced on requests (seed 000 "Limits").
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest accepted request body (256 KiB).
    pub max_body_bytes: u64,
    /// Most targets in one request (50).
    pub max_targets: usize,
    /// Accepted `retentionDays` range.
    pub retention_days: std::ops::RangeInclusive<u32>,
    /// Default run timeout (60 minutes).
    pub default_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_targets: 50,
            retention_days: 1..=3650,
            default_timeout: std::time::Duration::from_secs(60 * 60),
        }
    }
}

impl RunRequest {
    /// A request for `profile_id` with every other field at its default.
    pub fn new(profile_id: ProfileId) -> Self {
        Self {
            profile_id,
            targets: Vec::new(),
            formats: Vec::new(),
            distribution: None,
            retention_days: None,
            encryption: None,
            priority: Priority::Normal,
            created_at: None,
            compression: None,
            compression_level: None,
            timeout_seconds: None,
            strict: false,
            selectors: Selectors::default(),
        }
    }

    /// Parses and validates a request body.
    ///
    /// # Errors
    /// `ERR_EXPORT_TOO_LARGE` for a body over the limit; `ERR_EXPORT_REQUEST_INVALID` naming the
    /// JSON path for malformed JSON, unknown fields or values, and broken rules.
    pub fn from_json(body: &[u8], limits: &Limits) -> Result<Self> {
        if body.len() as u64 > limits.max_body_bytes {
            return Err(ExportError::TooLarge {
                what: "request body".into(),
                limit: limits.max_body_bytes,
                actual: body.len() as u64,
            });
        }
        let de = &mut serde_json::Deserializer::from_slice(body);
        let req: RunRequest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ExportError::invalid(field, e.into_inner().to_string())
        })?;
        req.validate(limits)?;
        Ok(req)
    }

    /// A builder for `profile_id` (parsed by [`RunRequestBuilder::build`]).
    ///
    /// ```
    /// use exportcore::{Priority, RunRequest, Target};
    /// let req = RunRequest::builder("json:raw").targets([Target::Advisory]).priority(Priority::High).build()?;
    /// assert_eq!(req.profile_id, "json:raw");
    /// # Ok::<(), exportcore::ExportError>(())
    /// ```
    pub fn builder(profile_id: impl Into<String>) -> RunRequestBuilder {
        RunRequestBuilder { request: ProfileId::parse(profile_id).map(RunRequest::new), limits: Limits::default() }
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if self.targets.len() > limits.max_targets {
            return Err(ExportError::invalid(
                "targets",
                format!("{} targets, at most {} allowed", self.targets.len(), limits.max_targets),
            ));
        }
        if let Some(i) = first_duplicate(&self.targets) {
            return Err(ExportError::invalid(format!("targets[{i}]"), "duplicate target"));
        }
        if let Some(i) = first_duplicate(&self.formats) {
            return Err(ExportError::invalid(format!("formats[{i}]"), "duplicate format"));
        }
        if let Some(days) = self.retention_days {
            if !limits.retention_days.contains(&days) {
                return Err(ExportError::invalid(
                    "retentionDays",
                    format!(
                        "{days} is out of range {}..={}",
                        limits.retention_days.start(),
                        limits.retention_days.end()
                    ),
                ));
            }
        }
        if let Some(d) = &self.distribution {
            let needs_ref = matches!(d.kind, DistributionType::Oci | DistributionType::Object);
            match &d.reference {
                None if needs_ref => {
                    return Err(ExportError::invalid("distribution.ref", format!("required for type {}", d.kind)))
                }
                Some(r) if r.trim().is_empty() => {
                    return Err(ExportError::invalid("distribution.ref", "must not be empty"))
                }
                _ => {}
            }
        }
        if let Some(l) = self.compression_level {
            let max = if self.compression == Some(Compression::Gzip) { 9 } else { 19 };
            if !(1..=max).contains(&l) {
                return Err(ExportError::invalid("compressionLevel", format!("{l} is out of range 1..={max}")));
            }
        }
        if self.created_at.is_some_and(|t| t.unix() < 0) {
            return Err(ExportError::invalid(
                "createdAt",
                "before 1970-01-01T00:00:00Z: tar and zip times cannot hold it",
            ));
        }
        if let Some(t) = self.timeout_seconds {
            if t == 0 || t > 7 * 24 * 3600 {
                return Err(ExportError::invalid("timeoutSeconds", format!("{t} is out of range 1..=604800")));
            }
        }
        self.selectors.validate()?;
        if let Some(e) = &self.encryption {
            if e.enabled && e.kms_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
                return Err(ExportError::invalid("encryption.kmsKey", "required when encryption is enabled"));
            }
        }
        Ok(())
    }

    /// True when the request asks for signed outputs.
    pub fn signing_enabled(&self) -> bool {
        self.distribution.as_ref().and_then(|d| d.signing.as_ref()).is_some_and(|s| s.enabled)
    }

    /// The signing key reference, when signing is enabled.
    pub fn signing_key_ref(&self) -> Option<&str> {
        self.distribution.as_ref().and_then(|d| d.signing.as_ref()).filter(|s| s.enabled)?.key_ref.as_deref()
    }
}

/// Builds a [`RunRequest`] field by field; [`RunRequestBuilder::build`] reports a bad
/// profile id and validates the whole request against the limits (default: [`Limits::default`]).
#[derive(Debug)]
#[must_use]
pub struct RunRequestBuilder {
    request: Result<RunRequest>,
    limits: Limits,
}

macro_rules! request_setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty => |$r:ident, $v:ident| $set:expr;)+) => {$(
        $(#[$m])*
        pub fn $name(mut self, $v: $ty) -> Self {
            if let Ok($r) = &mut self.request {
                $set;
            }
            self
        }
    )+};
}

impl RunRequestBuilder {
    request_setters! {
        /// Evidence kinds to export.
        targets: impl IntoIterator<Item = Target> => |r, v| r.targets = v.into_iter().collect();
        /// Output serialisations.
        formats: impl IntoIterator<Item = Format> => |r, v| r.formats = v.into_iter().collect();
        /// Where the artifacts go.
        distribution: Distribution => |r, v| r.distribution = Some(v);
        /// Days until the run expires.
        retention_days: u32 => |r, v| r.retention_days = Some(v);
        /// Payload encryption.
        encryption: Encryption => |r, v| r.encryption = Some(v);
        /// Queue priority.
        priority: Priority => |r, v| r.priority = v;
        /// The time written into every output.
        created_at: Timestamp => |r, v| r.created_at = Some(v);
        /// Bundle compression.
        compression: Compression => |r, v| r.compression = Some(v);
        /// Compression level.
        compression_level: u32 => |r, v| r.compression_level = Some(v);
        /// Run timeout in seconds.
        timeout_seconds: u64 => |r, v| r.timeout_seconds = Some(v);
        /// Fail on evidence a profile would skip with a warning.
        strict: bool => |r, v| r.strict = v;
        /// Which evidence to export.
        selectors: Selectors => |r, v| r.selectors = v;
    }

    /// Validate against these limits instead of the defaults.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The request.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming the field.
    pub fn build(self) -> Result<RunRequest> {
        let request = self.request?;
        request.validate(&self.limits)?;
        Ok(request)
    }
}

impl Distribution {
    /// A distribution block of `kind` to `reference`, unsigned.
    pub fn new(kind: DistributionType, reference: Option<String>) -> Self {
        Self { kind, reference, signing: None }
    }
    /// With signing enabled under `key_ref`.
    pub fn signed(mut self, key_ref: impl Into<String>) -> Self {
        self.signing = Some(Signing { enabled: true, key_ref: Some(key_ref.into()) });
        self
    }
}

impl Encryption {
    /// Encryption enabled with `kms_key`.
    pub fn new(kms_key: impl Into<String>) -> Self {
        Self { enabled: true, kms_key: Some(kms_key.into()) }
    }
}

fn first_duplicate<T: Ord + Copy>(items: &[T]) -> Option<usize> {
    let mut seen = std::collections::BTreeSet::new();
    items.iter().position(|t| !seen.insert(*t))
}

/// Progress of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// 0..=100.
    pub percent: u8,
    /// Items done.
    pub items_completed: u64,
    /// Items known in all (0 when unknown).
    pub items_total: u64,
}

impl Progress {
    /// Progress from counts; percent is clamped to 0..=100.
    pub fn of(completed: u64, total: u64) -> Self {
        let percent = (completed.min(total) * 100).checked_div(total).unwrap_or(0) as u8;
        Self { percent, items_completed: completed, items_total: total }
    }
}

/// What kind of thing an artifact is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactType {
    /// An archive of several files.
    Bundle,
    /// A manifest describing other artifacts.
    Manifest,
    /// A database file (trivy.db, ...).
    Database,
    /// Loose data (one records file).
    Data,
    /// A signature or signed envelope.
    Signature,
    /// A provenance attestation.
    Provenance,
    /// Metadata (metadata.json, checksums).
    Metadata,
}

/// One output of a run, as the run record shows it (seed: `outputs[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Output {
    /// Kind of artifact.
    #[serde(rename = "type")]
    pub kind: ArtifactType,
    /// Serialisation (`tar+zstd`, `json`, ...).
    pub format: String,
    /// Where to fetch it (sink URL).
    pub url: String,
    /// Digest of the bytes at `url`.
    pub sha256: Sha256Digest,
    /// When it is deleted by retention.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Path within the run's output.
    pub path: ArtifactPath,
    /// Size in bytes.
    pub size: u64,
    /// IANA media type.
    pub media_type: String,
}

/// One error of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// `ERR_EXPORT_*`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl From<&ExportError> for RunError {
    fn from(e: &ExportError) -> Self {
        Self { code: e.code().to_owned(), message: e.report() }
    }
}

/// A run record (seed: `GET /export-center/runs/{runId}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// Unique id.
    pub run_id: RunId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Optional project within the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Profile that ran.
    pub profile_id: ProfileId,
    /// Lifecycle state.
    pub status: RunStatus,
    /// When it was accepted.
    pub submitted_at: Timestamp,
    /// When a worker started it.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// When retention expires it.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Progress.
    pub progress: Progress,
    /// Published artifacts (only complete, verified ones).
    pub outputs: Vec<Output>,
    /// Errors (empty unless failed).
    pub errors: Vec<RunError>,
    /// Attempts made (retries of transient failures count).
    #[serde(default)]
    pub attempts: u32,
    /// What the profile skipped or worked around, counted (the run still succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<RunError>,
    /// The saved profile the run named, and the revision it used (`profileId` is then the
    /// built-in profile that ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_profile: Option<SavedProfileRef>,
    /// Executed only by the process that submitted it (`exportctl run`, with its own evidence
    /// and output): other engines on the store never claim it, and when its process stops
    /// renewing its lease it fails instead of being requeued ([`crate::store::LOCAL_RANK`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// The claiming worker's hold on the run: set in what [`crate::store::RunStore::claim_next`]
    /// and [`crate::store::RunStore::reclaim_expired`] return, carried by the worker's writes
    /// for fencing. Not part of the record: never serialized, absent from `get` and `list`.
    #[serde(skip)]
    pub lease: Option<Lease>,
}

/// A worker's hold on a `running` run. Only the holder writes to the run (the stores refuse a
/// save, finish or event that carries another lease: fencing), and only until `leaseUntil`
/// unless it renews; after that any worker may take the run over
/// ([`crate::store::RunStore::reclaim_expired`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// New for every claim (a UUID v7).
    pub lease_id: String,
    /// When it lapses unless renewed.
    pub lease_until: Timestamp,
}

impl Lease {
    /// A fresh lease that lapses at `until`.
    pub fn new(until: Timestamp) -> Self {
        Self { lease_id: crate::id::uuid_v7(), lease_until: until }
    }
}

/// A saved profile revision a run used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedProfileRef {
    /// `export-profile::<tenant>::<name>`.
    pub id: String,
    /// The revision.
    pub revision: u32,
}

impl Run {
    /// A fresh `queued` record: no times but `submittedAt`, no outputs, errors or attempts.
    pub fn queued(
        run_id: RunId,
        tenant: TenantId,
        project: Option<String>,
        profile_id: ProfileId,
        submitted_at: Timestamp,
    ) -> Self {
        Self {
            run_id,
            tenant,
            project,
            profile_id,
            status: RunStatus::Queued,
            submitted_at,
            started_at: None,
            finished_at: None,
            expires_at: None,
            progress: Progress::default(),
            outputs: Vec::new(),
            errors: Vec::new(),
            attempts: 0,
            warnings: Vec::new(),
            saved_profile: None,
            local: false,
            lease: None,
        }
    }
}

/// An event of a run (seed: SSE `started`, `progress`, `artifact_ready`, `completed`, `failed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunEvent {
    /// A worker started the run.
    #[serde(rename_all = "camelCase")]
    Started {
        /// The run.
        run_id: RunId,
        /// Its profile.
        profile_id: ProfileId,
    },
    /// Progress changed.
    #[serde(rename_all = "camelCase")]
    Progress {
        /// The run.
        run_id: RunId,
        /// New progress.
        #[serde(flatten)]
        progress: Progress,
    },
    /// An artifact is complete, durable and its digest known.
    #[serde(rename_all = "camelCase")]
    ArtifactReady {
        /// The run.
        run_id: RunId,
        /// Where it is.
        url: String,
        /// Its digest.
        sha256: Sha256Digest,
        /// Its kind.
        #[serde(rename = "type")]
        kind: ArtifactType,
        /// Path within the output.
        path: ArtifactPath,
        /// Size in bytes.
        size: u64,
    },
    /// The run succeeded.
    #[serde(rename_all = "camelCase")]
    Completed {
        /// The run.
        run_id: RunId,
        /// Final status (`succeeded`).
        status: RunStatus,
    },
    /// The run failed.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// The run.
        run_id: RunId,
        /// `ERR_EXPORT_*`.
        code: String,
        /// Message.
        message: String,
    },
}

impl RunEvent {
    /// The run the event belongs to.
    pub fn run_id(&self) -> &RunId {
        match self {
            RunEvent::Started { run_id, .. }
            | RunEvent::Progress { run_id, .. }
            | RunEvent::ArtifactReady { run_id, .. }
            | RunEvent::Completed { run_id, .. }
            | RunEvent::Failed { run_id, .. } => run_id,
        }
    }
    /// True for `completed` and `failed`, the last event of a run.
    pub fn is_terminal(&self) -> bool {
        matches!(self, RunEvent::Completed { .. } | RunEvent::Failed { .. })
    }
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            RunEvent::Started { .. } => "started",
            RunEvent::Progress { .. } => "progress",
            RunEvent::ArtifactReady { .. } => "artifact_ready",
            RunEvent::Completed { .. } => "completed",
            RunEvent::Failed { .. } => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{
      "profileId": "export-profile::tenant-default::daily-vex",
      "targets": ["vex", "advisory", "policy"],
      "formats": ["json", "ndjson"],
      "distribution": {
        "type": "oci",
        "ref": "registry.local/exports/daily",
        "signing": { "enabled": true, "keyRef": "k8s://secrets/eks/oci-signer" }
      },
      "retentionDays": 30,
      "encryption": { "enabled": true, "kmsKey": "kms://tenant-default/key1" },
      "priority": "normal"
    }"#;

    fn parse(s: &str) -> Result<RunRequest> {
        RunRequest::from_json(s.as_bytes(), &Limits::default())
    }

    fn field_of(e: ExportError) -> String {
        match e {
            ExportError::RequestInvalid { field, .. } => field,
            other => panic!("expected RequestInvalid, got {other:?}"),
        }
    }

    #[test]
    fn seed_request_round_trips() {
        let req = parse(SEED).unwrap();
        assert_eq!(req.targets, vec![Target::Vex, Target::Advisory, Target::Policy]);
        assert_eq!(req.distribution.as_ref().unwrap().kind, DistributionType::Oci);
        assert!(req.signing_enabled());
        let back = serde_json::to_value(&req).unwrap();
        let orig: serde_json::Value = serde_json::from_str(SEED).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"profileId":"p","targets":["vex","sbom"]}"#, "targets[1]"),
            (r#"{"profileId":"p","formats":["xml"]}"#, "formats[0]"),
            (r#"{"profileId":"p","priority":"urgent"}"#, "priority"),
            (r#"{"profileId":"p","distribution":{"type":"ftp"}}"#, "distribution.type"),
            (r#"{"profileId":"p","retentionDays":0}"#, "retentionDays"),
            (r#"{"profileId":"p","retentionDays":99999}"#, "retentionDays"),
            (r#"{"profileId":"p","retentionDays":-1}"#, "retentionDays"),
            (r#"{"profileId":"p","bogus":1}"#, "bogus"),
            (r#"{"profileId":"p","distribution":{"type":"oci","extra":1}}"#, "distribution.extra"),
            (r#"{"profileId":"p","distribution":{"type":"oci"}}"#, "distribution.ref"),
            (r#"{"profileId":"p","targets":["vex","vex"]}"#, "targets[1]"),
            (r#"{"profileId":"p","encryption":{"enabled":true}}"#, "encryption.kmsKey"),
            (r#"{"profileId":"p","createdAt":"yesterday"}"#, "createdAt"),
            (r#"{"profileId":""}"#, "profileId"),
            (r#"{"profileId":"a b"}"#, "profileId"),
        ];
        for (body, field) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.code(), "ERR_EXPORT_REQUEST_INVALID", "{body}");
            assert_eq!(field_of(err), field, "{body}");
        }
        // Unknown top-level field: the message names it.
        let msg = parse(r#"{"profileId":"p","bogus":1}"#).unwrap_err().to_string();
        assert!(msg.contains("bogus"), "{msg}");
    }

    /// Compile-time guard: adding a field to `RunRequest` breaks this destructure on purpose.
    /// Give the new field its used-or-refused check in `tests/request_fields.rs` (and its
    /// `FIELDS` list) first, then add it here.
    #[test]
    fn every_field_has_a_used_or_refused_check() {
        let RunRequest {
            profile_id: _,
            targets: _,
            formats: _,
            distribution: _,
            retention_days: _,
            encryption: _,
            priority: _,
            created_at: _,
            compression: _,
            compression_level: _,
            timeout_seconds: _,
            strict: _,
            selectors: _,
        } = RunRequest::new(ProfileId::from_static("p"));
    }

    #[test]
    fn builder_reports_bad_ids_and_rules() {
        assert!(RunRequest::builder("json:raw").retention_days(7).build().is_ok());
        assert_eq!(field_of(RunRequest::builder("a b").build().unwrap_err()), "profileId");
        assert_eq!(field_of(RunRequest::builder("p").retention_days(0).build().unwrap_err()), "retentionDays");
    }

    #[test]
    fn too_many_targets() {
        let targets: Vec<&str> = std::iter::repeat_n("\"vex\"", 51).collect();
        let body = format!(r#"{{"profileId":"p","targets":[{}]}}"#, targets.join(","));
        let err = parse(&body).unwrap_err();
        assert_eq!(field_of(err), "targets");
    }

    #[test]
    fn body_over_limit() {
        let pad = " ".repeat(256 * 1024);
        let body = format!(r#"{{"profileId":"p"}}{pad}"#);
        let err = parse(&body).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_TOO_LARGE");
        // Exactly at the limit is fine.
        let head = r#"{"profileId":"p"}"#;
        let body = format!("{head}{}", " ".repeat(256 * 1024 - head.len()));
        assert_eq!(body.len(), 256 * 1024);
        parse(&body).unwrap();
    }

    #[test]
    fn malformed_json_is_invalid_not_panic() {
        for body in ["", "{", "[]", "null", "{\"profileId\": 3}", "\u{0}"] {
            assert_eq!(parse(body).unwrap_err().code(), "ERR_EXPORT_REQUEST_INVALID", "{body:?}");
        }
    }

    #[test]
    fn timestamps_print_utc_z() {
        let t = Timestamp::parse("2025-01-01T02:00:00+02:00").unwrap();
        assert_eq!(t.to_string(), "2025-01-01T00:00:00Z");
        assert_eq!(Timestamp::from_unix(0).unwrap().to_string(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn time_arithmetic_stops_at_the_year_9999_without_panicking() {
        let late = Timestamp::parse("9999-12-01T00:00:00Z").unwrap();
        assert_eq!(late.checked_plus_days(30).unwrap().to_string(), "9999-12-31T00:00:00Z");
        assert_eq!(late.checked_plus_days(31), None);
        assert_eq!(late.plus_days(u32::MAX), Timestamp::MAX);
        assert_eq!(late.plus(std::time::Duration::MAX), Timestamp::MAX);
        assert_eq!(late.plus(std::time::Duration::from_secs(86_400 * 365)), Timestamp::MAX);
        let t = Timestamp::parse("2025-01-01T00:00:00Z").unwrap();
        assert_eq!(t.plus(std::time::Duration::from_millis(1500)).to_string(), "2025-01-01T00:00:01.5Z");
        assert_eq!(t.plus_days(1).to_string(), "2025-01-02T00:00:00Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999999Z");
        let err = Timestamp::parse("9999-12-31T23:59:59-01:00").unwrap_err();
        assert!(err.contains("after 9999-12-31"), "{err}");
        assert_eq!(Timestamp::parse("9999-12-31T23:59:59+01:00").unwrap().to_string(), "9999-12-31T22:59:59Z");
    }

    #[test]
    fn event_shapes() {
        let e = RunEvent::Progress { run_id: RunId::parse("r").unwrap(), progress: Progress::of(70, 200) };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"progress","runId":"r","percent":35,"itemsCompleted":70,"itemsTotal":200}"#
        );
        assert_eq!(e.name(), "progress");
    }
}
