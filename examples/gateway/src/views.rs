//! The gateway's wire types: what its routes answer (and, for the OpenAPI document, accept).
//! Each is built from the core's records; URLs are made here (signed, expiring).

#![allow(missing_docs)] // the fields are documented in the OpenAPI document's descriptions

use serde::Serialize;
use utoipa::ToSchema;

/// `202 Accepted` reply of `POST /runs`.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub run_id: String,
    /// `queued|running|succeeded|failed|expired`.
    pub status: String,
    pub estimate_seconds: u64,
    /// Seconds after which polling the status is worthwhile.
    pub retry_after: u64,
    pub links: Links,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Links {
    pub status: String,
    pub events: String,
}

/// A run (`GET /runs/{runId}`).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub run_id: String,
    pub status: String,
    /// What the run named: a built-in profile (`json:raw`) or a saved one.
    pub profile_id: String,
    /// The built-in profile that ran.
    pub kind: String,
    /// The saved profile's revision, when the run named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_revision: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub expires_at: Option<String>,
    pub progress: ProgressView,
    pub outputs: Vec<OutputView>,
    pub errors: Vec<ProblemView>,
    pub warnings: Vec<ProblemView>,
    pub attempts: u32,
    pub links: Links,
    /// The run's distributions (`GET /runs/{runId}` only): ids for `GET /distributions/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributions: Option<Vec<DistributionRef>>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DistributionRef {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressView {
    pub percent: u8,
    pub items_completed: u64,
    pub items_total: u64,
}

/// One output, with a signed download URL.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputView {
    #[serde(rename = "type")]
    pub kind: String,
    pub format: String,
    /// Signed, expiring download URL (relative to the server).
    pub url: String,
    /// Lower-case hex SHA-256 of the bytes at `url`.
    pub sha256: String,
    /// When `url` stops working.
    pub expires_at: Option<String>,
    pub path: String,
    pub size: u64,
    pub media_type: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProblemView {
    pub code: String,
    pub message: String,
}

/// A page of runs (`GET /runs`).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPage {
    pub runs: Vec<RunView>,
    pub next_cursor: Option<String>,
    /// Ids of runs of this page whose stored record could not be read (the server logs why;
    /// the store sets them aside as failed). Absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// A built-in profile.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuiltinView {
    /// `kind:variant`.
    pub id: String,
    pub kind: String,
    pub variant: String,
    pub description: String,
}

/// A saved profile revision.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavedView {
    /// `export-profile::<tenant>::<name>`.
    pub id: String,
    pub revision: u32,
    pub created_at: String,
    pub name: String,
    pub kind: String,
    pub variant: String,
    pub include: Vec<String>,
    pub formats: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub distribution: Option<serde_json::Value>,
    pub retention_days: Option<u32>,
    #[schema(value_type = Object)]
    pub selectors: serde_json::Value,
    pub description: Option<String>,
}

/// `GET /profiles`.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileList {
    pub builtin: Vec<BuiltinView>,
    pub saved: Vec<SavedView>,
}

/// `POST`/`PUT /profiles` body (documentation; parsed as the core's `ProfileSpec`).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSpecDoc {
    pub name: String,
    pub kind: String,
    pub variant: String,
    #[schema(nullable = false)]
    pub include: Option<Vec<String>>,
    #[schema(nullable = false)]
    pub formats: Option<Vec<String>>,
    #[schema(value_type = Option<Object>, nullable = false)]
    pub distribution: Option<serde_json::Value>,
    #[schema(nullable = false)]
    pub retention_days: Option<u32>,
    #[schema(value_type = Option<Object>, nullable = false)]
    pub selectors: Option<serde_json::Value>,
    #[schema(nullable = false)]
    pub description: Option<String>,
}

/// `POST /runs` body (documentation; parsed as the core's `RunRequest`).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunRequestDoc {
    /// A built-in profile (`json:raw`) or a saved profile id.
    pub profile_id: String,
    #[schema(nullable = false)]
    pub targets: Option<Vec<String>>,
    #[schema(nullable = false)]
    pub formats: Option<Vec<String>>,
    #[schema(value_type = Option<Object>, nullable = false)]
    pub distribution: Option<serde_json::Value>,
    #[schema(nullable = false)]
    pub retention_days: Option<u32>,
    #[schema(value_type = Option<Object>, nullable = false)]
    pub encryption: Option<serde_json::Value>,
    #[schema(nullable = false)]
    pub priority: Option<String>,
    #[schema(nullable = false)]
    pub created_at: Option<String>,
    #[schema(nullable = false)]
    pub compression: Option<String>,
    #[schema(nullable = false)]
    pub compression_level: Option<u32>,
    #[schema(nullable = false)]
    pub timeout_seconds: Option<u64>,
    #[schema(nullable = false)]
    pub strict: Option<bool>,
    #[schema(value_type = Option<Object>, nullable = false)]
    pub selectors: Option<serde_json::Value>,
}

/// `GET /distributions/{id}`.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DistributionView {
    pub id: String,
    pub run_id: String,
    /// `http|oci|object|filesystem`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub status: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub urls: Vec<ReaderUrlView>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReaderUrlView {
    pub path: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub expires_at: Option<String>,
}

/// `GET /healthz` and `/readyz`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `draining` during shutdown.
    pub status: String,
}

/// The data of every SSE event (`event:` names the type; `id:` is the event id).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// `started|progress|artifact_ready|completed|failed`.
    pub event: String,
    pub run_id: String,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_completed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
