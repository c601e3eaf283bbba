//! # evidence-gen
//!
//! Writes synthetic evidence sets with the shape of `samples/evidence` — OSV 1.6 advisories
//! over ten ecosystems, OpenVEX 0.2.0 documents, policy findings and Maven index entries —
//! for tests and benchmarks. Output depends only on the options (seeded, no clock, no
//! randomness from the OS): the same options always give the same bytes.
//!
//! ```
//! let dir = tempfile_dir();
//! let summary = evidence_gen::generate(&dir, &evidence_gen::GenOptions { advisories: 100, ..Default::default() })?;
//! assert_eq!(summary.advisories, 100);
//! # std::fs::remove_dir_all(&dir)?;
//! # fn tempfile_dir() -> std::path::PathBuf { let d = std::env::temp_dir().join(format!("evgen-doc-{}", std::process::id())); let _ = std::fs::remove_dir_all(&d); d }
//! # Ok::<(), std::io::Error>(())
//! ```

use serde_json::{json, Value};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Number of OSV advisories.
    pub advisories: u64,
    /// Advisories per `.ndjson` file.
    pub advisories_per_file: u64,
    /// Number of OpenVEX documents (each with 5 statements).
    pub vex_documents: u64,
    /// Number of policy findings.
    pub findings: u64,
    /// Number of Maven index entries.
    pub java_entries: u64,
    /// Seed.
    pub seed: u64,
    /// Extra bytes of `details` text per advisory (to reach a target volume).
    pub details_bytes: usize,
    /// When non-zero, every `rare_every`-th advisory (0, N, 2N, ...) affects an Alpine v3.20
    /// package instead: the only advisories of [`RARE_ECOSYSTEM`], for selector benchmarks.
    pub rare_every: u64,
}

/// The ecosystem of the advisories [`GenOptions::rare_every`] picks.
pub const RARE_ECOSYSTEM: &str = "Alpine:v3.20";

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            advisories: 1000,
            advisories_per_file: 10_000,
            vex_documents: 4,
            findings: 50,
            java_entries: 50,
            seed: 42,
            details_bytes: 200,
            rare_every: 0,
        }
    }
}

impl GenOptions {
    /// Options whose advisories add up to roughly `bytes` of NDJSON.
    pub fn with_volume(bytes: u64) -> Self {
        let o = Self { details_bytes: 800, ..Self::default() };
        let per = approx_advisory_bytes(&o);
        Self { advisories: (bytes / per).max(1), advisories_per_file: 50_000, ..o }
    }
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenSummary {
    /// Advisories written.
    pub advisories: u64,
    /// VEX statements written.
    pub vex_statements: u64,
    /// Findings written.
    pub findings: u64,
    /// Maven entries written.
    pub java_entries: u64,
    /// Total bytes written.
    pub bytes: u64,
}

/// splitmix64: tiny, seedable, and stable across versions (unlike an external RNG crate).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const ECOSYSTEMS: [(&str, &str, &[&str]); 10] = [
    ("Alpine:v3.18", "apk", &["openssl", "curl", "busybox", "expat", "libxml2", "zlib", "musl", "sqlite"]),
    ("Debian:12", "deb", &["openssl", "curl", "glibc", "nghttp2", "libxml2", "zlib", "bind9", "perl"]),
    ("PyPI", "pypi", &["django", "requests", "jinja2", "urllib3", "pillow", "flask", "pyyaml", "cryptography"]),
    ("npm", "npm", &["lodash", "axios", "semver", "express", "minimist", "jsonwebtoken", "ws", "tar"]),
    (
        "Maven",
        "maven",
        &[
            "org.apache.logging.log4j:log4j-core",
            "com.fasterxml.jackson.core:jackson-databind",
            "org.yaml:snakeyaml",
            "org.springframework:spring-web",
        ],
    ),
    (
        "Go",
        "golang",
        &["golang.org/x/net", "golang.org/x/crypto", "google.golang.org/protobuf", "github.com/gin-gonic/gin"],
    ),
    ("crates.io", "cargo", &["rsa", "hyper", "openssl", "time", "regex"]),
    ("RubyGems", "gem", &["rack", "nokogiri", "rails", "puma"]),
    ("NuGet", "nuget", &["Newtonsoft.Json", "System.Text.Json", "Microsoft.Data.SqlClient"]),
    ("Packagist", "composer", &["guzzlehttp/guzzle", "symfony/http-kernel", "laravel/framework"]),
];

const WORDS: [&str; 16] = [
    "buffer",
    "overflow",
    "remote",
    "attacker",
    "crafted",
    "request",
    "denial",
    "service",
    "memory",
    "parsing",
    "header",
    "validation",
    "allows",
    "via",
    "input",
    "certificate",
];

fn version(rng: &mut Rng, eco: &str) -> String {
    let (a, b, c) = (rng.below(5), rng.below(20), rng.below(30));
    match eco {
        e if e.starts_with("Alpine") => format!("{a}.{b}.{c}-r{}", rng.below(4)),
        e if e.starts_with("Debian") => format!("{a}.{b}.{c}-{}+deb12u{}", rng.below(9) + 1, rng.below(4) + 1),
        _ => format!("{a}.{b}.{c}"),
    }
}

fn timestamp(rng: &mut Rng) -> String {
    format!(
        "20{:02}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        19 + rng.below(7),
        1 + rng.below(12),
        1 + rng.below(28),
        rng.below(24),
        rng.below(60),
        rng.below(60)
    )
}

fn purl(ty: &str, name: &str, version: &str) -> String {
    match ty {
        "maven" => format!("pkg:maven/{}@{version}", name.replacen(':', "/", 1)),
        "apk" => format!("pkg:apk/alpine/{name}@{version}"),
        "deb" => format!("pkg:deb/debian/{name}@{version}"),
        _ => format!("pkg:{ty}/{name}@{version}"),
    }
}

/// Advisory number `i` (deterministic in `seed` and `i`).
pub fn advisory(seed: u64, i: u64, details_bytes: usize) -> Value {
    let mut rng = Rng(seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let (eco, ty, names) = *rng.pick(&ECOSYSTEMS);
    let name = *rng.pick(names);
    let cve = format!("CVE-{}-{}", 2019 + i % 7, 10_000 + i);
    let id = match ty {
        "apk" => format!("ALPINE-{cve}"),
        "deb" => format!("DEBIAN-{cve}"),
        "golang" => format!("GO-{}-{:05}", 2019 + i % 7, i),
        "cargo" => format!("RUSTSEC-{}-{:05}", 2019 + i % 7, i),
        _ => format!("GHSA-gen{:04x}-{:04x}-{:04x}", i >> 32 & 0xffff, i >> 16 & 0xffff, i & 0xffff),
    };
    let fixed = version(&mut rng, eco);
    let mut details = String::with_capacity(details_bytes + 16);
    while details.len() < details_bytes {
        let word: &str = rng.pick::<&str>(&WORDS);
        details.push_str(word);
        details.push(' ');
    }
    let sev = *rng.pick(&["CRITICAL", "HIGH", "MODERATE", "LOW"]);
    let mut v = json!({
        "schema_version": "1.6.0",
        "id": id,
        "modified": timestamp(&mut rng),
        "published": timestamp(&mut rng),
        "aliases": [cve],
        "summary": format!("{} in {name}", rng.pick(&WORDS[..])),
        "details": details.trim_end(),
        "affected": [{
            "package": {"ecosystem": eco, "name": name, "purl": purl(ty, name, "").trim_end_matches('@')},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}]
        }],
        "references": [{"type": "ADVISORY", "url": format!("https://example.invalid/advisories/{id}")}],
        "database_specific": {"severity": sev, "cwe_ids": [format!("CWE-{}", 20 + rng.below(900))]}
    });
    if rng.below(3) > 0 {
        v["severity"] = json!([{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]);
    }
    v
}

fn approx_advisory_bytes(o: &GenOptions) -> u64 {
    (serde_json::to_vec(&advisory(o.seed, 12345, o.details_bytes)).map_or(1000, |v| v.len()) + 1) as u64
}

/// Writes an evidence set under `dir` (created). Existing generated files are overwritten.
pub fn generate(dir: &Path, o: &GenOptions) -> io::Result<GenSummary> {
    let mut s = GenSummary::default();
    for sub in ["advisories", "vex", "policy", "java"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let per_file = o.advisories_per_file.max(1);
    let mut i = 0;
    let mut file_no = 0;
    while i < o.advisories {
        let path = dir.join(format!("advisories/gen-{file_no:05}.ndjson"));
        let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let end = (i + per_file).min(o.advisories);
        while i < end {
            let mut adv = advisory(o.seed, i, o.details_bytes);
            if o.rare_every > 0 && i % o.rare_every == 0 {
                adv["affected"][0]["package"] =
                    json!({"ecosystem": RARE_ECOSYSTEM, "name": "busybox", "purl": "pkg:apk/alpine/busybox"});
            }
            let line = serde_json::to_vec(&adv)?;
            w.write_all(&line)?;
            w.write_all(b"\n")?;
            s.bytes += line.len() as u64 + 1;
            i += 1;
        }
        w.flush()?;
        file_no += 1;
    }
    s.advisories = o.advisories;

    let mut rng = Rng(o.seed ^ 0xABCD);
    let statuses = ["not_affected", "affected", "fixed", "under_investigation"];
    for d in 0..o.vex_documents {
        let mut statements = Vec::new();
        for k in 0..5u64 {
            let idx = rng.below(o.advisories.max(1));
            let adv = advisory(o.seed, idx, 0);
            let pkg = &adv["affected"][0]["package"];
            let product = format!("{}@1.0.{k}", pkg["purl"].as_str().unwrap_or("pkg:generic/x"));
            let status = statuses[((d + k) % 4) as usize];
            let mut st =
                json!({"vulnerability": {"name": adv["aliases"][0]}, "products": [{"@id": product}], "status": status});
            match status {
                "not_affected" => st["justification"] = json!("vulnerable_code_not_in_execute_path"),
                "affected" => st["action_statement"] = json!("Upgrade to the fixed version."),
                _ => {}
            }
            statements.push(st);
            s.vex_statements += 1;
        }
        let doc = json!({
            "@context": "https://openvex.dev/ns/v0.2.0",
            "@id": format!("https://example.invalid/vex/generated-{d}"),
            "author": "evidence-gen",
            "timestamp": timestamp(&mut rng),
            "version": 1,
            "statements": statements,
        });
        let bytes = serde_json::to_vec_pretty(&doc)?;
        s.bytes += bytes.len() as u64;
        std::fs::write(dir.join(format!("vex/generated-{d:04}.json")), bytes)?;
    }

    let mut w = BufWriter::new(File::create(dir.join("policy/findings.ndjson"))?);
    for f in 0..o.findings {
        let idx = rng.below(o.advisories.max(1));
        let adv = advisory(o.seed, idx, 0);
        let pkg = &adv["affected"][0]["package"];
        let decision = *rng.pick(&["deny", "warn", "allow"]);
        let finding = json!({
            "findingId": format!("F-{f:06}"),
            "policyId": "generated@1",
            "ruleId": format!("{decision}-rule"),
            "product": format!("{}@1.0.0", pkg["purl"].as_str().unwrap_or("pkg:generic/x")),
            "vulnerability": adv["aliases"][0],
            "severity": *rng.pick(&["critical", "high", "medium", "low"]),
            "decision": decision,
            "evaluatedAt": timestamp(&mut rng),
        });
        let line = serde_json::to_vec(&finding)?;
        w.write_all(&line)?;
        w.write_all(b"\n")?;
        s.bytes += line.len() as u64 + 1;
    }
    w.flush()?;
    s.findings = o.findings;

    let mut w = BufWriter::new(File::create(dir.join("java/maven-index.ndjson"))?);
    for j in 0..o.java_entries {
        let sha1: String = (0..5).map(|_| format!("{:08x}", rng.next() as u32)).collect();
        let entry = json!({"groupId": format!("org.generated.g{}", j % 17), "artifactId": format!("artifact-{j}"),
            "version": format!("1.{}.{}", j % 7, j % 13), "sha1": sha1, "archiveType": "jar"});
        let line = serde_json::to_vec(&entry)?;
        w.write_all(&line)?;
        w.write_all(b"\n")?;
        s.bytes += line.len() as u64 + 1;
    }
    w.flush()?;
    s.java_entries = o.java_entries;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        let a = std::env::temp_dir().join(format!("evgen-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("evgen-b-{}", std::process::id()));
        let o = GenOptions { advisories: 250, advisories_per_file: 100, ..Default::default() };
        let sa = generate(&a, &o).unwrap();
        let sb = generate(&b, &o).unwrap();
        assert_eq!(sa, sb);
        for f in [
            "advisories/gen-00000.ndjson",
            "advisories/gen-00002.ndjson",
            "vex/generated-0001.json",
            "policy/findings.ndjson",
        ] {
            assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f}");
        }
        assert_ne!(advisory(1, 5, 10), advisory(2, 5, 10));
        let _ = std::fs::remove_dir_all(a);
        let _ = std::fs::remove_dir_all(b);
    }

    #[test]
    fn volume_is_roughly_right() {
        let o = GenOptions::with_volume(10 << 20);
        let per = approx_advisory_bytes(&o);
        let total = o.advisories * per;
        assert!((9 << 20..11 << 20).contains(&total), "{total}");
    }
}
