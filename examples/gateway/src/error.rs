//! The gateway's error replies: every error body is
//! `{code, message, details[], traceId, timestamp}` with an `ERR_EXPORT_*` code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use exportcore::ExportError;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error reply.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// `ERR_EXPORT_*`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Where: for invalid requests, `{"field": "targets[2]"}`.
    pub details: Vec<serde_json::Value>,
    /// Correlates the reply with the server's logs (also the `X-Trace-Id` header).
    pub trace_id: String,
    /// RFC 3339, when the error was produced.
    pub timestamp: String,
}

/// An error reply in the making.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `ERR_EXPORT_*`.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Details.
    pub details: Vec<serde_json::Value>,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// `WWW-Authenticate`, for 401.
    pub challenge: Option<&'static str>,
}

impl ApiError {
    /// A reply with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), details: Vec::new(), retry_after: None, challenge: None }
    }

    /// 401 `ERR_EXPORT_UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>, challenge: &'static str) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "ERR_EXPORT_UNAUTHENTICATED", message);
        e.challenge = Some(challenge);
        e
    }

    /// 403 `ERR_EXPORT_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "ERR_EXPORT_FORBIDDEN", message)
    }

    /// 404 `ERR_EXPORT_NOT_FOUND`: the same reply for "absent" and "another tenant's".
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ERR_EXPORT_NOT_FOUND", format!("not found: {}", what.into()))
    }

    /// 413 `ERR_EXPORT_TOO_LARGE`.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_EXPORT_TOO_LARGE",
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 400 `ERR_EXPORT_REQUEST_INVALID` naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ExportError::invalid(field, reason).into()
    }

    /// The reply, with `trace_id` and the current time.
    pub fn into_response_with(self, trace_id: &str) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            details: self.details,
            trace_id: trace_id.to_owned(),
            timestamp: now_rfc3339(),
        };
        let mut resp = (self.status, crate::json(&body)).into_response();
        let h = resp.headers_mut();
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(c) = self.challenge {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

pub(crate) fn now_rfc3339() -> String {
    exportcore::Timestamp::now().to_string()
}

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> Self {
        use ExportError as E;
        let status = match &e {
            E::RequestInvalid { .. } | E::PathUnsafe { .. } | E::EvidenceInvalid { .. } => StatusCode::BAD_REQUEST,
            E::ProfileNotFound { .. } | E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::Conflict { .. } | E::BaseMissing { .. } => StatusCode::CONFLICT,
            E::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::RateLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            E::NotSupported { .. } => StatusCode::NOT_IMPLEMENTED,
            E::VerificationFailed { .. } => StatusCode::FORBIDDEN,
            E::Io { .. } | E::StoreInvalid { .. } | E::Timeout { .. } | E::Interrupted { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let details = match &e {
            E::RequestInvalid { field, .. } => vec![serde_json::json!({ "field": field })],
            _ => Vec::new(),
        };
        let retry_after = match &e {
            E::RateLimit { retry_after_secs } => Some(*retry_after_secs),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => None,
        };
        // Internal and I/O failures keep their detail in the log, not in the reply.
        let message = match &e {
            E::Io { .. } | E::Internal { .. } | E::StoreInvalid { .. } => {
                tracing::error!(error = %e.report(), "request failed");
                "the export center could not complete the request; see its log".to_owned()
            }
            _ => e.to_string(),
        };
        Self { status, code: e.code(), message, details, retry_after, challenge: None }
    }
}

/// What a tenant sees of a run's error: the message, unless it is one of the failures whose
/// detail is the server's own (paths, internal state), which stays in the run record and the
/// log, as the API's own replies do.
pub(crate) fn run_error_message(code: &str, message: &str) -> String {
    match code {
        "ERR_EXPORT_IO" | "ERR_EXPORT_INTERNAL" | "ERR_EXPORT_STORE_INVALID" => {
            "the export center could not complete the run; see its log".to_owned()
        }
        _ => message.to_owned(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Handlers answer through `crate::Reply`, which sets the real trace id; this is the
        // fallback for extractor rejections.
        self.into_response_with(&crate::trace::current())
    }
}

#[cfg(test)]
mod tests {
    /// A run's server-side failure shows its code to the tenant, not the server's paths.
    #[test]
    fn run_errors_keep_server_detail_out_of_replies() {
        let io = super::run_error_message("ERR_EXPORT_IO", "io error at /srv/exports/data/runs/x: disk full");
        assert!(!io.contains("/srv"), "{io}");
        let bad = super::run_error_message("ERR_EXPORT_EVIDENCE_INVALID", "advisories/a.json line 3: no id");
        assert_eq!(bad, "advisories/a.json line 3: no id", "the tenant's own input problems are shown");
    }
}
