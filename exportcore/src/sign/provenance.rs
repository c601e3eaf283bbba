//! in-toto Statement v1 with an SLSA Provenance v1 predicate describing one export run.
//!
//! Subjects are every artifact of the run (name = path, `sha256`); `externalParameters` is the
//! request; `resolvedDependencies` are the evidence files the profile read, with digests;
//! `invocationId` is the run id; `startedOn`/`finishedOn` are the run's pinned time, so the
//! statement depends only on the inputs and the run id.

use crate::hashing::Sha256Digest;
use crate::model::{RunRequest, Timestamp};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// in-toto Statement v1 `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA Provenance v1 predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// Our build type.
pub const BUILD_TYPE: &str = "urn:exportcore:buildtype:export-run:v1";

/// A subject or dependency: a name and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// Name (artifact path, or evidence path).
    pub name: String,
    /// SHA-256.
    pub sha256: Sha256Digest,
}

/// What goes into a run's provenance.
#[derive(Clone, Debug)]
pub struct ProvenanceInput<'a> {
    /// The run id (`invocationId`).
    pub run_id: &'a str,
    /// The request (`externalParameters`).
    pub request: &'a RunRequest,
    /// Every artifact of the run.
    pub subjects: Vec<Resource>,
    /// Every evidence file read.
    pub dependencies: Vec<Resource>,
    /// The pinned run time (`startedOn` and `finishedOn`).
    pub time: Timestamp,
    /// The tenant (`internalParameters`).
    pub tenant: &'a str,
    /// What the selectors selected (`internalParameters.selection`), when the request had any.
    pub selection: Option<&'a crate::select::Selection>,
}

/// The builder id: this crate and its version.
pub fn builder_id() -> String {
    format!("urn:exportcore:builder:exportcore@{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the statement.
pub fn statement(input: &ProvenanceInput<'_>) -> Value {
    let mut subjects = input.subjects.clone();
    subjects.sort_by(|a, b| a.name.cmp(&b.name));
    let mut deps: BTreeMap<&str, &Sha256Digest> = BTreeMap::new();
    for d in &input.dependencies {
        deps.insert(&d.name, &d.sha256);
    }
    let mut internal = json!({"tenant": input.tenant, "profileId": input.request.profile_id});
    if let Some(selection) = input.selection {
        internal["selection"] = serde_json::to_value(selection).unwrap_or(Value::Null);
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects.iter().map(|s| json!({"name": s.name, "digest": {"sha256": s.sha256.to_hex()}})).collect::<Vec<_>>(),
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": serde_json::to_value(input.request).unwrap_or(Value::Null),
                "internalParameters": internal,
                "resolvedDependencies": deps.iter().map(|(name, d)| json!({
                    "uri": format!("evidence:{name}"),
                    "name": name,
                    "digest": {"sha256": d.to_hex()},
                })).collect::<Vec<_>>(),
            },
            "runDetails": {
                "builder": {"id": builder_id()},
                "metadata": {
                    "invocationId": input.run_id,
                    "startedOn": input.time.to_string(),
                    "finishedOn": input.time.to_string(),
                },
            },
        },
    })
}
