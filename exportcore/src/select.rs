//! Scope selectors: which records a run exports, applied once for every profile.
//!
//! A request's [`Selectors`] (`selectors` on the wire) narrow the evidence by ecosystem, by
//! package (purl prefix), by advisory or vulnerability id and by a modification window.
//! [`SelectedEvidence`] wraps any [`EvidenceSource`] and hides the records outside the
//! selection, so a profile (ours, a third party's, the mirror) reads only selected records
//! without a line of code of its own. The run engine applies it whenever the request has
//! selectors, and records the selectors with the counts seen and selected in the run manifest
//! (`metadata.selection`) and the provenance (`internalParameters.selection`).
//!
//! # What is selected
//! Within one selector the entries are alternatives (any may match); different selectors must
//! all hold. Matching is ASCII case-insensitive for ecosystems and ids; PyPI names are compared
//! in their PEP 503 form.
//! - **OSV advisory**: one `affected[].package` matches both `ecosystems` (`Alpine` matches
//!   `Alpine` and `Alpine:v3.19`; `Alpine:v3.19` only itself) and `packages` (its `purl`, or
//!   its ecosystem and name); its `id` or one of its `aliases` is in `ids`; its `modified` lies
//!   in the window.
//! - **OpenVEX document**: kept whole (raw facts are never rewritten) when at least one
//!   statement is selected. A statement is selected when its timestamp (else the document's)
//!   lies in the window, its vulnerability name or an alias is in `ids`, and either one of its
//!   products matches `ecosystems`/`packages` or its vulnerability is the id or an alias of an
//!   advisory whose packages match them.
//! - **Policy finding**: as a statement, with `product`, `vulnerability` and `evaluatedAt`.
//! - **Maven index entry** (`java/`): `pkg:maven/GROUP/ARTIFACT` must match `ecosystems` and
//!   `packages`; entries have no id or time, so `ids` and the window do not apply.
//! - **Portal assets** are not records and are never filtered.
//!
//! A package selector is a purl prefix that ends at a boundary: `pkg:pypi/django` selects
//! `django`, not `django-rest-framework`; `pkg:npm/@angular/` selects every package of the
//! scope; `pkg:apk/alpine/` every Alpine package. The window is half-open: `modifiedSince`
//! included, `modifiedUntil` excluded, so consecutive windows never overlap.
//!
//! Records outside the selection are not checked. A record whose selection cannot be decided
//! (malformed JSON, a field of the wrong type) is kept, so the profile's own parser reports it
//! with its file and line; one whose raw bytes already show it is outside is dropped unparsed.
//! Unselected `.ndjson` lines are replaced by empty lines, so every line number stays that of
//! the original file.
//!
//! ```
//! use exportcore::select::{SelectedEvidence, Selectors};
//! use exportcore::{EvidenceKind, MemoryEvidence, Records};
//! use std::sync::Arc;
//! let mut ev = MemoryEvidence::new();
//! ev.insert("advisories/all.ndjson", concat!(
//!     r#"{"id":"A","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"PyPI","name":"django"}}]}"#, "\n",
//!     r#"{"id":"B","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"lodash"}}]}"#, "\n",
//! ))?;
//! let selectors = Selectors::default().ecosystems(["PyPI"]);
//! let selected = SelectedEvidence::new(Arc::new(ev), &selectors)?;
//! let ids: Vec<String> = Records::new(&selected, EvidenceKind::Advisory)?
//!     .map(|r| r.map(|r| r.value["id"].as_str().unwrap_or_default().to_owned()))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(ids, ["A"]);
//! assert_eq!(selected.selection().counts["advisory"].selected, 1);
//! # Ok::<(), exportcore::ExportError>(())
//! ```

use crate::error::{ExportError, Location, Result};
use crate::evidence::{schema, EvidenceItem, EvidenceKind, EvidenceSource, MAX_RECORD_BYTES};
use crate::model::Timestamp;
use crate::path::ArtifactPath;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

/// Most entries all selectors of one request may hold together.
pub const MAX_SELECTOR_ENTRIES: usize = 4096;

/// Which evidence a run exports (see the [module docs](self) for the rules). Empty means
/// everything.
///
/// ```
/// use exportcore::select::Selectors;
/// use exportcore::Timestamp;
/// let s = Selectors::default()
///     .ecosystems(["PyPI", "Alpine:v3.19"])
///     .packages(["pkg:npm/@angular/"])
///     .ids(["CVE-2024-3094"])
///     .modified_since(Timestamp::parse("2025-01-01T00:00:00Z").unwrap());
/// s.validate()?;
/// assert!(!s.is_empty());
/// # Ok::<(), exportcore::ExportError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct Selectors {
    /// OSV ecosystems (`PyPI`, `Alpine:v3.19`) or ecosystem families (`Alpine`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecosystems: Vec<String>,
    /// Records modified at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_since: Option<Timestamp>,
    /// Records modified before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_until: Option<Timestamp>,
    /// Package URL prefixes (`pkg:pypi/django`, `pkg:npm/@angular/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Advisory or vulnerability ids, aliases included (`CVE-2024-3094`, `GHSA-…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

impl Selectors {
    /// Sets the ecosystems.
    #[must_use]
    pub fn ecosystems<S: Into<String>>(mut self, v: impl IntoIterator<Item = S>) -> Self {
        self.ecosystems = v.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the package URL prefixes.
    #[must_use]
    pub fn packages<S: Into<String>>(mut self, v: impl IntoIterator<Item = S>) -> Self {
        self.packages = v.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the ids.
    #[must_use]
    pub fn ids<S: Into<String>>(mut self, v: impl IntoIterator<Item = S>) -> Self {
        self.ids = v.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the start of the window (included).
    #[must_use]
    pub fn modified_since(mut self, t: Timestamp) -> Self {
        self.modified_since = Some(t);
        self
    }
    /// Sets the end of the window (excluded).
    #[must_use]
    pub fn modified_until(mut self, t: Timestamp) -> Self {
        self.modified_until = Some(t);
        self
    }

    /// True when nothing is selected away.
    pub fn is_empty(&self) -> bool {
        self.ecosystems.is_empty()
            && self.packages.is_empty()
            && self.ids.is_empty()
            && self.modified_since.is_none()
            && self.modified_until.is_none()
    }

    /// Checks every entry.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming the field (`selectors.packages[2]`, ...): an empty
    /// or overlong entry, control characters, a package that is not a purl prefix or names a
    /// version, an inverted or empty window, more than [`MAX_SELECTOR_ENTRIES`] entries.
    pub fn validate(&self) -> Result<()> {
        let total = self.ecosystems.len() + self.packages.len() + self.ids.len();
        if total > MAX_SELECTOR_ENTRIES {
            return Err(ExportError::invalid(
                "selectors",
                format!("{total} entries, at most {MAX_SELECTOR_ENTRIES} allowed"),
            ));
        }
        for (i, e) in self.ecosystems.iter().enumerate() {
            check_text(e, 100, true).map_err(|m| ExportError::invalid(format!("selectors.ecosystems[{i}]"), m))?;
        }
        for (i, p) in self.packages.iter().enumerate() {
            check_purl_prefix(p).map_err(|m| ExportError::invalid(format!("selectors.packages[{i}]"), m))?;
        }
        for (i, id) in self.ids.iter().enumerate() {
            check_text(id, 256, false).map_err(|m| ExportError::invalid(format!("selectors.ids[{i}]"), m))?;
        }
        if let (Some(since), Some(until)) = (self.modified_since, self.modified_until) {
            if since >= until {
                return Err(ExportError::invalid(
                    "selectors.modifiedUntil",
                    format!("{until} is not after modifiedSince {since}: the window is empty or inverted"),
                ));
            }
        }
        Ok(())
    }

    /// The same selection in canonical form: entries sorted and without duplicates, so the
    /// order a user wrote them in never changes a byte of the output.
    #[must_use]
    pub fn normalized(&self) -> Self {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        Self {
            ecosystems: sorted(&self.ecosystems),
            packages: sorted(&self.packages),
            ids: sorted(&self.ids),
            ..self.clone()
        }
    }

    /// Applies a run's selectors on top of these defaults (a saved profile's): the run may
    /// narrow the selection, never widen it. A selector the run leaves empty takes the default.
    ///
    /// ```
    /// use exportcore::select::Selectors;
    /// let profile = Selectors::default().ecosystems(["Alpine", "PyPI"]);
    /// let run = profile.narrow(&Selectors::default().ecosystems(["Alpine:v3.19"]))?;
    /// assert_eq!(run.ecosystems, ["Alpine:v3.19"]);
    /// assert!(profile.narrow(&Selectors::default().ecosystems(["npm"])).is_err());
    /// # Ok::<(), exportcore::ExportError>(())
    /// ```
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` naming the run's entry that lies outside the defaults.
    pub fn narrow(&self, run: &Selectors) -> Result<Selectors> {
        fn within(
            field: &str,
            defaults: &[String],
            run: &[String],
            covers: impl Fn(&str, &str) -> bool,
        ) -> Result<Vec<String>> {
            if run.is_empty() {
                return Ok(defaults.to_vec());
            }
            if !defaults.is_empty() {
                if let Some((i, r)) = run.iter().enumerate().find(|(_, r)| !defaults.iter().any(|d| covers(d, r))) {
                    return Err(ExportError::invalid(
                        format!("selectors.{field}[{i}]"),
                        format!("{r:?} widens the profile's selection {defaults:?}"),
                    ));
                }
            }
            Ok(run.to_vec())
        }
        let bound = |field: &str,
                     d: Option<Timestamp>,
                     r: Option<Timestamp>,
                     widens: fn(Timestamp, Timestamp) -> bool| match (d, r) {
            (Some(d), Some(r)) if widens(d, r) => Err(ExportError::invalid(
                format!("selectors.{field}"),
                format!("{r} widens the profile's window (bound {d})"),
            )),
            (d, r) => Ok(r.or(d)),
        };
        let out = Selectors {
            ecosystems: within("ecosystems", &self.ecosystems, &run.ecosystems, |d, r| {
                let (d, r) = (d.to_ascii_lowercase(), r.to_ascii_lowercase());
                ecosystem_matches(&d, &r)
            })?,
            packages: within("packages", &self.packages, &run.packages, |d, r| {
                let (d, r) = (PkgSel::new(d), PkgSel::new(r));
                match (&d, &r) {
                    (PkgSel::Osv { eco: de, name: dn }, PkgSel::Osv { eco: re, name: rn }) => {
                        de == re && name_matches(dn, rn)
                    }
                    (PkgSel::Raw(dp), PkgSel::Raw(rp)) => name_matches(dp, rp),
                    _ => false,
                }
            })?,
            ids: within("ids", &self.ids, &run.ids, |d, r| d.eq_ignore_ascii_case(r))?,
            modified_since: bound("modifiedSince", self.modified_since, run.modified_since, |d, r| r < d)?,
            modified_until: bound("modifiedUntil", self.modified_until, run.modified_until, |d, r| r > d)?,
        };
        out.validate()?;
        Ok(out)
    }
}

fn check_text(s: &str, max: usize, spaces: bool) -> std::result::Result<(), String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > max {
        return Err(format!("longer than {max} bytes"));
    }
    if s.trim() != s {
        return Err(format!("{s:?} has leading or trailing spaces"));
    }
    if s.chars().any(|c| c.is_control() || (!spaces && c.is_whitespace())) {
        return Err(format!("{s:?} contains {}", if spaces { "control characters" } else { "spaces" }));
    }
    Ok(())
}

fn check_purl_prefix(p: &str) -> std::result::Result<(), String> {
    check_text(p, 512, false)?;
    let bad = || format!("{p:?} is not a package URL prefix (pkg:TYPE/NAMESPACE/NAME, e.g. pkg:pypi/django)");
    let rest = p.strip_prefix("pkg:").ok_or_else(bad)?;
    let (ty, _) = rest.split_once('/').ok_or_else(bad)?;
    if ty.is_empty() || !ty.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b)) {
        return Err(bad());
    }
    if p.contains(['?', '#']) {
        return Err(format!("{p:?}: qualifiers and subpaths cannot be selected; name a package"));
    }
    if crate::purl::parse(p).is_some_and(|x| x.version.is_some()) {
        return Err(format!("{p:?} names a version; a package selector names a package (drop the @version)"));
    }
    Ok(())
}

/// `record` (lowercase OSV ecosystem) is selected by `sel` (lowercase): equal, or `sel` is the
/// family of `record` (`alpine` selects `alpine:v3.19`).
fn ecosystem_matches(sel: &str, record: &str) -> bool {
    record == sel || (!sel.contains(':') && record.strip_prefix(sel).is_some_and(|rest| rest.starts_with(':')))
}

/// `name` starts with `prefix` at a boundary (`/` or `:`), or equals it.
fn name_matches(prefix: &str, name: &str) -> bool {
    prefix.is_empty()
        || name == prefix
        || (name.starts_with(prefix)
            && (prefix.ends_with(['/', ':']) || name[prefix.len()..].starts_with(['/', ':', '@'])))
}

/// A PyPI name in its PEP 503 form; other names as they are.
fn normal_name(eco_family: &str, name: &str) -> String {
    if eco_family == "pypi" {
        let mut out = String::with_capacity(name.len());
        for c in name.chars() {
            let c = if matches!(c, '-' | '_' | '.') { '-' } else { c.to_ascii_lowercase() };
            if !(c == '-' && out.ends_with('-')) {
                out.push(c);
            }
        }
        out
    } else {
        name.to_owned()
    }
}

fn family(ecosystem: &str) -> String {
    ecosystem.split(':').next().unwrap_or_default().to_ascii_lowercase()
}

/// A compiled package selector.
#[derive(Debug)]
enum PkgSel {
    /// A purl type we map to an OSV ecosystem: (lowercase family, normalised name prefix).
    Osv { eco: String, name: String },
    /// Any other purl type: an unversioned purl prefix.
    Raw(String),
}

impl PkgSel {
    fn new(p: &str) -> Self {
        match crate::purl::osv_package(p) {
            Some((eco, name)) => {
                let eco = eco.to_ascii_lowercase();
                let name = normal_name(&eco, &name);
                PkgSel::Osv { eco, name }
            }
            None => PkgSel::Raw(p.to_owned()),
        }
    }
}

/// One package a record names.
struct Pkg<'a> {
    /// Full OSV ecosystem (`Alpine:v3.19`) or family (`Alpine`), if known.
    ecosystem: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    purl: Option<&'a str>,
}

impl<'a> Pkg<'a> {
    fn from_purl(purl: &'a str) -> Self {
        match crate::purl::osv_package(purl) {
            Some((eco, name)) => {
                Pkg { ecosystem: Some(Cow::Borrowed(eco)), name: Some(Cow::Owned(name)), purl: Some(purl) }
            }
            None => Pkg { ecosystem: None, name: None, purl: Some(purl) },
        }
    }
}

/// The compiled selectors.
#[derive(Debug)]
struct Matcher {
    ecosystems: Vec<String>,
    packages: Vec<PkgSel>,
    ids: HashSet<String>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    /// `\u`, `"ecosystem"`, `"modified"`, for [`Matcher::certainly_unselected`].
    finders: [memchr::memmem::Finder<'static>; 3],
}

impl Matcher {
    fn new(s: &Selectors) -> Self {
        Self {
            ecosystems: s.ecosystems.iter().map(|e| e.to_ascii_lowercase()).collect(),
            packages: s.packages.iter().map(|p| PkgSel::new(p)).collect(),
            ids: s.ids.iter().map(|i| i.to_ascii_uppercase()).collect(),
            since: s.modified_since,
            until: s.modified_until,
            finders: [&b"\\u"[..], b"\"ecosystem\"", b"\"modified\""]
                .map(|n| memchr::memmem::Finder::new(n).into_owned()),
        }
    }

    /// Package selectors are set (they make VEX and findings join on advisories).
    fn by_package(&self) -> bool {
        !self.ecosystems.is_empty() || !self.packages.is_empty()
    }

    /// A record's ecosystem (lowercase) is selected by `ecosystems`.
    fn ecosystem_ok(&self, e: &str) -> bool {
        self.ecosystems.iter().any(|s| {
            // A product's purl names only the family: a selector's release part is checked on
            // advisories.
            ecosystem_matches(s, e) || (!e.contains(':') && family(s) == e)
        })
    }

    /// True only when the raw bytes of an OSV advisory prove it is not selected, without
    /// parsing it: every `"ecosystem"` value (or every `"modified"` value) in the record
    /// fails the selector. The real `affected[].package.ecosystem` and `modified` are among
    /// those values, written literally: a key can only be disguised with a `\u` escape, and a
    /// record holding one, or a value with any escape, is left to the full scan.
    fn certainly_unselected(&self, raw: &[u8]) -> bool {
        self.certainly_outside(raw, true)
    }

    /// [`Matcher::certainly_unselected`], looking at the window only when `window` is set.
    fn certainly_outside(&self, raw: &[u8], window: bool) -> bool {
        let [escape, ecosystem, modified] = &self.finders;
        if escape.find(raw).is_some() {
            return false;
        }
        if !self.ecosystems.is_empty() {
            if let Some(values) = raw_string_values(raw, ecosystem) {
                let selected =
                    |v: &[u8]| std::str::from_utf8(v).map_or(true, |s| self.ecosystem_ok(&s.to_ascii_lowercase()));
                if !values.is_empty() && !values.iter().any(|v| selected(v)) {
                    return true;
                }
            }
        }
        if window && (self.since.is_some() || self.until.is_some()) {
            if let Some(values) = raw_string_values(raw, modified) {
                let selected = |v: &[u8]| {
                    std::str::from_utf8(v).ok().and_then(|s| Timestamp::parse(s).ok()).is_none_or(|t| self.time_ok(t))
                };
                if !values.is_empty() && !values.iter().any(|v| selected(v)) {
                    return true;
                }
            }
        }
        false
    }

    fn package_ok(&self, p: &Pkg<'_>) -> bool {
        let eco = p.ecosystem.as_deref().map(str::to_ascii_lowercase);
        let fam = eco.as_deref().map(family);
        let eco_ok = self.ecosystems.is_empty() || eco.as_deref().is_some_and(|e| self.ecosystem_ok(e));
        if !eco_ok {
            return false;
        }
        self.packages.is_empty()
            || self.packages.iter().any(|sel| match sel {
                PkgSel::Osv { eco: se, name: sn } => match (&fam, &p.name) {
                    (Some(f), Some(n)) => f == se && name_matches(sn, &normal_name(f, n)),
                    _ => false,
                },
                PkgSel::Raw(prefix) => p.purl.is_some_and(|u| name_matches(prefix, u)),
            })
    }

    fn packages_ok<'a>(&self, mut pkgs: impl Iterator<Item = Pkg<'a>>) -> bool {
        !self.by_package() || pkgs.any(|p| self.package_ok(&p))
    }

    fn ids_ok<'a>(&self, mut ids: impl Iterator<Item = &'a str>) -> bool {
        self.ids.is_empty() || ids.any(|i| self.ids.contains(&i.to_ascii_uppercase()))
    }

    fn time_ok(&self, t: Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// The raw bytes of every string value of `key` (quoted) in `raw`; `None` when one of them
/// cannot be read without unescaping (or is not a string).
fn raw_string_values<'a>(raw: &'a [u8], key: &memchr::memmem::Finder<'_>) -> Option<Vec<&'a [u8]>> {
    let skip_ws = |b: &'a [u8]| {
        let n = b.iter().take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')).count();
        &b[n..]
    };
    let mut out = Vec::new();
    for at in key.find_iter(raw) {
        let rest = skip_ws(&raw[at + key.needle().len()..]);
        let Some(rest) = rest.strip_prefix(b":") else { continue }; // the word inside a value
        let rest = skip_ws(rest).strip_prefix(b"\"")?;
        let end = memchr::memchr(b'"', rest)?;
        let value = &rest[..end];
        if value.contains(&b'\\') {
            return None;
        }
        out.push(value);
    }
    Some(out)
}

#[derive(Deserialize)]
struct AdvisoryScan<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    aliases: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    modified: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    affected: Option<Vec<AffectedScan<'a>>>,
}

#[derive(Deserialize)]
struct AffectedScan<'a> {
    #[serde(borrow, default)]
    package: Option<PackageScan<'a>>,
}

#[derive(Deserialize)]
struct PackageScan<'a> {
    #[serde(borrow, default)]
    ecosystem: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    purl: Option<Cow<'a, str>>,
}

impl AdvisoryScan<'_> {
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.id.as_deref().into_iter().chain(self.aliases.iter().flatten().map(|a| &**a))
    }
    fn packages(&self) -> impl Iterator<Item = Pkg<'_>> {
        self.affected.iter().flatten().filter_map(|a| a.package.as_ref()).map(|p| Pkg {
            ecosystem: p.ecosystem.as_deref().map(Cow::Borrowed),
            name: p.name.as_deref().map(Cow::Borrowed),
            purl: p.purl.as_deref(),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FindingScan<'a> {
    #[serde(borrow, default)]
    vulnerability: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    product: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    evaluated_at: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MavenScan<'a> {
    #[serde(borrow, default)]
    group_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    artifact_id: Option<Cow<'a, str>>,
}

/// The ids and aliases (uppercase) of advisories whose packages match, for the VEX and
/// finding join.
type Joined = Arc<HashSet<String>>;

/// Seen and selected record counts of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionCount {
    /// Records read.
    pub seen: u64,
    /// Records kept.
    pub selected: u64,
}

/// What a run selected: the selectors (in [`Selectors::normalized`] form) and, per evidence
/// kind (`advisory`, `vex`, `policy`, `java`), the records seen and kept. Recorded as
/// `metadata.selection` in the run manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Selection {
    /// The selectors applied.
    pub selectors: Selectors,
    /// Counts by evidence kind.
    pub counts: BTreeMap<String, SelectionCount>,
}

impl Selection {
    /// Records kept, all kinds together.
    pub fn selected(&self) -> u64 {
        self.counts.values().map(|c| c.selected).sum()
    }
    /// Records seen, all kinds together.
    pub fn seen(&self) -> u64 {
        self.counts.values().map(|c| c.seen).sum()
    }
}

/// Per file: its kind, records seen, records kept (a file read again replaces its counts).
type FileCounts = BTreeMap<ArtifactPath, (EvidenceKind, u64, u64)>;

#[derive(Debug)]
struct Shared {
    inner: Arc<dyn EvidenceSource>,
    matcher: Matcher,
    joined: Mutex<Option<Joined>>,
    counts: Mutex<FileCounts>,
}

impl Shared {
    /// The join set, built on first use by scanning every advisory once.
    fn joined(&self) -> Result<Option<Joined>> {
        if !self.matcher.by_package() {
            return Ok(None);
        }
        let mut slot = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = &*slot {
            return Ok(Some(Arc::clone(j)));
        }
        let mut set = HashSet::new();
        for item in self.inner.list(EvidenceKind::Advisory)? {
            let mut add = |raw: &[u8]| {
                if self.matcher.certainly_outside(raw, false) {
                    return;
                }
                if let Ok(a) = serde_json::from_slice::<AdvisoryScan<'_>>(raw) {
                    if self.matcher.packages_ok(a.packages()) {
                        set.extend(a.ids().map(str::to_ascii_uppercase));
                    }
                }
            };
            let reader = self.inner.open(&item.path)?;
            match FileType::of(&item.path) {
                FileType::Lines => {
                    let mut r = BufReader::with_capacity(CHUNK, reader);
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        let n = r
                            .by_ref()
                            .take(MAX_RECORD_BYTES + 1)
                            .read_until(b'\n', &mut line)
                            .map_err(|e| read_failed(&item.path, e))?;
                        if n == 0 {
                            break;
                        }
                        add(&line);
                    }
                }
                FileType::Document => add(&read_document(reader, &item.path)?),
                FileType::Other => {}
            }
        }
        let set = Arc::new(set);
        *slot = Some(Arc::clone(&set));
        Ok(Some(set))
    }

    /// Whether to keep one raw record of `kind`. Unreadable records are kept.
    fn keep(&self, kind: EvidenceKind, raw: &[u8], joined: Option<&Joined>) -> bool {
        let m = &self.matcher;
        let via_join = |ids: &mut dyn Iterator<Item = &str>| {
            joined.is_some_and(|j| {
                for i in ids {
                    if j.contains(&i.to_ascii_uppercase()) {
                        return true;
                    }
                }
                false
            })
        };
        let time_ok = |t: Option<&str>| t.and_then(|t| Timestamp::parse(t).ok()).is_none_or(|t| m.time_ok(t));
        match kind {
            EvidenceKind::Advisory if m.certainly_unselected(raw) => false,
            EvidenceKind::Advisory => match serde_json::from_slice::<AdvisoryScan<'_>>(raw) {
                Ok(a) => time_ok(a.modified.as_deref()) && m.ids_ok(a.ids()) && m.packages_ok(a.packages()),
                Err(_) => true,
            },
            EvidenceKind::Vex => {
                let Ok(doc) = serde_json::from_slice::<Value>(raw) else { return true };
                if schema::check_openvex(&doc).is_err() {
                    return true;
                }
                schema::vex_statements(&doc).iter().any(|st| {
                    m.time_ok(st.timestamp)
                        && m.ids_ok(st.vulnerabilities.iter().map(String::as_str))
                        && (m.packages_ok(st.products.iter().map(|p| Pkg::from_purl(p)))
                            || via_join(&mut st.vulnerabilities.iter().map(String::as_str)))
                })
            }
            EvidenceKind::Policy => match serde_json::from_slice::<FindingScan<'_>>(raw) {
                Ok(f) => {
                    let vuln = f.vulnerability.as_deref();
                    time_ok(f.evaluated_at.as_deref())
                        && m.ids_ok(vuln.into_iter())
                        && (m.packages_ok(f.product.as_deref().map(Pkg::from_purl).into_iter())
                            || via_join(&mut vuln.into_iter()))
                }
                Err(_) => true,
            },
            EvidenceKind::Java => match serde_json::from_slice::<MavenScan<'_>>(raw) {
                Ok(j) => {
                    let (Some(g), Some(a)) = (j.group_id, j.artifact_id) else { return true };
                    let purl = format!("pkg:maven/{g}/{a}");
                    m.packages_ok(std::iter::once(Pkg::from_purl(&purl)))
                }
                Err(_) => true,
            },
            EvidenceKind::Portal | EvidenceKind::Blob => true,
        }
    }

    fn record(&self, path: &ArtifactPath, kind: EvidenceKind, seen: u64, selected: u64) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).insert(path.clone(), (kind, seen, selected));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileType {
    Lines,
    Document,
    Other,
}

impl FileType {
    fn of(path: &ArtifactPath) -> Self {
        let name = path.file_name().to_ascii_lowercase();
        if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
            FileType::Lines
        } else if name.ends_with(".json") {
            FileType::Document
        } else {
            FileType::Other
        }
    }
}

fn read_failed(path: &ArtifactPath, e: std::io::Error) -> ExportError {
    ExportError::evidence(Location::file(path.as_str()), format!("read failed: {e}"))
}

/// A whole `.json` document, up to one byte past the record limit (the profile's reader
/// reports an oversized one).
fn read_document(reader: Box<dyn Read + Send>, path: &ArtifactPath) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    reader.take(MAX_RECORD_BYTES + 1).read_to_end(&mut buf).map_err(|e| read_failed(path, e))?;
    Ok(buf)
}

/// An [`EvidenceSource`] that shows only the records [`Selectors`] select (see the
/// [module docs](self)). `.json` documents outside the selection are left out of `list`;
/// unselected `.ndjson` lines read as empty lines.
#[derive(Debug, Clone)]
pub struct SelectedEvidence {
    shared: Arc<Shared>,
    selectors: Selectors,
}

impl SelectedEvidence {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// `ERR_EXPORT_REQUEST_INVALID` when the selectors are invalid ([`Selectors::validate`]).
    pub fn new(inner: Arc<dyn EvidenceSource>, selectors: &Selectors) -> Result<Self> {
        selectors.validate()?;
        let selectors = selectors.normalized();
        Ok(Self {
            shared: Arc::new(Shared {
                inner,
                matcher: Matcher::new(&selectors),
                joined: Mutex::new(None),
                counts: Mutex::new(BTreeMap::new()),
            }),
            selectors,
        })
    }

    /// The selectors and the records seen and kept so far, by kind.
    pub fn selection(&self) -> Selection {
        let mut counts: BTreeMap<String, SelectionCount> = BTreeMap::new();
        for (kind, seen, selected) in self.shared.counts.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let c = counts.entry(kind.as_str().to_owned()).or_default();
            c.seen += seen;
            c.selected += selected;
        }
        Selection { selectors: self.selectors.clone(), counts }
    }

    fn joined_for(&self, kind: EvidenceKind) -> Result<Option<Joined>> {
        match kind {
            EvidenceKind::Vex | EvidenceKind::Policy => self.shared.joined(),
            _ => Ok(None),
        }
    }
}

fn filtered_kind(kind: Option<EvidenceKind>) -> Option<EvidenceKind> {
    kind.filter(EvidenceKind::has_records)
}

impl EvidenceSource for SelectedEvidence {
    fn describe(&self) -> String {
        self.shared.inner.describe()
    }

    fn list(&self, kind: EvidenceKind) -> Result<Vec<EvidenceItem>> {
        let items = self.shared.inner.list(kind)?;
        if filtered_kind(Some(kind)).is_none() {
            return Ok(items);
        }
        let joined = self.joined_for(kind)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if FileType::of(&item.path) == FileType::Document {
                let doc = read_document(self.shared.inner.open(&item.path)?, &item.path)?;
                let keep = self.shared.keep(kind, &doc, joined.as_ref());
                self.shared.record(&item.path, kind, 1, u64::from(keep));
                if !keep {
                    continue;
                }
            }
            out.push(item);
        }
        Ok(out)
    }

    fn open(&self, path: &ArtifactPath) -> Result<Box<dyn Read + Send>> {
        let Some(kind) = filtered_kind(EvidenceKind::of_path(path)) else { return self.shared.inner.open(path) };
        let joined = self.joined_for(kind)?;
        let reader = self.shared.inner.open(path)?;
        match FileType::of(path) {
            FileType::Lines => {
                Ok(Box::new(LineFilter::new(reader, Arc::clone(&self.shared), joined, kind, path.clone())))
            }
            FileType::Document => {
                // Listed as selected; checked again in case it changed since.
                let doc = read_document(reader, path)?;
                if !self.shared.keep(kind, &doc, joined.as_ref()) {
                    return Err(ExportError::evidence(
                        Location::file(path.as_str()),
                        "the document changed while the run read it: it is no longer selected",
                    ));
                }
                Ok(Box::new(std::io::Cursor::new(doc)))
            }
            FileType::Other => Ok(reader),
        }
    }
}

/// Bytes read from the underlying file at a time.
const CHUNK: usize = 1 << 20;

/// Reads an `.ndjson` file, blanking the lines outside the selection. Lines are found with
/// SIMD `memchr` in a reused buffer and scanned in place; only kept lines are copied out.
struct LineFilter {
    inner: Box<dyn Read + Send>,
    /// Input: `buf[start..end]` is read but not yet processed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Inside a line longer than the record limit: passed on unscanned up to its newline,
    /// for the profile's reader to report.
    overlong: bool,
    out: Vec<u8>,
    pos: usize,
    done: bool,
    shared: Arc<Shared>,
    joined: Option<Joined>,
    kind: EvidenceKind,
    path: ArtifactPath,
    seen: u64,
    selected: u64,
}

impl LineFilter {
    fn new(
        inner: Box<dyn Read + Send>,
        shared: Arc<Shared>,
        joined: Option<Joined>,
        kind: EvidenceKind,
        path: ArtifactPath,
    ) -> Self {
        Self {
            inner,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            eof: false,
            overlong: false,
            out: Vec::new(),
            pos: 0,
            done: false,
            shared,
            joined,
            kind,
            path,
            seen: 0,
            selected: 0,
        }
    }

    /// One line (with its newline, if any): kept as is, or reduced to its newline.
    fn line(&mut self, from: usize, to: usize) {
        let line = &self.buf[from..to];
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        // Blank, or too long to be a record: passed on for the profile's reader (which
        // reports the latter at its line).
        if body.len() as u64 > MAX_RECORD_BYTES || body.iter().all(u8::is_ascii_whitespace) {
            self.out.extend_from_slice(line);
            return;
        }
        self.seen += 1;
        if self.shared.keep(self.kind, line, self.joined.as_ref()) {
            self.selected += 1;
            self.out.extend_from_slice(line);
        } else if line.len() > body.len() {
            self.out.push(b'\n');
        }
    }

    /// Processes what is buffered, reading more when no whole line is left; fills `out`
    /// (empty only at the end of the file).
    fn fill(&mut self) -> std::io::Result<()> {
        self.out.clear();
        self.pos = 0;
        loop {
            if self.overlong {
                let rest = &self.buf[self.start..self.end];
                let n = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
                self.out.extend_from_slice(&rest[..n]);
                self.overlong = rest.get(n.wrapping_sub(1)) != Some(&b'\n');
                self.start += n;
            }
            let mut from = self.start;
            while let Some(i) = memchr::memchr(b'\n', &self.buf[from..self.end]) {
                self.line(from, from + i + 1);
                from += i + 1;
            }
            self.start = from;
            if !self.out.is_empty() {
                return Ok(());
            }
            if self.eof {
                if self.start < self.end {
                    self.line(self.start, self.end);
                    self.start = self.end;
                }
                if self.out.is_empty() {
                    self.done = true;
                    self.shared.record(&self.path, self.kind, self.seen, self.selected);
                }
                return Ok(());
            }
            // Keep the partial line, make room and read more.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end as u64 > MAX_RECORD_BYTES {
                self.overlong = true;
                continue;
            }
            if self.end + CHUNK / 2 > self.buf.len() {
                let grown = (self.buf.len() * 2).max(CHUNK);
                self.buf.resize(grown, 0);
            }
            let n = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }
}

impl Read for LineFilter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{MemoryEvidence, Records};

    fn adv(id: &str, eco: &str, name: &str, modified: &str) -> String {
        format!(
            r#"{{"id":"{id}","aliases":["CVE-{id}"],"modified":"{modified}","affected":[{{"package":{{"ecosystem":"{eco}","name":"{name}"}}}}]}}"#
        )
    }

    fn vex(id: &str, vuln: &str, product: &str, ts: &str) -> String {
        format!(
            r#"{{"@context":"https://openvex.dev/ns/v0.2.0","@id":"{id}","author":"a","timestamp":"{ts}","version":1,"statements":[{{"vulnerability":{{"name":"{vuln}"}},"products":[{{"@id":"{product}"}}],"status":"fixed"}}]}}"#
        )
    }

    fn finding(id: &str, vuln: &str, product: &str) -> String {
        format!(
            r#"{{"findingId":"{id}","policyId":"p","ruleId":"r","product":"{product}","vulnerability":"{vuln}","decision":"deny","evaluatedAt":"2024-03-01T00:00:00Z"}}"#
        )
    }

    fn evidence() -> MemoryEvidence {
        let mut ev = MemoryEvidence::new();
        let lines = [
            adv("A1", "PyPI", "Django", "2024-01-01T00:00:00Z"),
            adv("A2", "PyPI", "django-rest-framework", "2024-02-01T00:00:00Z"),
            adv("A3", "Alpine:v3.19", "openssl", "2024-03-01T00:00:00Z"),
            adv("A4", "npm", "@angular/core", "2024-04-01T00:00:00Z"),
            adv("A5", "Maven", "org.yaml:snakeyaml", "2024-05-01T00:00:00Z"),
        ];
        ev.insert("advisories/all.ndjson", lines.join("\n") + "\n").unwrap();
        ev.insert("advisories/doc.json", adv("D1", "Alpine:v3.18", "musl", "2024-06-01T00:00:00Z")).unwrap();
        ev.insert("vex/a.json", vex("v1", "CVE-A3", "pkg:oci/image@sha256:00", "2024-03-02T00:00:00Z")).unwrap();
        ev.insert("vex/b.json", vex("v2", "CVE-X", "pkg:pypi/django@4.2", "2024-03-02T00:00:00Z")).unwrap();
        let f = [finding("F1", "A4", "pkg:npm/%40angular/core@17.0.0"), finding("F2", "CVE-X", "pkg:golang/x@1")];
        ev.insert("policy/f.ndjson", f.join("\n")).unwrap();
        ev.insert("java/index.ndjson", concat!(
            r#"{"groupId":"org.yaml","artifactId":"snakeyaml","version":"1.33","sha1":"0000000000000000000000000000000000000000"}"#,
            "\n",
            r#"{"groupId":"com.example","artifactId":"x","version":"1","sha1":"0000000000000000000000000000000000000000"}"#,
        )).unwrap();
        ev
    }

    fn selected(s: &Selectors) -> (BTreeMap<EvidenceKind, Vec<String>>, Selection) {
        let sel = SelectedEvidence::new(Arc::new(evidence()), s).unwrap();
        let mut out = BTreeMap::new();
        for kind in [EvidenceKind::Advisory, EvidenceKind::Vex, EvidenceKind::Policy, EvidenceKind::Java] {
            let ids = Records::new(&sel, kind)
                .unwrap()
                .map(|r| {
                    let v = r.unwrap().value;
                    ["id", "@id", "findingId", "artifactId"]
                        .iter()
                        .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
                        .unwrap()
                })
                .collect();
            out.insert(kind, ids);
        }
        (out, sel.selection())
    }

    fn ids(s: &Selectors, kind: EvidenceKind) -> Vec<String> {
        selected(s).0.remove(&kind).unwrap()
    }

    #[test]
    fn empty_selectors_keep_everything() {
        let (all, selection) = selected(&Selectors::default());
        assert_eq!(all[&EvidenceKind::Advisory], ["A1", "A2", "A3", "A4", "A5", "D1"]);
        assert_eq!(all[&EvidenceKind::Policy], ["F1", "F2"]);
        assert_eq!(selection.seen(), selection.selected());
        assert_eq!(selection.seen(), 12);
    }

    #[test]
    fn ecosystems_select_by_name_and_family() {
        let s = Selectors::default().ecosystems(["pypi"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A1", "A2"]);
        let s = Selectors::default().ecosystems(["Alpine"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A3", "D1"]);
        let s = Selectors::default().ecosystems(["Alpine:v3.19"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A3"]);
        // "Alp" is no ecosystem and no family.
        let s = Selectors::default().ecosystems(["Alp"]);
        assert!(ids(&s, EvidenceKind::Advisory).is_empty());
    }

    #[test]
    fn packages_match_at_a_boundary() {
        let s = Selectors::default().packages(["pkg:pypi/django"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A1"], "django, not django-rest-framework");
        let s = Selectors::default().packages(["pkg:npm/@angular/"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A4"]);
        let s = Selectors::default().packages(["pkg:maven/org.yaml"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A5"]);
        assert_eq!(ids(&s, EvidenceKind::Java), ["snakeyaml"]);
        let s = Selectors::default().packages(["pkg:apk/alpine/"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A3", "D1"]);
    }

    #[test]
    fn ids_match_aliases_and_window_is_half_open() {
        let s = Selectors::default().ids(["cve-a2", "D1"]);
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A2", "D1"]);
        let t = |s: &str| Timestamp::parse(s).unwrap();
        let s =
            Selectors::default().modified_since(t("2024-02-01T00:00:00Z")).modified_until(t("2024-04-01T00:00:00Z"));
        assert_eq!(ids(&s, EvidenceKind::Advisory), ["A2", "A3"]);
    }

    #[test]
    fn vex_and_findings_follow_products_or_joined_advisories() {
        let s = Selectors::default().ecosystems(["Alpine"]);
        // v1's product is an image, but its vulnerability is an Alpine advisory's alias.
        assert_eq!(ids(&s, EvidenceKind::Vex), ["v1"]);
        let s = Selectors::default().ecosystems(["PyPI"]);
        assert_eq!(ids(&s, EvidenceKind::Vex), ["v2"], "by product purl");
        let s = Selectors::default().packages(["pkg:npm/@angular/"]);
        assert_eq!(ids(&s, EvidenceKind::Policy), ["F1"], "an encoded %40 scope matches");
        let s = Selectors::default().ids(["CVE-X"]);
        assert_eq!(ids(&s, EvidenceKind::Vex), ["v2"]);
        assert_eq!(ids(&s, EvidenceKind::Policy), ["F2"]);
        assert_eq!(ids(&s, EvidenceKind::Java).len(), 2, "ids do not apply to the Maven index");
    }

    #[test]
    fn line_numbers_survive_and_counts_are_recorded() {
        let mut ev = evidence();
        ev.insert("advisories/bad.ndjson", format!("{}\n{{broken\n", adv("Z", "npm", "z", "2024-01-01T00:00:00Z")))
            .unwrap();
        let sel = SelectedEvidence::new(Arc::new(ev), &Selectors::default().ecosystems(["PyPI"])).unwrap();
        let err = Records::new(&sel, EvidenceKind::Advisory).unwrap().find_map(|r| r.err()).unwrap();
        assert!(err.to_string().contains("advisories/bad.ndjson:2"), "malformed record kept at its line: {err}");
        let (_, selection) = selected(&Selectors::default().ecosystems(["PyPI"]));
        assert_eq!(selection.counts["advisory"], SelectionCount { seen: 6, selected: 2 });
        assert_eq!(selection.counts["java"], SelectionCount { seen: 2, selected: 0 });
    }

    #[test]
    fn the_byte_prefilter_never_drops_a_selected_record() {
        let m = Matcher::new(&Selectors::default().ecosystems(["PyPI"]));
        let keep = |raw: &str| !m.certainly_unselected(raw.as_bytes());
        // Disguised keys or values are left to the full parse.
        assert!(keep(r#"{"id":"E","affected":[{"package":{"ecosyst\u0065m":"PyPI","name":"x"}}]}"#));
        assert!(keep(r#"{"id":"E","affected":[{"package":{"ecosystem":"Py\u0050I","name":"x"}}]}"#));
        assert!(keep(
            r#"{"id":"E","affected":[{"package":{"ecosystem" :
            "pypi","name":"x"}}]}"#
        ));
        // No ecosystem at all: undecided (the parse decides, and reports broken records).
        assert!(keep(r#"{"id":"E","modified":"2024-01-01T00:00:00Z"}"#));
        assert!(keep(r#"{"id":"E","affected":[{"package":{"ecosystem":7}}]}"#));
        // The word in a text and a non-matching real value: certainly not selected.
        assert!(!keep(
            r#"{"details":"the \"ecosystem\": \"PyPI\" or ecosystem","affected":[{"package":{"ecosystem":"npm"}}]}"#
        ));
        assert!(!keep(r#"{"summary":"ecosystem","affected":[{"package":{"ecosystem":"npm"}}]}"#));
        let t = |s: &str| Timestamp::parse(s).unwrap();
        let m = Matcher::new(&Selectors::default().modified_since(t("2024-06-01T00:00:00Z")));
        let keep = |raw: &str| !m.certainly_unselected(raw.as_bytes());
        assert!(!keep(r#"{"modified":"2024-01-01T00:00:00Z"}"#));
        assert!(keep(r#"{"modified":"2024-07-01T00:00:00Z"}"#));
        assert!(keep(r#"{"modified":"2024-01-01T00:00:00Z","database_specific":{"modified":"2024-07-01T00:00:00Z"}}"#));
        assert!(keep(r#"{"modified":"someday"}"#), "unparseable: undecided");
    }

    proptest::proptest! {
        /// Differential: whatever the byte pre-filter drops, the full scan drops too.
        #[test]
        fn the_prefilter_agrees_with_the_full_scan(
            ecos in proptest::collection::vec(0usize..8, 0..3),
            decoy in 0usize..8,
            sel in 0usize..5,
            month in 1u32..13,
            nested_month in proptest::option::of(1u32..13),
            window in proptest::bool::ANY,
            spaced in proptest::bool::ANY,
        ) {
            const ECOS: [&str; 8] = ["PyPI", "pypi", "Py\\u0050I", "npm", "Alpine:v3.20", "Alpine", "Alpine:v3.2", "Debian:12"];
            const SELS: [&str; 5] = ["PyPI", "alpine", "Alpine:v3.20", "npm", "Debian"];
            let colon = if spaced { " : " } else { ":" };
            let affected: Vec<String> = ecos
                .iter()
                .map(|e| format!(r#"{{"package":{{"ecosystem"{colon}"{}","name":"x"}}}}"#, ECOS[*e]))
                .collect();
            let nested = nested_month.map_or(String::new(), |m| format!(r#","database_specific":{{"modified":"2024-{m:02}-01T00:00:00Z","ecosystem":"{}"}}"#, ECOS[decoy]));
            let raw = format!(
                r#"{{"id":"X","summary":"ecosystem","modified"{colon}"2024-{month:02}-01T00:00:00Z","affected":[{}]{nested}}}"#,
                affected.join(",")
            );
            let mut selectors = Selectors::default().ecosystems([SELS[sel]]);
            if window {
                selectors = selectors.modified_since(Timestamp::parse("2024-06-01T00:00:00Z").unwrap());
            }
            let m = Matcher::new(&selectors);
            let a: AdvisoryScan<'_> = serde_json::from_str(&raw).unwrap();
            let full = m.time_ok(Timestamp::parse(a.modified.as_deref().unwrap()).unwrap())
                && m.packages_ok(a.packages());
            if m.certainly_unselected(raw.as_bytes()) {
                proptest::prop_assert!(!full, "dropped a selected record: {}", raw);
            }
        }
    }

    #[test]
    fn line_filter_keeps_bytes_and_lines_exact() {
        let a = adv("A1", "PyPI", "django", "2024-01-01T00:00:00Z");
        let b = adv("B1", "npm", "x", "2024-01-01T00:00:00Z");
        let read = |input: String| {
            let mut ev = MemoryEvidence::new();
            ev.insert("advisories/x.ndjson", input).unwrap();
            let sel = SelectedEvidence::new(Arc::new(ev), &Selectors::default().ecosystems(["PyPI"])).unwrap();
            let mut out = Vec::new();
            sel.open(&ArtifactPath::parse("advisories/x.ndjson").unwrap()).unwrap().read_to_end(&mut out).unwrap();
            (String::from_utf8(out).unwrap(), sel.selection().counts["advisory"])
        };
        let (out, c) = read(format!("{b}\r\n\n{a}\r\n  \n{b}\n{a}"));
        assert_eq!(out, format!("\n\n{a}\r\n  \n\n{a}"), "no final newline kept as is");
        assert_eq!(c, SelectionCount { seen: 4, selected: 2 });
        let (out, _) = read(format!("{a}\n{b}"));
        assert_eq!(out, format!("{a}\n"), "a dropped last line without newline leaves nothing");
        // Many lines across buffer refills.
        let many: String = (0..20_000).map(|i| if i % 3 == 0 { format!("{a}\n") } else { format!("{b}\n") }).collect();
        let (out, c) = read(many);
        assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 6667);
        assert_eq!(out.lines().count(), 20_000);
        assert_eq!(c, SelectionCount { seen: 20_000, selected: 6667 });
    }

    #[test]
    fn an_overlong_line_passes_through_for_the_reader_to_report() {
        let a = adv("A1", "PyPI", "django", "2024-01-01T00:00:00Z");
        let long = format!("{{\"id\":\"{}\"}}", "x".repeat(MAX_RECORD_BYTES as usize + 10));
        let mut ev = MemoryEvidence::new();
        ev.insert("advisories/x.ndjson", format!("{a}\n{long}\n{a}\n")).unwrap();
        let sel = SelectedEvidence::new(Arc::new(ev), &Selectors::default().ecosystems(["PyPI"])).unwrap();
        let err = Records::new(&sel, EvidenceKind::Advisory).unwrap().find_map(|r| r.err()).unwrap();
        assert!(err.to_string().contains("advisories/x.ndjson:2: line longer than 64 MiB"), "{err}");
    }

    #[test]
    fn bad_selectors_name_the_field() {
        let cases: Vec<(Selectors, &str)> = vec![
            (Selectors::default().packages(["django"]), "selectors.packages[0]"),
            (Selectors::default().packages(["pkg:pypi/django", "pkg:pypi/django@4.2"]), "selectors.packages[1]"),
            (Selectors::default().packages(["pkg:pypi/x?a=b"]), "selectors.packages[0]"),
            (Selectors::default().ecosystems([""]), "selectors.ecosystems[0]"),
            (Selectors::default().ids(["CVE 1"]), "selectors.ids[0]"),
            (
                Selectors::default()
                    .modified_since(Timestamp::parse("2024-02-01T00:00:00Z").unwrap())
                    .modified_until(Timestamp::parse("2024-01-01T00:00:00Z").unwrap()),
                "selectors.modifiedUntil",
            ),
            (Selectors::default().ids((0..=MAX_SELECTOR_ENTRIES).map(|i| format!("CVE-{i}"))), "selectors"),
        ];
        for (s, field) in cases {
            let e = s.validate().unwrap_err();
            assert_eq!(e.code(), "ERR_EXPORT_REQUEST_INVALID");
            assert!(e.to_string().contains(&format!("{field}:")), "{field}: {e}");
        }
        let e = serde_json::from_str::<Selectors>(r#"{"ecosystem":["PyPI"]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `ecosystem`"), "{e}");
    }

    #[test]
    fn order_does_not_matter_and_narrowing_never_widens() {
        let a = Selectors::default().ecosystems(["npm", "PyPI", "npm"]).ids(["B", "A"]);
        let b = Selectors::default().ecosystems(["PyPI", "npm"]).ids(["A", "B"]);
        assert_eq!(a.normalized(), b.normalized());
        let t = |s: &str| Timestamp::parse(s).unwrap();
        let profile = Selectors::default().packages(["pkg:npm/@angular/"]).modified_since(t("2024-01-01T00:00:00Z"));
        let run = profile.narrow(&Selectors::default().packages(["pkg:npm/@angular/core"]).ids(["X"])).unwrap();
        assert_eq!(run.packages, ["pkg:npm/@angular/core"]);
        assert_eq!(run.modified_since, Some(t("2024-01-01T00:00:00Z")), "the default window stays");
        let e = profile.narrow(&Selectors::default().packages(["pkg:npm/lodash"])).unwrap_err();
        assert!(e.to_string().contains("selectors.packages[0]"), "{e}");
        let e = profile.narrow(&Selectors::default().modified_since(t("2023-01-01T00:00:00Z"))).unwrap_err();
        assert!(e.to_string().contains("selectors.modifiedSince"), "{e}");
        assert_eq!(Selectors::default().narrow(&a).unwrap().ecosystems.len(), 3, "no defaults: the run's own");
    }
}
