//! Applying OpenVEX `not_affected` / `fixed` statements to the DB (when the request's targets
//! include `vex`): a statement on a product without a version drops the package's entry for
//! that vulnerability; one on a versioned product adds that version to the entry's
//! `UnaffectedVersions`, which Trivy's language matching honours. The latest statement per
//! (vulnerability, product) wins.

use exportcore::evidence::schema::{vex_statements, VexStatement};
use exportcore::{purl, EvidenceKind, EvidenceSource, Records, Result};
use std::collections::BTreeMap;

/// (vulnerability, OSV ecosystem family, package name) → versions (`None` = every version).
#[derive(Debug, Default)]
pub(crate) struct VexIndex {
    entries: BTreeMap<(String, String, String), Vec<Option<String>>>,
}

impl VexIndex {
    pub(crate) fn load(evidence: &dyn EvidenceSource) -> Result<Self> {
        // Latest statement per (vulnerability, product).
        let mut latest: BTreeMap<(String, String), VexStatement> = BTreeMap::new();
        for rec in Records::new(evidence, EvidenceKind::Vex)? {
            for st in vex_statements(&rec?.value) {
                for product in &st.products {
                    for v in &st.vulnerabilities {
                        let key = (v.clone(), product.clone());
                        if latest.get(&key).is_none_or(|old| old.precedence() < st.precedence()) {
                            latest.insert(key, st.clone());
                        }
                    }
                }
            }
        }
        let mut index = VexIndex::default();
        for ((vuln, product), st) in latest {
            if !matches!(st.status.as_str(), "not_affected" | "fixed") {
                continue;
            }
            let Some((eco, name)) = purl::osv_package(&product) else { continue };
            let version = purl::parse(&product).and_then(|p| p.version).map(str::to_owned);
            index.entries.entry((vuln, eco.to_owned(), norm(eco, &name))).or_default().push(version);
        }
        Ok(index)
    }

    /// Versions VEX clears for this package under any of `ids`.
    pub(crate) fn lookup(&self, ids: &[&str], ecosystem_family: &str, name: &str) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for id in ids {
            let key = ((*id).to_owned(), ecosystem_family.to_owned(), norm(ecosystem_family, name));
            if let Some(v) = self.entries.get(&key) {
                out.extend(v.iter().cloned());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Package names compared the way Trivy normalises them (Go is case-sensitive).
fn norm(ecosystem_family: &str, name: &str) -> String {
    match ecosystem_family {
        "Go" => name.to_owned(),
        "PyPI" => name.to_lowercase().replace('_', "-"),
        _ => name.to_lowercase(),
    }
}
