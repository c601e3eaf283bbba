//! The one public error type and its stable `ERR_EXPORT_*` codes.

use std::fmt;
use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// Where in an evidence input something went wrong: a path relative to the evidence root and,
/// for line-oriented or parsed inputs, a 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Path of the input, relative to the evidence root (`/`-separated).
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
}

impl Location {
    /// A location without a line.
    pub fn file(path: impl Into<String>) -> Self {
        Self { path: path.into(), line: None }
    }
    /// A location with a line.
    pub fn line(path: impl Into<String>, line: u64) -> Self {
        Self { path: path.into(), line: Some(line) }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// Every failure the core and its adapters report. Match on the variant to act, use
/// [`ExportError::code`] for the stable wire code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The request named a profile that is not registered.
    #[error("profile not found: {profile}")]
    ProfileNotFound {
        /// The id that was asked for.
        profile: String,
    },
    /// The request is malformed or breaks a rule; `field` is a JSON path such as `targets[2]`.
    #[error("invalid request: {field}: {reason}")]
    RequestInvalid {
        /// JSON path of the offending field (`""` for the whole body).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something exceeds a configured limit.
    #[error("{what} is too large: {actual} > limit {limit}")]
    TooLarge {
        /// What was measured (`request body`, `targets`, ...).
        what: String,
        /// The limit in force.
        limit: u64,
        /// The measured value.
        actual: u64,
    },
    /// The request collides with the state of a stored resource: an `Idempotency-Key` reused
    /// with another request, a saved-profile revision written twice at once.
    #[error("conflict: {what}: {reason}")]
    Conflict {
        /// What collided (`Idempotency-Key`, `profile acme/daily revision 3`).
        what: String,
        /// Why.
        reason: String,
    },
    /// Too many runs queued; try again after the given number of seconds.
    #[error("rate limited: retry after {retry_after_secs}s")]
    RateLimit {
        /// Seconds the caller should wait.
        retry_after_secs: u64,
    },
    /// Publishing an artifact to its destination failed.
    #[error("distribution to {target} failed")]
    DistributionFailed {
        /// The sink or destination that failed.
        target: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An evidence input is malformed or breaks its schema.
    #[error("invalid evidence at {location}: {reason}")]
    EvidenceInvalid {
        /// File (and line) of the bad input.
        location: Location,
        /// What is wrong.
        reason: String,
    },
    /// The evidence selected by the request holds no records.
    #[error("no evidence found for {what} under {root}")]
    EvidenceEmpty {
        /// The evidence root.
        root: String,
        /// What was looked for (targets or kinds).
        what: String,
    },
    /// A path escapes its root (`..`, absolute, symlink out of the tree) or is otherwise unsafe.
    #[error("unsafe path {path}: {reason}")]
    PathUnsafe {
        /// The offending path as given.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// An artifact was not found in a sink.
    #[error("not found: {path}")]
    NotFound {
        /// The artifact path.
        path: String,
    },
    /// A bundle or output directory failed verification.
    #[error("verification failed: {path}: {reason}")]
    VerificationFailed {
        /// The file that failed.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A bundle is older than the staleness policy allows, or dated in the future.
    #[error("stale: {path}: {reason}")]
    Stale {
        /// The manifest whose time failed.
        path: String,
        /// Why.
        reason: String,
    },
    /// The base a delta is built on or applied to is missing, is not what the delta needs
    /// (another mirror, another state), or is corrupted.
    #[error("base {path}: {reason}")]
    BaseMissing {
        /// The base, or the file of it that failed.
        path: String,
        /// Why.
        reason: String,
    },
    /// The run was cancelled.
    #[error("run cancelled")]
    Cancelled,
    /// The run exceeded its timeout.
    #[error("run timed out after {after_secs}s")]
    Timeout {
        /// The timeout that elapsed.
        after_secs: u64,
    },
    /// The process running the run stopped before it finished (found on restart).
    #[error("run interrupted: {reason}")]
    Interrupted {
        /// What was found.
        reason: String,
    },
    /// A run store is unusable: corrupt, foreign, or from a newer schema. Nothing was changed.
    #[error("run store {path}: {reason}")]
    StoreInvalid {
        /// The store (file path or name).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A feature exists in the contract but is not available in this build.
    #[error("not supported: {feature}")]
    NotSupported {
        /// What was asked for.
        feature: String,
    },
    /// An I/O failure on a local path.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// A failure inside an implementation (sink, evidence source, profile) that fits no other
    /// variant. `implementer` names it; `source` keeps the underlying error when there is one.
    #[error("{implementer} failed{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Internal {
        /// Which implementation failed.
        implementer: &'static str,
        /// What happened (context; the cause's own text is in `source`).
        message: String,
        /// The underlying failure, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ExportError {
    /// The stable `ERR_EXPORT_*` code of this error. Codes never change once published.
    pub fn code(&self) -> &'static str {
        match self {
            ExportError::ProfileNotFound { .. } => "ERR_EXPORT_PROFILE_NOT_FOUND",
            ExportError::RequestInvalid { .. } => "ERR_EXPORT_REQUEST_INVALID",
            ExportError::TooLarge { .. } => "ERR_EXPORT_TOO_LARGE",
            ExportError::Conflict { .. } => "ERR_EXPORT_CONFLICT",
            ExportError::RateLimit { .. } => "ERR_EXPORT_RATE_LIMIT",
            ExportError::DistributionFailed { .. } => "ERR_EXPORT_DISTRIBUTION_FAILED",
            ExportError::EvidenceInvalid { .. } => "ERR_EXPORT_EVIDENCE_INVALID",
            ExportError::EvidenceEmpty { .. } => "ERR_EXPORT_EVIDENCE_EMPTY",
            ExportError::PathUnsafe { .. } => "ERR_EXPORT_PATH_UNSAFE",
            ExportError::NotFound { .. } => "ERR_EXPORT_NOT_FOUND",
            ExportError::VerificationFailed { .. } => "ERR_EXPORT_VERIFY_FAILED",
            ExportError::Stale { .. } => "ERR_EXPORT_STALE",
            ExportError::BaseMissing { .. } => "ERR_EXPORT_BASE_MISSING",
            ExportError::Cancelled => "ERR_EXPORT_CANCELLED",
            ExportError::Timeout { .. } => "ERR_EXPORT_TIMEOUT",
            ExportError::Interrupted { .. } => "ERR_EXPORT_INTERRUPTED",
            ExportError::StoreInvalid { .. } => "ERR_EXPORT_STORE_INVALID",
            ExportError::NotSupported { .. } => "ERR_EXPORT_NOT_SUPPORTED",
            ExportError::Io { .. } => "ERR_EXPORT_IO",
            ExportError::Internal { .. } => "ERR_EXPORT_INTERNAL",
        }
    }

    /// True for failures worth retrying with backoff (distribution and rate limits).
    pub fn is_transient(&self) -> bool {
        matches!(self, ExportError::DistributionFailed { .. } | ExportError::RateLimit { .. })
    }

    /// Shorthand for [`ExportError::RequestInvalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ExportError::RequestInvalid { field: field.into(), reason: reason.into() }
    }

    /// Shorthand for [`ExportError::EvidenceInvalid`].
    pub fn evidence(location: Location, reason: impl Into<String>) -> Self {
        ExportError::EvidenceInvalid { location, reason: reason.into() }
    }

    /// [`ExportError::Internal`] without an underlying error.
    pub fn internal(implementer: &'static str, message: impl Into<String>) -> Self {
        ExportError::Internal { implementer, message: message.into(), source: None }
    }

    /// [`ExportError::Internal`] caused by `source` (kept in the chain, see [`ExportError::report`]).
    pub fn internal_caused(
        implementer: &'static str,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ExportError::Internal { implementer, message: message.into(), source: Some(source.into()) }
    }

    /// [`ExportError::DistributionFailed`]: what a [`crate::Sink`] returns when a body stream
    /// fails or its destination refuses the bytes (the engine retries these).
    pub fn distribution_failed(
        sink: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ExportError::DistributionFailed { target: sink.into(), source: source.into() }
    }

    /// Shorthand for [`ExportError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExportError::Io { path: path.into(), source }
    }

    /// The message with its whole `source()` chain, `: `-separated, for one-line reports.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

/// `text` with the user information of every URL in it (`scheme://user:password@host`)
/// replaced by `***@` (an error message of a client library may quote the URL it called).
///
/// ```
/// let e = "PUT http://ak:sk@127.0.0.1:9000/b/k failed; see s3://x:y@b/p";
/// assert_eq!(exportcore::error::redact_urls(e), "PUT http://***@127.0.0.1:9000/b/k failed; see s3://***@b/p");
/// ```
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| "/?#\"' <>".contains(c) || c.is_whitespace()).unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Extension to attach a path to `std::io::Result`s: `File::open(p).at(p)?` gives an
/// [`ExportError::Io`] naming `p`, with the I/O error as its source.
pub trait IoContext<T> {
    /// Maps the error to [`ExportError::Io`] at `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| ExportError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let cases: Vec<(ExportError, &str)> = vec![
            (ExportError::ProfileNotFound { profile: "x".into() }, "ERR_EXPORT_PROFILE_NOT_FOUND"),
            (ExportError::invalid("targets", "bad"), "ERR_EXPORT_REQUEST_INVALID"),
            (ExportError::TooLarge { what: "body".into(), limit: 1, actual: 2 }, "ERR_EXPORT_TOO_LARGE"),
            (ExportError::RateLimit { retry_after_secs: 3 }, "ERR_EXPORT_RATE_LIMIT"),
            (ExportError::Conflict { what: "k".into(), reason: "r".into() }, "ERR_EXPORT_CONFLICT"),
            (
                ExportError::DistributionFailed { target: "fs".into(), source: "x".into() },
                "ERR_EXPORT_DISTRIBUTION_FAILED",
            ),
            (ExportError::evidence(Location::line("a.json", 3), "bad"), "ERR_EXPORT_EVIDENCE_INVALID"),
            (ExportError::EvidenceEmpty { root: "d".into(), what: "advisory".into() }, "ERR_EXPORT_EVIDENCE_EMPTY"),
            (ExportError::PathUnsafe { path: "../x".into(), reason: "r".into() }, "ERR_EXPORT_PATH_UNSAFE"),
            (ExportError::NotFound { path: "p".into() }, "ERR_EXPORT_NOT_FOUND"),
            (ExportError::VerificationFailed { path: "p".into(), reason: "r".into() }, "ERR_EXPORT_VERIFY_FAILED"),
            (ExportError::Stale { path: "p".into(), reason: "r".into() }, "ERR_EXPORT_STALE"),
            (ExportError::BaseMissing { path: "b".into(), reason: "r".into() }, "ERR_EXPORT_BASE_MISSING"),
            (ExportError::Cancelled, "ERR_EXPORT_CANCELLED"),
            (ExportError::Timeout { after_secs: 1 }, "ERR_EXPORT_TIMEOUT"),
            (ExportError::Interrupted { reason: "r".into() }, "ERR_EXPORT_INTERRUPTED"),
            (ExportError::StoreInvalid { path: "p".into(), reason: "r".into() }, "ERR_EXPORT_STORE_INVALID"),
            (ExportError::NotSupported { feature: "f".into() }, "ERR_EXPORT_NOT_SUPPORTED"),
            (ExportError::io("/x", std::io::Error::other("e")), "ERR_EXPORT_IO"),
            (ExportError::internal("t", "m"), "ERR_EXPORT_INTERNAL"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn location_display_names_file_and_line() {
        let e = ExportError::evidence(Location::line("advisories/a.ndjson", 12), "expected value");
        assert_eq!(e.to_string(), "invalid evidence at advisories/a.ndjson:12: expected value");
    }

    #[test]
    fn report_includes_source_chain_once() {
        let e = ExportError::io("/tmp/x", std::io::Error::other("disk full"));
        assert_eq!(e.report(), "I/O error on /tmp/x: disk full");
        let e = ExportError::internal_caused("zstd", "compressing x", std::io::Error::other("boom"));
        assert_eq!(e.report(), "zstd failed: compressing x: boom");
        assert!(std::error::Error::source(&e).is_some());
    }
}
