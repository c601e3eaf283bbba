//! Saved profiles: a tenant's named, revisioned run defaults (`export-profile::<tenant>::<name>`).
//!
//! A saved profile picks a built-in profile (`kind` + `variant`, e.g. `json` + `raw`) and fixes
//! the defaults of the runs that name it: `include` (targets), `formats`, `distribution`,
//! `retentionDays` and `selectors`. A run that names a saved profile may narrow these but never
//! widen them ([`SavedProfile::apply`]). Revisions never change: an update stores a new revision
//! and runs record the revision they used.
//!
//! ```
//! use exportcore::saved::{ProfileSpec, SavedProfile};
//! use exportcore::{RunRequest, Target, TenantId, Timestamp};
//! let tenant = TenantId::parse("acme")?;
//! let spec: ProfileSpec = serde_json::from_str(
//!     r#"{"name":"daily-vex","kind":"json","variant":"raw","include":["vex"],"retentionDays":7}"#,
//! )?;
//! let saved = SavedProfile::new(&tenant, spec, 1, Timestamp::parse("2025-01-01T00:00:00Z")?)?;
//! assert_eq!(saved.id, "export-profile::acme::daily-vex");
//! let run = RunRequest::builder(saved.id.as_str()).build()?;
//! let applied = saved.apply(run)?;
//! assert_eq!(applied.profile_id, "json:raw");
//! assert_eq!(applied.targets, vec![Target::Vex]);
//! assert_eq!(applied.retention_days, Some(7));
//! // A run may not widen what the profile includes.
//! let wider = RunRequest::builder(saved.id.as_str()).targets([Target::Advisory]).build()?;
//! assert_eq!(saved.apply(wider).unwrap_err().code(), "ERR_EXPORT_REQUEST_INVALID");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{ExportError, Result};
use crate::id::{ProfileId, TenantId};
use crate::model::{Distribution, Format, RunRequest, Target, Timestamp};
use crate::select::Selectors;
use serde::{Deserialize, Serialize};

/// The prefix of saved-profile ids.
pub const PREFIX: &str = "export-profile::";

/// What a client sends to create or update a saved profile (`POST`/`PUT /profiles`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ProfileSpec {
    /// Unique per tenant: 1 to 64 of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter or digit.
    pub name: String,
    /// Adapter family (`json`, `trivy`, `mirror`, `devportal`).
    pub kind: String,
    /// Variant within the kind (`raw`, `policy`, `db`, ...).
    pub variant: String,
    /// Default targets; a run may choose a subset. Empty: the built-in profile's default.
    #[serde(default)]
    pub include: Vec<Target>,
    /// Default formats.
    #[serde(default)]
    pub formats: Vec<Format>,
    /// Default distribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// Default retention in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// Default selectors; a run may narrow them, never widen them.
    #[serde(default, skip_serializing_if = "Selectors::is_empty")]
    pub selectors: Selectors,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One stored revision of a saved profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SavedProfile {
    /// `export-profile::<tenant>::<name>`.
    pub id: String,
    /// Owner.
    pub tenant: TenantId,
    /// Revision, from 1; a revision never changes.
    pub revision: u32,
    /// When this revision was stored.
    pub created_at: Timestamp,
    /// The definition.
    #[serde(flatten)]
    pub spec: ProfileSpec,
}

fn name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// The id of `name` for `tenant`.
pub fn profile_id(tenant: &TenantId, name: &str) -> String {
    format!("{PREFIX}{tenant}::{name}")
}

/// The name in `id` when it is a saved-profile id of `tenant`; `None` for another tenant's id or
/// anything else (so a foreign id reads as "not found").
pub fn name_in(tenant: &TenantId, id: &str) -> Option<String> {
    let rest = id.strip_prefix(PREFIX)?;
    let (t, name) = rest.split_once("::")?;
    (t == tenant.as_str() && name_ok(name)).then(|| name.to_owned())
}

/// True when `id` looks like a saved-profile id (of any tenant).
pub fn is_saved_id(id: &str) -> bool {
    id.starts_with(PREFIX)
}

impl ProfileSpec {
    /// The built-in profile this spec picks: `kind:variant`.
    pub fn profile_id(&self) -> Result<ProfileId> {
        ProfileId::parse(format!("{}:{}", self.kind, self.variant))
    }

    /// Checks the name and that description stays short; the rest is checked by the engine
    /// against its registered profiles and limits.
    pub fn validate_shape(&self) -> Result<()> {
        if !name_ok(&self.name) {
            return Err(ExportError::invalid(
                "name",
                format!("{:?}: 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", self.name),
            ));
        }
        for (field, v) in [("kind", &self.kind), ("variant", &self.variant)] {
            if v.is_empty() || v.len() > 64 || !v.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c)) {
                return Err(ExportError::invalid(field, format!("{v:?}: 1 to 64 of a-z, 0-9, '-', '_'")));
            }
        }
        if self.description.as_ref().is_some_and(|d| d.chars().count() > 512) {
            return Err(ExportError::invalid("description", "at most 512 characters"));
        }
        self.selectors.validate()?;
        Ok(())
    }

    /// The run request this spec stands for when a run names it and changes nothing.
    pub fn as_request(&self) -> Result<RunRequest> {
        let mut r = RunRequest::new(self.profile_id()?);
        r.targets = self.include.clone();
        r.formats = self.formats.clone();
        r.distribution = self.distribution.clone();
        r.retention_days = self.retention_days;
        r.selectors = self.selectors.clone();
        Ok(r)
    }
}

impl SavedProfile {
    /// Revision `revision` of `spec` for `tenant`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` for a malformed name, kind, variant or selectors.
    pub fn new(tenant: &TenantId, spec: ProfileSpec, revision: u32, created_at: Timestamp) -> Result<Self> {
        spec.validate_shape()?;
        Ok(Self { id: profile_id(tenant, &spec.name), tenant: tenant.clone(), revision, created_at, spec })
    }

    /// `run` (whose `profileId` names this profile) with the profile's defaults filled in and
    /// its `profileId` replaced by the built-in `kind:variant`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` when the run widens the profile: a target outside `include`,
    /// a format outside `formats`, selectors wider than the profile's.
    pub fn apply(&self, mut run: RunRequest) -> Result<RunRequest> {
        let spec = &self.spec;
        if run.targets.is_empty() {
            run.targets = spec.include.clone();
        } else if !spec.include.is_empty() {
            if let Some((i, t)) = run.targets.iter().enumerate().find(|(_, t)| !spec.include.contains(t)) {
                return Err(ExportError::invalid(
                    format!("targets[{i}]"),
                    format!("{t} is not included by profile {} (include: {:?})", self.id, spec.include),
                ));
            }
        }
        if run.formats.is_empty() {
            run.formats = spec.formats.clone();
        } else if !spec.formats.is_empty() {
            if let Some((i, f)) = run.formats.iter().enumerate().find(|(_, f)| !spec.formats.contains(f)) {
                return Err(ExportError::invalid(
                    format!("formats[{i}]"),
                    format!("{f} is not among the formats of profile {}", self.id),
                ));
            }
        }
        if run.distribution.is_none() {
            run.distribution = spec.distribution.clone();
        }
        if run.retention_days.is_none() {
            run.retention_days = spec.retention_days;
        }
        run.selectors = spec.selectors.narrow(&run.selectors)?;
        run.profile_id = spec.profile_id()?;
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ProfileSpec {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ids_are_tenant_scoped() {
        let t = TenantId::from_static("acme");
        assert_eq!(name_in(&t, "export-profile::acme::daily"), Some("daily".into()));
        assert_eq!(name_in(&t, "export-profile::other::daily"), None);
        assert_eq!(name_in(&t, "export-profile::acme::Bad Name"), None);
        assert_eq!(name_in(&t, "json:raw"), None);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let t = TenantId::from_static("acme");
        let at = Timestamp::parse("2025-01-01T00:00:00Z").unwrap_or_else(|e| panic!("{e}"));
        for (json, field) in [
            (r#"{"name":"Bad","kind":"json","variant":"raw"}"#, "name"),
            (r#"{"name":"ok","kind":"js on","variant":"raw"}"#, "kind"),
            (r#"{"name":"ok","kind":"json","variant":""}"#, "variant"),
            (
                r#"{"name":"ok","kind":"json","variant":"raw","selectors":{"packages":["nope"]}}"#,
                "selectors.packages[0]",
            ),
        ] {
            match SavedProfile::new(&t, spec(json), 1, at) {
                Err(ExportError::RequestInvalid { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(serde_json::from_str::<ProfileSpec>(r#"{"name":"ok","kind":"json","variant":"raw","x":1}"#).is_err());
    }

    #[test]
    fn apply_fills_defaults_and_refuses_widening() {
        let t = TenantId::from_static("acme");
        let at = Timestamp::parse("2025-01-01T00:00:00Z").unwrap_or_else(|e| panic!("{e}"));
        let p = SavedProfile::new(
            &t,
            spec(
                r#"{"name":"py","kind":"json","variant":"raw","include":["advisory","vex"],"formats":["ndjson"],
                    "selectors":{"ecosystems":["PyPI"]}}"#,
            ),
            3,
            at,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let run = RunRequest::builder(p.id.as_str()).targets([Target::Vex]).build().unwrap_or_else(|e| panic!("{e}"));
        let a = p.apply(run).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (a.profile_id.as_str(), a.targets.clone(), a.formats.clone()),
            ("json:raw", vec![Target::Vex], vec![Format::Ndjson])
        );
        assert_eq!(a.selectors.ecosystems, vec!["PyPI".to_owned()]);
        let widen: RunRequest =
            serde_json::from_str(&format!(r#"{{"profileId":"{}","selectors":{{"ecosystems":["npm"]}}}}"#, p.id))
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(p.apply(widen), Err(ExportError::RequestInvalid { field, .. }) if field == "selectors.ecosystems[0]")
        );
        let fmt: RunRequest = serde_json::from_str(&format!(r#"{{"profileId":"{}","formats":["json"]}}"#, p.id))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(p.apply(fmt), Err(ExportError::RequestInvalid { field, .. }) if field == "formats[0]"));
    }
}
