//! OSV → Trivy DB v2 mapping (documented in `docs/trivy.md`).

use exportcore::evidence::osv::{Affected, Osv, Text};
use serde::Serialize;
use std::collections::BTreeMap;

/// Where an OSV ecosystem's advisories go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// An OS bucket (`alpine 3.19`): advisories carry `FixedVersion`.
    Os(String),
    /// A language bucket (`pip::OSV PyPI`): advisories carry version ranges. `eco` is Trivy's
    /// ecosystem name (pip, npm, ...).
    Lang { bucket: String, eco: &'static str },
}

/// Maps an OSV ecosystem string to its Trivy bucket; `None` for ecosystems Trivy cannot use.
pub(crate) fn target(ecosystem: &str) -> Option<Target> {
    let (base, rest) = ecosystem.split_once(':').map_or((ecosystem, ""), |(a, b)| (a, b));
    let os = |name: &str, version: &str| (!version.is_empty()).then(|| Target::Os(format!("{name} {version}")));
    match base {
        "Alpine" => os("alpine", rest.trim_start_matches('v')),
        "Debian" => os("debian", rest.split(':').next().unwrap_or("")),
        "Ubuntu" => os("ubuntu", rest.split(':').next().unwrap_or("")),
        "Rocky Linux" => os("rocky", rest),
        "AlmaLinux" => os("alma", rest),
        _ => {
            let eco = match ecosystem {
                "PyPI" => "pip",
                "npm" => "npm",
                "Maven" => "maven",
                "Go" => "go",
                "crates.io" => "cargo",
                "RubyGems" => "rubygems",
                "NuGet" => "nuget",
                "Packagist" => "composer",
                _ => return None,
            };
            Some(Target::Lang { bucket: format!("{eco}::OSV {ecosystem}"), eco })
        }
    }
}

/// The package key as Trivy normalises it before lookup.
pub(crate) fn package_key(target: &Target, name: &str) -> String {
    match target {
        Target::Os(_) => name.to_owned(),
        Target::Lang { eco: "pip", .. } => name.to_lowercase().replace('_', "-"),
        Target::Lang { eco: "go", .. } => name.to_owned(),
        Target::Lang { .. } => name.to_lowercase(),
    }
}

/// The id Trivy reports: the OSV id if it is a CVE, else its first CVE alias, else the OSV id.
pub(crate) fn vuln_id(osv: &Osv<'_>) -> String {
    let id = osv.id.as_str().unwrap_or_default();
    if id.starts_with("CVE-") {
        return id.to_owned();
    }
    osv.aliases.items().iter().filter_map(Text::as_str).find(|a| a.starts_with("CVE-")).unwrap_or(id).to_owned()
}

/// Trivy's severity integers: 0 UNKNOWN, 1 LOW, 2 MEDIUM, 3 HIGH, 4 CRITICAL.
pub(crate) fn severity(osv: &Osv<'_>) -> (u8, Option<(String, f64)>) {
    let cvss = osv.severity.items().iter().find_map(|s| {
        let s = s.get()?;
        let ty = s.kind.as_str()?;
        let score = s.score.as_str()?;
        if ty != "CVSS_V3" {
            return None;
        }
        Some((score.to_owned(), cvss3_score(score)?))
    });
    let named = osv.database_specific.get().and_then(|d| d.severity.as_str()).map(|s| s.to_ascii_uppercase());
    let level = match named.as_deref() {
        Some("CRITICAL") => 4,
        Some("HIGH") => 3,
        Some("MODERATE" | "MEDIUM") => 2,
        Some("LOW") => 1,
        _ => match cvss.as_ref().map(|c| c.1) {
            Some(s) if s >= 9.0 => 4,
            Some(s) if s >= 7.0 => 3,
            Some(s) if s >= 4.0 => 2,
            Some(s) if s > 0.0 => 1,
            _ => 0,
        },
    };
    (level, cvss)
}

/// The CVSS v3 base score of a vector, `None` when it does not parse. Parsing a vector costs
/// more than the rest of an advisory's mapping and vectors repeat across advisories, so each
/// thread remembers the last few thousand it scored.
fn cvss3_score(vector: &str) -> Option<f64> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static SCORES: RefCell<HashMap<String, Option<f64>>> = RefCell::new(HashMap::new());
    }
    SCORES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(score) = cache.get(vector) {
            return *score;
        }
        let score = vector.parse::<cvss::v3::Base>().ok().map(|b| b.score().value());
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(vector.to_owned(), score);
        score
    })
}

const SEVERITY_NAMES: [&str; 5] = ["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"];

/// Trivy's `types.Vulnerability`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Vulnerability<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    severity: &'static str,
    #[serde(rename = "CweIDs", skip_serializing_if = "Vec::is_empty")]
    cwe_ids: Vec<&'a str>,
    vendor_severity: BTreeMap<&'static str, u8>,
    #[serde(rename = "CVSS", skip_serializing_if = "BTreeMap::is_empty")]
    cvss: BTreeMap<&'static str, Cvss>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    references: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    published_date: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified_date: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Cvss {
    #[serde(rename = "V3Vector")]
    v3_vector: String,
    #[serde(rename = "V3Score")]
    v3_score: f64,
}

pub(crate) fn vulnerability<'a>(osv: &'a Osv<'_>) -> Vulnerability<'a> {
    let (level, cvss) = severity(osv);
    Vulnerability {
        title: osv.summary.non_empty(),
        description: osv.details.non_empty(),
        severity: SEVERITY_NAMES[level as usize],
        cwe_ids: osv
            .database_specific
            .get()
            .map(|d| d.cwe_ids.items().iter().filter_map(Text::as_str).collect())
            .unwrap_or_default(),
        vendor_severity: BTreeMap::from([("osv", level)]),
        cvss: cvss
            .map(|(v, score)| BTreeMap::from([("osv", Cvss { v3_vector: v, v3_score: score })]))
            .unwrap_or_default(),
        references: osv.references.items().iter().filter_map(|r| r.get()?.url.as_str()).collect(),
        published_date: osv.published.non_empty(),
        last_modified_date: osv.modified.non_empty(),
    }
}

/// Trivy's `types.Advisory` (the fields we fill).
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Advisory {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fixed_version: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) vulnerable_versions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) patched_versions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) unaffected_versions: Vec<String>,
}

/// Counted losses of one mapping.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// Advisories with a `withdrawn` date.
    pub withdrawn: u64,
    /// Affected entries whose ecosystem Trivy has no bucket for.
    pub unknown_ecosystem: u64,
    /// Affected entries without a package.
    pub no_package: u64,
    /// GIT ranges (commit hashes mean nothing to Trivy).
    pub git_ranges: u64,
    /// Affected entries with neither usable ranges nor versions.
    pub no_versions: u64,
    /// Entries dropped because a VEX statement says the package (any version) is not affected.
    pub vex_dropped: u64,
    /// Versions added to `UnaffectedVersions` from VEX statements on versioned products.
    pub vex_unaffected_versions: u64,
    /// VEX statements on OS packages (Trivy's OS matching has no per-version exceptions).
    pub vex_os_ignored: u64,
}

/// The exact-version constraint syntax of an ecosystem (`== v` for pip, `= v` elsewhere).
pub(crate) fn exact(target: &Target, v: &str) -> String {
    match target {
        Target::Lang { eco: "pip", .. } => format!("== {v}"),
        _ => format!("= {v}"),
    }
}

impl Skipped {
    /// Adds another batch's counts.
    pub fn add(&mut self, o: &Skipped) {
        self.withdrawn += o.withdrawn;
        self.unknown_ecosystem += o.unknown_ecosystem;
        self.no_package += o.no_package;
        self.git_ranges += o.git_ranges;
        self.no_versions += o.no_versions;
        self.vex_dropped += o.vex_dropped;
        self.vex_unaffected_versions += o.vex_unaffected_versions;
        self.vex_os_ignored += o.vex_os_ignored;
    }
}

/// The advisory for one OSV `affected` entry in `target`, or `None` when it has nothing usable.
pub(crate) fn advisory(target: &Target, affected: &Affected<'_>, skipped: &mut Skipped) -> Option<Advisory> {
    let mut adv = Advisory::default();
    let mut fixed_all = Vec::new();
    for range in affected.ranges.items().iter().filter_map(|r| r.get()) {
        if range.kind.as_str() == Some("GIT") {
            skipped.git_ranges += 1;
            continue;
        }
        let mut introduced: Option<String> = None;
        let mut open = false;
        for ev in range.events.items().iter().filter_map(|e| e.get()) {
            if let Some(v) = ev.introduced.as_str() {
                if open {
                    // Two introduced events in a row: the first range stays open.
                    adv.vulnerable_versions.push(lower(introduced.as_deref()).unwrap_or_else(|| ">= 0".into()));
                }
                introduced = (v != "0").then(|| v.to_owned());
                open = true;
            } else if let Some(v) = ev.fixed.as_str() {
                fixed_all.push(v.to_owned());
                adv.vulnerable_versions.push(join(lower(introduced.as_deref()), format!("< {v}")));
                open = false;
            } else if let Some(v) = ev.last_affected.as_str() {
                adv.vulnerable_versions.push(join(lower(introduced.as_deref()), format!("<= {v}")));
                open = false;
            } else if let Some(v) = ev.limit.as_str() {
                adv.vulnerable_versions.push(join(lower(introduced.as_deref()), format!("< {v}")));
                open = false;
            }
        }
        if open {
            adv.vulnerable_versions.push(lower(introduced.as_deref()).unwrap_or_else(|| ">= 0".into()));
        }
    }
    // An explicit version list is used when the ranges gave nothing (OSV lists the same
    // versions the ranges cover, when both are present).
    if adv.vulnerable_versions.is_empty() {
        for v in affected.versions.items().iter().filter_map(Text::as_str) {
            adv.vulnerable_versions.push(exact(target, v));
        }
    }
    match target {
        Target::Os(_) => {
            if adv.vulnerable_versions.is_empty() {
                skipped.no_versions += 1;
                return None;
            }
            Some(Advisory { fixed_version: fixed_all.first().cloned(), ..Default::default() })
        }
        Target::Lang { .. } => {
            if adv.vulnerable_versions.is_empty() {
                skipped.no_versions += 1;
                return None;
            }
            adv.patched_versions = fixed_all;
            Some(adv)
        }
    }
}

fn lower(introduced: Option<&str>) -> Option<String> {
    introduced.map(|v| format!(">= {v}"))
}

fn join(lower: Option<String>, upper: String) -> String {
    match lower {
        Some(l) => format!("{l}, {upper}"),
        None => upper,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::{json, Value};

    fn advisory(target: &Target, affected: &Value, skipped: &mut Skipped) -> Option<Advisory> {
        super::advisory(target, &Affected::deserialize(affected).unwrap(), skipped)
    }
    fn vuln_id(v: &Value) -> String {
        super::vuln_id(&Osv::deserialize(v).unwrap())
    }
    fn severity(v: &Value) -> (u8, Option<(String, f64)>) {
        super::severity(&Osv::deserialize(v).unwrap())
    }

    #[test]
    fn ecosystems() {
        assert_eq!(target("Alpine:v3.19"), Some(Target::Os("alpine 3.19".into())));
        assert_eq!(target("Debian:12"), Some(Target::Os("debian 12".into())));
        assert_eq!(target("Ubuntu:22.04:LTS"), Some(Target::Os("ubuntu 22.04".into())));
        assert_eq!(target("PyPI"), Some(Target::Lang { bucket: "pip::OSV PyPI".into(), eco: "pip" }));
        assert_eq!(target("crates.io"), Some(Target::Lang { bucket: "cargo::OSV crates.io".into(), eco: "cargo" }));
        assert_eq!(target("Hex"), None);
        assert_eq!(target("Alpine"), None, "an OS without a release cannot be bucketed");
        let pip = target("PyPI").unwrap();
        assert_eq!(package_key(&pip, "Django_Rest"), "django-rest");
        let go = target("Go").unwrap();
        assert_eq!(package_key(&go, "github.com/Foo/Bar"), "github.com/Foo/Bar");
        let mvn = target("Maven").unwrap();
        assert_eq!(package_key(&mvn, "org.Apache:Foo"), "org.apache:foo");
    }

    #[test]
    fn ranges() {
        let npm = target("npm").unwrap();
        let mut sk = Skipped::default();
        let a = advisory(
            &npm,
            &json!({"ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "4.17.21"}]}]}),
            &mut sk,
        )
        .unwrap();
        assert_eq!(a.vulnerable_versions, ["< 4.17.21"]);
        assert_eq!(a.patched_versions, ["4.17.21"]);
        let a = advisory(&npm, &json!({"ranges": [{"type": "ECOSYSTEM", "events": [
            {"introduced": "2.0.0"}, {"fixed": "2.15.0"}, {"introduced": "3.0.0"}, {"last_affected": "3.1.0"}, {"introduced": "4.0.0"}]}]}), &mut sk).unwrap();
        assert_eq!(a.vulnerable_versions, [">= 2.0.0, < 2.15.0", ">= 3.0.0, <= 3.1.0", ">= 4.0.0"]);
        assert_eq!(a.patched_versions, ["2.15.0"]);
        let pip = target("PyPI").unwrap();
        let a = advisory(&pip, &json!({"versions": ["1.0", "1.1"]}), &mut sk).unwrap();
        assert_eq!(a.vulnerable_versions, ["== 1.0", "== 1.1"]);
        let os = target("Alpine:v3.19").unwrap();
        let a = advisory(
            &os,
            &json!({"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.2-r1"}]}]}),
            &mut sk,
        )
        .unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"FixedVersion":"1.2-r1"}"#);
        let a = advisory(
            &os,
            &json!({"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"last_affected": "1.2"}]}]}),
            &mut sk,
        )
        .unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "{}", "lossy: no fixed version");
        assert!(
            advisory(&npm, &json!({"ranges": [{"type": "GIT", "events": [{"introduced": "abc"}]}]}), &mut sk).is_none()
        );
        assert_eq!(sk.git_ranges, 1);
        assert_eq!(sk.no_versions, 1);
    }

    #[test]
    fn ids_and_severity() {
        assert_eq!(vuln_id(&json!({"id": "GHSA-x", "aliases": ["PYSEC-1", "CVE-2020-1"]})), "CVE-2020-1");
        assert_eq!(vuln_id(&json!({"id": "GHSA-x"})), "GHSA-x");
        assert_eq!(vuln_id(&json!({"id": "CVE-1", "aliases": ["CVE-2"]})), "CVE-1");
        assert_eq!(severity(&json!({"database_specific": {"severity": "MODERATE"}})).0, 2);
        let (level, cvss) = severity(
            &json!({"severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}),
        );
        assert_eq!(level, 4);
        assert_eq!(cvss.unwrap().1, 9.8);
        assert_eq!(severity(&json!({})).0, 0);
        // Cached scores are the same scores; a bad vector stays unscored.
        for _ in 0..2 {
            assert_eq!(cvss3_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"), Some(9.8));
            assert_eq!(cvss3_score("CVSS:3.1/AV:N/AC:H/PR:L/UI:R/S:U/C:L/I:N/A:N"), Some(2.6));
            assert_eq!(cvss3_score("CVSS:3.1/nonsense"), None);
        }
    }
}
