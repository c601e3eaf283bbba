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

/// A statement as [`statement`] builds it: serialise it with
/// [`crate::canonical::to_vec_direct`] (a run of many files has hundreds of thousands of
/// subjects; a `serde_json::Value` of them would take ten times their bytes).
#[derive(Clone, Debug, Serialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    kind: &'static str,
    subject: Vec<Named>,
    #[serde(rename = "predicateType")]
    predicate_type: &'static str,
    predicate: Predicate,
}

#[derive(Clone, Debug, Serialize)]
struct Named {
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    name: String,
    digest: Digest,
}

#[derive(Clone, Debug, Serialize)]
struct Digest {
    sha256: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Predicate {
    build_definition: BuildDefinition,
    run_details: Value,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildDefinition {
    build_type: &'static str,
    external_parameters: Value,
    internal_parameters: Value,
    resolved_dependencies: Vec<Named>,
}

/// Builds the statement: subjects sorted by name, dependencies by name (one per name).
pub fn statement(input: &ProvenanceInput<'_>) -> Statement {
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
    Statement {
        kind: STATEMENT_TYPE,
        subject: subjects
            .into_iter()
            .map(|s| Named { uri: None, name: s.name, digest: Digest { sha256: s.sha256.to_hex() } })
            .collect(),
        predicate_type: SLSA_PROVENANCE_V1,
        predicate: Predicate {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE,
                external_parameters: serde_json::to_value(input.request).unwrap_or(Value::Null),
                internal_parameters: internal,
                resolved_dependencies: deps
                    .iter()
                    .map(|(name, d)| Named {
                        uri: Some(format!("evidence:{name}")),
                        name: (*name).to_owned(),
                        digest: Digest { sha256: d.to_hex() },
                    })
                    .collect(),
            },
            run_details: json!({
                "builder": {"id": builder_id()},
                "metadata": {
                    "invocationId": input.run_id,
                    "startedOn": input.time.to_string(),
                    "finishedOn": input.time.to_string(),
                },
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_is_in_toto_v1_with_slsa_provenance_in_canonical_form() {
        let request = RunRequest::new(crate::ProfileId::from_static("json:raw"));
        let digest = Sha256Digest::of(b"x");
        let input = ProvenanceInput {
            run_id: "run-1",
            request: &request,
            subjects: vec![
                Resource { name: "b.json".into(), sha256: digest },
                Resource { name: "a.json".into(), sha256: digest },
            ],
            dependencies: vec![
                Resource { name: "ev/2.json".into(), sha256: digest },
                Resource { name: "ev/1.json".into(), sha256: digest },
                Resource { name: "ev/1.json".into(), sha256: digest },
            ],
            time: Timestamp::parse("2025-01-02T03:04:05Z").unwrap(),
            tenant: "t",
            selection: None,
        };
        let hex = digest.to_hex();
        let expected = json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "a.json", "digest": {"sha256": hex}}, {"name": "b.json", "digest": {"sha256": hex}}],
            "predicateType": SLSA_PROVENANCE_V1,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": serde_json::to_value(&request).unwrap(),
                    "internalParameters": {"tenant": "t", "profileId": "json:raw"},
                    "resolvedDependencies": [
                        {"uri": "evidence:ev/1.json", "name": "ev/1.json", "digest": {"sha256": hex}},
                        {"uri": "evidence:ev/2.json", "name": "ev/2.json", "digest": {"sha256": hex}},
                    ],
                },
                "runDetails": {
                    "builder": {"id": builder_id()},
                    "metadata": {
                        "invocationId": "run-1",
                        "startedOn": "2025-01-02T03:04:05Z",
                        "finishedOn": "2025-01-02T03:04:05Z",
                    },
                },
            },
        });
        let bytes = crate::canonical::to_vec_direct(&statement(&input)).unwrap();
        assert_eq!(bytes, crate::canonical::to_vec(&expected).unwrap());
    }
}
