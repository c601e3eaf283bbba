//! `trivy-export.json`: what a trivy:db or trivy:java-db export contains (shared by both
//! builders, so neither profile module depends on the other).

use crate::mapping::Skipped;
use serde::Serialize;

/// What a trivy:db export contains, written as `trivy-export.json`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DbReport {
    /// Schema of the database.
    pub schema_version: u32,
    /// OSV advisories read.
    pub advisories_read: u64,
    /// Advisory entries written (bucket, package, vulnerability).
    pub advisory_entries: u64,
    /// Entries of the `vulnerability` bucket.
    pub vulnerabilities: u64,
    /// Top-level advisory buckets.
    pub buckets: Vec<String>,
    /// What was left out, counted.
    pub skipped: Skipped,
    /// Maven index entries written (java-db).
    pub maven_entries: u64,
    /// Maven index entries dropped because another entry had the same SHA-1 (java-db).
    pub duplicate_sha1: u64,
}
