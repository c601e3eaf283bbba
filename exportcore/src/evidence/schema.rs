//! Structural checks of evidence records: OSV 1.6 advisories, OpenVEX 0.2.0 documents, policy
//! findings and Maven index entries. Each check returns the record's own timestamp.
//!
//! The checks cover what our adapters rely on and what the specs mark required; unknown
//! fields are kept (raw facts are never rewritten).

use super::EvidenceKind;
use crate::model::Timestamp;
use serde_json::{Map, Value};

type Check<T> = std::result::Result<T, String>;

/// Checks `value` as a record of `kind`; returns its timestamp.
pub fn check(kind: EvidenceKind, value: &Value) -> Check<Option<Timestamp>> {
    match kind {
        EvidenceKind::Advisory => check_osv(value).map(Some),
        EvidenceKind::Vex => check_openvex(value).map(Some),
        EvidenceKind::Policy => check_finding(value).map(Some),
        EvidenceKind::Java => check_maven(value).map(|()| None),
        EvidenceKind::Portal | EvidenceKind::Blob => Ok(None),
    }
}

fn obj<'a>(v: &'a Value, what: &str) -> Check<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| format!("{what} must be a JSON object"))
}

fn req_str<'a>(o: &'a Map<String, Value>, key: &str, what: &str) -> Check<&'a str> {
    match o.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("{what}: \"{key}\" must not be empty")),
        Some(_) => Err(format!("{what}: \"{key}\" must be a string")),
        None => Err(format!("{what}: missing required field \"{key}\"")),
    }
}

fn opt_str<'a>(o: &'a Map<String, Value>, key: &str, what: &str) -> Check<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{what}: \"{key}\" must be a string")),
    }
}

fn time(s: &str, key: &str, what: &str) -> Check<Timestamp> {
    Timestamp::parse(s).map_err(|e| format!("{what}: \"{key}\": {e}"))
}

fn opt_array<'a>(o: &'a Map<String, Value>, key: &str, what: &str) -> Check<&'a [Value]> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("{what}: \"{key}\" must be an array")),
    }
}

/// OSV schema 1.6: `id` and `modified` are required; the shapes of `aliases`, `affected`
/// (package, ranges with their events, versions) and `severity` are checked when present.
/// The rules live in [`super::osv::Osv::check`], so a typed view parsed straight from bytes
/// and a `Value` are judged alike.
pub fn check_osv(v: &Value) -> Check<Timestamp> {
    obj(v, "OSV advisory")?;
    let osv = <super::osv::Osv<'_> as serde::Deserialize>::deserialize(v).map_err(|e| format!("OSV advisory: {e}"))?;
    osv.check()
}

/// The four OpenVEX statuses.
pub const VEX_STATUSES: [&str; 4] = ["not_affected", "affected", "fixed", "under_investigation"];

/// OpenVEX 0.2.0 document: `@context`, `@id`, `author`, `timestamp`, `version`, and statements
/// each with a vulnerability name, products, a known status, a justification or impact
/// statement for `not_affected` and an action statement for `affected`.
pub fn check_openvex(v: &Value) -> Check<Timestamp> {
    let o = obj(v, "OpenVEX document")?;
    let ctx = req_str(o, "@context", "OpenVEX document")?;
    let id = req_str(o, "@id", "OpenVEX document")?;
    let what = format!("OpenVEX document {id}");
    if !ctx.starts_with("https://openvex.dev/ns") {
        return Err(format!("{what}: \"@context\" is not an OpenVEX context: {ctx:?}"));
    }
    req_str(o, "author", &what)?;
    let ts = time(req_str(o, "timestamp", &what)?, "timestamp", &what)?;
    match o.get("version") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v >= 1) => {}
        Some(_) => return Err(format!("{what}: \"version\" must be an integer >= 1")),
        None => return Err(format!("{what}: missing required field \"version\"")),
    }
    let statements = match o.get("statements") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => return Err(format!("{what}: \"statements\" must be a non-empty array")),
    };
    for (i, st) in statements.iter().enumerate() {
        let w = format!("{what}: statements[{i}]");
        let s = obj(st, &w)?;
        vex_vulnerability_name(s).ok_or_else(|| format!("{w}: \"vulnerability.name\" is required"))?;
        let status = req_str(s, "status", &w)?;
        if !VEX_STATUSES.contains(&status) {
            return Err(format!("{w}: unknown status {status:?}"));
        }
        let products = opt_array(s, "products", &w)?;
        if products.is_empty() {
            return Err(format!("{w}: \"products\" must be a non-empty array"));
        }
        for (j, p) in products.iter().enumerate() {
            if vex_product_id(p).is_none() {
                return Err(format!("{w}: products[{j}] needs an \"@id\""));
            }
        }
        if let Some(t) = opt_str(s, "timestamp", &w)? {
            time(t, "timestamp", &w)?;
        }
        if status == "not_affected" && s.get("justification").is_none() && s.get("impact_statement").is_none() {
            return Err(format!("{w}: not_affected needs a justification or impact_statement"));
        }
        if status == "affected" && s.get("action_statement").is_none() {
            return Err(format!("{w}: affected needs an action_statement"));
        }
    }
    Ok(ts)
}

/// One OpenVEX statement, flattened for joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VexStatement {
    /// The document's `@id`.
    pub document: String,
    /// Position of the statement in the document.
    pub index: usize,
    /// The statement's `timestamp`, else the document's.
    pub timestamp: Timestamp,
    /// `vulnerability.name`, then its `aliases`.
    pub vulnerabilities: Vec<String>,
    /// Product identifiers (`@id`, usually purls).
    pub products: Vec<String>,
    /// `status`.
    pub status: String,
    /// `justification`, if any.
    pub justification: Option<String>,
    /// The impact statement, action statement or status notes, if any.
    pub statement: Option<String>,
}

impl VexStatement {
    /// Which of two statements on the same (vulnerability, product) wins: the greater —
    /// the later timestamp, then the document id, then the position.
    pub fn precedence(&self) -> (Timestamp, &str, usize) {
        (self.timestamp, &self.document, self.index)
    }
}

/// The statements of a checked OpenVEX document (see [`check_openvex`]).
pub fn vex_statements(doc: &Value) -> Vec<VexStatement> {
    let doc_ts = doc.get("timestamp").and_then(Value::as_str).and_then(|t| Timestamp::parse(t).ok());
    let doc_ts = doc_ts.unwrap_or_else(|| Timestamp::from_unix(0).unwrap_or_else(|_| Timestamp::now()));
    let document = doc.get("@id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut out = Vec::new();
    for (index, st) in doc.get("statements").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let Some(st) = st.as_object() else { continue };
        let text = |k: &str| st.get(k).and_then(Value::as_str).map(str::to_owned);
        let mut vulnerabilities: Vec<String> = vex_vulnerability_name(st).map(str::to_owned).into_iter().collect();
        if let Some(aliases) = st.get("vulnerability").and_then(|v| v.get("aliases")).and_then(Value::as_array) {
            vulnerabilities.extend(aliases.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        out.push(VexStatement {
            document: document.clone(),
            index,
            timestamp: text("timestamp").and_then(|t| Timestamp::parse(&t).ok()).unwrap_or(doc_ts),
            vulnerabilities,
            products: st
                .get("products")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(vex_product_id)
                .map(str::to_owned)
                .collect(),
            status: text("status").unwrap_or_default(),
            justification: text("justification"),
            statement: ["impact_statement", "action_statement", "status_notes"].iter().find_map(|k| text(k)),
        });
    }
    out
}

/// The vulnerability name of an OpenVEX statement (`vulnerability.name`, or a bare string as in
/// pre-0.2 documents).
pub fn vex_vulnerability_name(statement: &Map<String, Value>) -> Option<&str> {
    match statement.get("vulnerability")? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(v) => v.get("name")?.as_str().filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// The identifier of an OpenVEX product (`@id`, or a bare string).
pub fn vex_product_id(product: &Value) -> Option<&str> {
    match product {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(p) => p.get("@id")?.as_str().filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// Policy finding decisions.
pub const DECISIONS: [&str; 3] = ["deny", "warn", "allow"];

/// Policy finding (schema in `docs/records.md`): `findingId`, `policyId`, `ruleId`, `product`,
/// `vulnerability`, `decision` (deny|warn|allow) and `evaluatedAt` are required; `severity`
/// is one of critical|high|medium|low|none|unknown when present.
pub fn check_finding(v: &Value) -> Check<Timestamp> {
    let o = obj(v, "policy finding")?;
    let id = req_str(o, "findingId", "policy finding")?;
    let what = format!("policy finding {id}");
    for key in ["policyId", "ruleId", "product", "vulnerability"] {
        req_str(o, key, &what)?;
    }
    let decision = req_str(o, "decision", &what)?;
    if !DECISIONS.contains(&decision) {
        return Err(format!("{what}: unknown decision {decision:?} (deny, warn, allow)"));
    }
    if let Some(sev) = opt_str(o, "severity", &what)? {
        if !matches!(sev, "critical" | "high" | "medium" | "low" | "none" | "unknown") {
            return Err(format!("{what}: unknown severity {sev:?}"));
        }
    }
    opt_str(o, "reason", &what)?;
    time(req_str(o, "evaluatedAt", &what)?, "evaluatedAt", &what)
}

/// Maven index entry: `groupId`, `artifactId`, `version`, `sha1` (40 hex digits) and an
/// optional `archiveType` (jar, war, ear, aar, pom; default jar).
pub fn check_maven(v: &Value) -> Check<()> {
    let o = obj(v, "Maven index entry")?;
    let g = req_str(o, "groupId", "Maven index entry")?;
    let a = req_str(o, "artifactId", "Maven index entry")?;
    let what = format!("Maven index entry {g}:{a}");
    req_str(o, "version", &what)?;
    let sha1 = req_str(o, "sha1", &what)?;
    if sha1.len() != 40 || !sha1.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{what}: \"sha1\" must be 40 hex digits, got {sha1:?}"));
    }
    if let Some(t) = opt_str(o, "archiveType", &what)? {
        if !matches!(t, "jar" | "war" | "ear" | "aar" | "pom") {
            return Err(format!("{what}: unknown archiveType {t:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn osv_required_fields() {
        assert!(check_osv(&json!({"id": "X", "modified": "2024-01-01T00:00:00Z"})).is_ok());
        let e = check_osv(&json!({"modified": "2024-01-01T00:00:00Z"})).unwrap_err();
        assert!(e.contains("\"id\""), "{e}");
        let e = check_osv(&json!({"id": "X"})).unwrap_err();
        assert!(e.contains("\"modified\""), "{e}");
        let e = check_osv(&json!({"id": "X", "modified": "yesterday"})).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        let e = check_osv(&json!({"id": "X", "modified": "2024-01-01T00:00:00Z",
            "affected": [{"package": {"ecosystem": "npm", "name": "x"}, "ranges": [{"type": "SEMVER", "events": [{"introduced": "0", "fixed": "1"}]}]}]}))
        .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        assert!(check_osv(&json!([1])).is_err());
    }

    #[test]
    fn openvex_rules() {
        let good = json!({"@context": "https://openvex.dev/ns/v0.2.0", "@id": "d", "author": "a",
            "timestamp": "2024-01-01T00:00:00Z", "version": 1,
            "statements": [{"vulnerability": {"name": "CVE-1"}, "products": [{"@id": "pkg:npm/a@1"}], "status": "fixed"}]});
        assert!(check_openvex(&good).is_ok());
        let mut bad = good;
        bad["statements"][0]["status"] = json!("not_affected");
        assert!(check_openvex(&bad).unwrap_err().contains("justification"));
        bad["statements"][0]["status"] = json!("maybe");
        assert!(check_openvex(&bad).unwrap_err().contains("unknown status"));
    }

    #[test]
    fn finding_and_maven_rules() {
        let f = json!({"findingId": "F1", "policyId": "p", "ruleId": "r", "product": "pkg:npm/a@1",
            "vulnerability": "CVE-1", "decision": "deny", "evaluatedAt": "2024-01-01T00:00:00Z"});
        assert!(check_finding(&f).is_ok());
        let mut bad = f;
        bad["decision"] = json!("block");
        assert!(check_finding(&bad).is_err());
        assert!(check_maven(&json!({"groupId": "g", "artifactId": "a", "version": "1", "sha1": "zz"})).is_err());
        assert!(
            check_maven(&json!({"groupId": "g", "artifactId": "a", "version": "1", "sha1": "a".repeat(40)})).is_ok()
        );
    }
}
