use crate::raw::{base_manifest, export_raw, sorted, span_progress, RecordWriter, ALL_TARGETS};
use exportcore::bundle::write_bundle;
use exportcore::evidence::schema::vex_statements;
use exportcore::purl;
use exportcore::{
    check_supported, Compression, EvidenceKind, ExportContext, Format, Profile, ProfileDescriptor, Progress, Records,
    Result, RunRequest, Timestamp,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The `json:policy` profile: the raw files plus the policy overlay (see the crate docs and
/// `docs/records.md`).
///
/// Memory: the overlay join keeps the VEX statements and the advisories that findings refer
/// to in memory (not all advisories); findings and raw records are streamed.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonPolicy;

/// What the overlay keeps of an advisory.
#[derive(Clone, Debug)]
struct AdvisoryInfo {
    id: String,
    aliases: Vec<String>,
    summary: Option<String>,
    severity: Option<String>,
    modified: String,
    withdrawn: Option<String>,
    /// (ecosystem family, package name, fixed versions)
    packages: Vec<(String, String, Vec<String>)>,
}

impl AdvisoryInfo {
    fn from_osv(v: &Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let severity = v
            .pointer("/database_specific/severity")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| v.pointer("/severity/0/score").and_then(Value::as_str).map(str::to_owned));
        let mut packages = Vec::new();
        for aff in v.get("affected").and_then(Value::as_array).into_iter().flatten() {
            let eco = aff.pointer("/package/ecosystem").and_then(Value::as_str).unwrap_or_default();
            let family = eco.split(':').next().unwrap_or_default().to_owned();
            let name = aff.pointer("/package/name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let mut fixed = BTreeSet::new();
            for r in aff.get("ranges").and_then(Value::as_array).into_iter().flatten() {
                for e in r.get("events").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(f) = e.get("fixed").and_then(Value::as_str) {
                        fixed.insert(f.to_owned());
                    }
                }
            }
            packages.push((family, name, fixed.into_iter().collect()));
        }
        Self {
            id: s("id").unwrap_or_default(),
            aliases: strings(v.get("aliases")),
            summary: s("summary"),
            severity,
            modified: s("modified").unwrap_or_default(),
            withdrawn: s("withdrawn"),
            packages,
        }
    }

    fn matches_product(&self, product: &str) -> Option<&(String, String, Vec<String>)> {
        let (eco, name) = purl::osv_package(product)?;
        self.packages.iter().find(|(e, n, _)| {
            e == eco && (n == &name || (eco == "PyPI" && n.eq_ignore_ascii_case(&name.replace('_', "-"))))
        })
    }

    fn to_json(&self, product: &str) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("aliases".into(), json!(self.aliases));
        o.insert("modified".into(), json!(self.modified));
        if let Some(s) = &self.summary {
            o.insert("summary".into(), json!(s));
        }
        if let Some(s) = &self.severity {
            o.insert("severity".into(), json!(s));
        }
        if let Some(w) = &self.withdrawn {
            o.insert("withdrawn".into(), json!(w));
        }
        if let Some((_, _, fixed)) = self.matches_product(product) {
            o.insert("fixedVersions".into(), json!(fixed));
        }
        Value::Object(o)
    }
}

/// What the overlay keeps of a VEX statement.
#[derive(Clone, Debug)]
struct VexInfo {
    /// Ordering key: latest wins.
    when: (Timestamp, String, usize),
    status: String,
    justification: Option<String>,
    statement: Option<String>,
    document: String,
}

impl VexInfo {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("status".into(), json!(self.status));
        o.insert("document".into(), json!(self.document));
        o.insert("timestamp".into(), json!(self.when.0.to_string()));
        if let Some(j) = &self.justification {
            o.insert("justification".into(), json!(j));
        }
        if let Some(s) = &self.statement {
            o.insert("statement".into(), json!(s));
        }
        Value::Object(o)
    }
}

#[derive(Default)]
struct Join {
    advisories: BTreeMap<String, Vec<AdvisoryInfo>>,
    vex: BTreeMap<(String, String), VexInfo>,
    newest: Option<Timestamp>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

impl Join {
    fn load(ctx: &ExportContext<'_>) -> Result<Self> {
        let evidence = ctx.evidence();
        let mut join = Join::default();
        // Pass 1: which vulnerabilities do findings mention?
        let mut wanted = BTreeSet::new();
        for rec in Records::new(evidence, EvidenceKind::Policy)? {
            let rec = rec?;
            join.newest = join.newest.max(rec.timestamp);
            wanted.insert(str_field(&rec.value, "vulnerability").to_owned());
        }
        // Pass 2: keep only those advisories.
        for rec in Records::new(evidence, EvidenceKind::Advisory)? {
            let rec = rec?;
            join.newest = join.newest.max(rec.timestamp);
            let info = AdvisoryInfo::from_osv(&rec.value);
            let keys: BTreeSet<&String> =
                std::iter::once(&info.id).chain(&info.aliases).filter(|k| wanted.contains(*k)).collect();
            for k in keys {
                join.advisories.entry(k.clone()).or_default().push(info.clone());
            }
            ctx.check_cancelled()?;
        }
        // Pass 3: VEX statements by (vulnerability, product); the latest statement wins.
        for rec in Records::new(evidence, EvidenceKind::Vex)? {
            let rec = rec?;
            join.newest = join.newest.max(rec.timestamp);
            for st in vex_statements(&rec.value) {
                let info = VexInfo {
                    when: (st.timestamp, st.document.clone(), st.index),
                    status: st.status.clone(),
                    justification: st.justification.clone(),
                    statement: st.statement.clone(),
                    document: st.document.clone(),
                };
                for pid in &st.products {
                    for v in &st.vulnerabilities {
                        let key = (v.clone(), pid.clone());
                        if join.vex.get(&key).is_none_or(|old| old.when < info.when) {
                            join.vex.insert(key, info.clone());
                        }
                    }
                }
            }
        }
        Ok(join)
    }

    fn advisory_for(&self, vuln: &str, product: &str) -> Option<&AdvisoryInfo> {
        let cands = self.advisories.get(vuln)?;
        let mut sorted: Vec<&AdvisoryInfo> = cands.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.iter().find(|a| a.matches_product(product).is_some()).or(sorted.first()).copied()
    }

    fn vex_for(&self, vulns: &[&str], product: &str) -> Option<&VexInfo> {
        let unversioned = purl::unversioned(product);
        let products: Vec<&str> = std::iter::once(product).chain(unversioned.as_deref()).collect();
        let mut best: Option<&VexInfo> = None;
        for v in vulns {
            for p in &products {
                if let Some(info) = self.vex.get(&((*v).to_owned(), (*p).to_owned())) {
                    if best.is_none_or(|b| b.when < info.when) {
                        best = Some(info);
                    }
                }
            }
        }
        best
    }

    /// The overlay record of one finding.
    fn overlay(&self, finding: &Value) -> Value {
        let product = str_field(finding, "product");
        let vuln = str_field(finding, "vulnerability");
        let decision = str_field(finding, "decision");
        let advisory = self.advisory_for(vuln, product);
        let mut ids: Vec<&str> = vec![vuln];
        if let Some(a) = advisory {
            ids.push(&a.id);
            ids.extend(a.aliases.iter().map(String::as_str));
        }
        let vex = self.vex_for(&ids, product);

        let mut verdict = decision;
        let mut reasons = Vec::new();
        let mut r =
            format!("policy {} rule {}: {decision}", str_field(finding, "policyId"), str_field(finding, "ruleId"));
        if let Some(why) = finding.get("reason").and_then(Value::as_str) {
            r.push_str(&format!(" ({why})"));
        }
        reasons.push(r);
        match advisory {
            None => reasons.push(format!("no advisory for {vuln} in the evidence")),
            Some(a) => match &a.withdrawn {
                Some(w) => {
                    verdict = "allow";
                    reasons.push(format!("advisory {} was withdrawn at {w}", a.id));
                }
                None if a.matches_product(product).is_none() => {
                    reasons.push(format!("advisory {} matched by id; it lists no package for {product}", a.id))
                }
                None => {}
            },
        }
        match vex {
            None => reasons.push(format!("no VEX statement for {vuln} on {product}")),
            Some(v) => {
                let detail =
                    v.justification.as_deref().or(v.statement.as_deref()).map(|d| format!(": {d}")).unwrap_or_default();
                reasons.push(format!("VEX {}{detail} ({} at {})", v.status, v.document, v.when.0));
                if matches!(v.status.as_str(), "not_affected" | "fixed") {
                    verdict = "allow";
                }
            }
        }
        let mut o = Map::new();
        for key in ["findingId", "policyId", "ruleId", "product", "vulnerability", "severity", "evaluatedAt"] {
            if let Some(v) = finding.get(key) {
                o.insert(key.into(), v.clone());
            }
        }
        o.insert("decision".into(), json!(decision));
        o.insert("verdict".into(), json!(verdict));
        o.insert("reasons".into(), json!(reasons));
        o.insert("advisory".into(), advisory.map_or(Value::Null, |a| a.to_json(product)));
        o.insert("vex".into(), vex.map_or(Value::Null, VexInfo::to_json));
        Value::Object(o)
    }
}

impl Profile for JsonPolicy {
    fn descriptor(&self) -> ProfileDescriptor {
        ProfileDescriptor::new(
            "json:policy",
            "json:raw plus the policy overlay: findings joined with advisories and VEX into effective verdicts",
        )
        .targets(ALL_TARGETS.iter().copied())
        .formats([Format::Json, Format::Ndjson])
        .compressions(Compression::ALL.iter().copied())
    }

    fn validate(&self, request: &RunRequest) -> Result<()> {
        check_supported(&self.descriptor(), request)
    }

    fn export(&self, ctx: &mut ExportContext<'_>) -> Result<()> {
        let targets = sorted(ctx.targets_or(&ALL_TARGETS));
        let formats = sorted(ctx.formats_or(&[Format::Ndjson]));
        let compression = ctx.compression_or(Compression::Zstd);
        let (mut files, raw_records, newest_raw) = export_raw(ctx, &targets, &formats, (0, 60))?;
        ctx.progress(span_progress((60, 90), 0, 1, raw_records));
        let join = Join::load(ctx)?;
        let mut writers =
            formats.iter().map(|f| RecordWriter::new(ctx, "policy/overlay", *f)).collect::<Result<Vec<_>>>()?;
        let mut findings = 0u64;
        for rec in Records::new(ctx.evidence(), EvidenceKind::Policy)? {
            let overlay = join.overlay(&rec?.value);
            for w in &mut writers {
                w.push(&overlay)?;
            }
            findings += 1;
        }
        if raw_records == 0 && findings == 0 {
            ctx.no_records("policy findings and raw targets")?;
        }
        for w in writers {
            files.push(w.finish()?);
        }
        let anchor = ctx.time_anchor(newest_raw.max(join.newest));
        let mut manifest = base_manifest("json:policy", anchor, &targets, &formats, compression);
        manifest.metadata("findings", findings);
        let name = format!("json-policy{}", exportcore::archive::archive_suffix(compression));
        write_bundle(ctx, &name, compression, manifest, files)?;
        let total = raw_records + findings;
        ctx.progress(Progress { percent: 100, items_completed: total, items_total: total });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_of(advisories: &[Value], vex: &[Value]) -> Join {
        let mut j = Join::default();
        for a in advisories {
            let info = AdvisoryInfo::from_osv(a);
            for k in std::iter::once(&info.id).chain(&info.aliases) {
                j.advisories.entry(k.clone()).or_default().push(info.clone());
            }
        }
        for (d, doc) in vex.iter().enumerate() {
            for (i, st) in doc["statements"].as_array().unwrap().iter().enumerate() {
                let ts = Timestamp::parse(doc["timestamp"].as_str().unwrap()).unwrap();
                let info = VexInfo {
                    when: (ts, format!("doc{d}"), i),
                    status: st["status"].as_str().unwrap().into(),
                    justification: st.get("justification").and_then(Value::as_str).map(Into::into),
                    statement: None,
                    document: format!("doc{d}"),
                };
                let key = (
                    st["vulnerability"]["name"].as_str().unwrap().to_owned(),
                    st["products"][0]["@id"].as_str().unwrap().to_owned(),
                );
                if j.vex.get(&key).is_none_or(|o| o.when < info.when) {
                    j.vex.insert(key, info);
                }
            }
        }
        j
    }

    fn finding(vuln: &str, product: &str, decision: &str) -> Value {
        json!({"findingId": "F1", "policyId": "p@1", "ruleId": "r", "product": product, "vulnerability": vuln,
               "decision": decision, "evaluatedAt": "2025-01-01T00:00:00Z"})
    }

    fn osv(id: &str, alias: &str, eco: &str, name: &str, withdrawn: bool) -> Value {
        let mut v = json!({"id": id, "aliases": [alias], "modified": "2024-01-01T00:00:00Z",
            "affected": [{"package": {"ecosystem": eco, "name": name}, "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.0"}]}]}]});
        if withdrawn {
            v["withdrawn"] = json!("2024-02-01T00:00:00Z");
        }
        v
    }

    fn vex(ts: &str, vuln: &str, product: &str, status: &str) -> Value {
        json!({"timestamp": ts, "statements": [{"vulnerability": {"name": vuln}, "products": [{"@id": product}], "status": status, "justification": "component_not_present"}]})
    }

    #[test]
    fn verdicts() {
        let advisories = [
            osv("GHSA-a", "CVE-1", "npm", "lodash", false),
            osv("GHSA-w", "CVE-2", "npm", "jwt", true),
            osv("PYSEC-x", "CVE-3", "PyPI", "Django", false),
        ];
        let vexes = [
            vex("2024-01-01T00:00:00Z", "CVE-1", "pkg:npm/lodash@1.0", "under_investigation"),
            vex("2025-01-01T00:00:00Z", "CVE-1", "pkg:npm/lodash@1.0", "not_affected"),
            vex("2025-01-01T00:00:00Z", "CVE-3", "pkg:pypi/django", "affected"),
        ];
        let j = join_of(&advisories, &vexes);
        // Latest VEX (not_affected) overrides deny.
        let o = j.overlay(&finding("CVE-1", "pkg:npm/lodash@1.0", "deny"));
        assert_eq!(o["verdict"], "allow");
        assert_eq!(o["vex"]["status"], "not_affected");
        assert_eq!(o["advisory"]["id"], "GHSA-a");
        assert_eq!(o["advisory"]["fixedVersions"], json!(["2.0"]));
        // Withdrawn advisory allows.
        let o = j.overlay(&finding("CVE-2", "pkg:npm/jwt@8", "deny"));
        assert_eq!(o["verdict"], "allow");
        assert!(o["reasons"].to_string().contains("withdrawn"));
        // Unversioned VEX product matches; affected keeps the decision; PyPI names are case-insensitive.
        let o = j.overlay(&finding("CVE-3", "pkg:pypi/django@4.2.1", "warn"));
        assert_eq!(o["verdict"], "warn");
        assert_eq!(o["vex"]["status"], "affected");
        assert!(o["advisory"].get("fixedVersions").is_some());
        // No advisory, no VEX: decision stands, reasons say so.
        let o = j.overlay(&finding("CVE-404", "pkg:npm/x@1", "deny"));
        assert_eq!(o["verdict"], "deny");
        assert_eq!(o["advisory"], Value::Null);
        assert!(o["reasons"].to_string().contains("no advisory"));
        assert!(o["reasons"].to_string().contains("no VEX"));
    }
}
