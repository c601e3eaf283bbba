//! Just enough of package URLs (purl) to relate products named in VEX statements and policy
//! findings to OSV `affected[].package` entries.
//!
//! ```
//! use exportcore::purl;
//! assert_eq!(purl::osv_package("pkg:maven/org.yaml/snakeyaml@1.33"), Some(("Maven", "org.yaml:snakeyaml".to_owned())));
//! assert_eq!(purl::parse("pkg:npm/lodash@4.17.20").unwrap().version, Some("4.17.20"));
//! ```

/// The parts of a purl we use.
#[derive(Debug, PartialEq, Eq)]
pub struct Purl<'a> {
    /// The type (`npm`, `maven`, `apk`, ...).
    pub ty: &'a str,
    /// `namespace/name` as written (without version, qualifiers, subpath).
    pub path: &'a str,
    /// The version, if any.
    pub version: Option<&'a str>,
}

/// Parses `pkg:type/namespace/name@version?qualifiers#subpath`.
pub fn parse(s: &str) -> Option<Purl<'_>> {
    let rest = s.strip_prefix("pkg:")?;
    let rest = rest.split(['?', '#']).next()?;
    let (ty, rest) = rest.split_once('/')?;
    let (path, version) = match rest.rsplit_once('@') {
        // A scoped npm name starts with %40 or @ only after a '/', so rsplit is right.
        Some((p, v)) if !p.is_empty() => (p, Some(v)),
        _ => (rest, None),
    };
    Some(Purl { ty, path, version })
}

/// The product without its version (and qualifiers).
pub fn unversioned(s: &str) -> Option<String> {
    let p = parse(s)?;
    Some(format!("pkg:{}/{}", p.ty, p.path))
}

/// The OSV ecosystem family and package name a purl denotes, e.g.
/// `pkg:maven/org.yaml/snakeyaml@1.33` -> (`Maven`, `org.yaml:snakeyaml`).
pub fn osv_package(s: &str) -> Option<(&'static str, String)> {
    let p = parse(s)?;
    let path = p.path.replace("%40", "@");
    let eco = match p.ty {
        "npm" => "npm",
        "pypi" => "PyPI",
        "maven" => "Maven",
        "golang" => "Go",
        "cargo" => "crates.io",
        "gem" => "RubyGems",
        "nuget" => "NuGet",
        "composer" => "Packagist",
        "apk" => "Alpine",
        "deb" => "Debian",
        _ => return None,
    };
    let name = match p.ty {
        "maven" => path.replacen('/', ":", 1),
        // Distro purls carry the vendor as namespace: pkg:apk/alpine/openssl.
        "apk" | "deb" => path.rsplit('/').next().unwrap_or(&path).to_owned(),
        _ => path,
    };
    Some((eco, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_purls() {
        assert_eq!(osv_package("pkg:maven/org.yaml/snakeyaml@1.33"), Some(("Maven", "org.yaml:snakeyaml".into())));
        assert_eq!(osv_package("pkg:npm/%40babel/core@7.0.0"), Some(("npm", "@babel/core".into())));
        assert_eq!(osv_package("pkg:apk/alpine/openssl@3.1.2-r0?arch=x86_64"), Some(("Alpine", "openssl".into())));
        assert_eq!(osv_package("pkg:golang/golang.org/x/net@v0.15.0"), Some(("Go", "golang.org/x/net".into())));
        assert_eq!(unversioned("pkg:npm/lodash@4.17.20").as_deref(), Some("pkg:npm/lodash"));
        assert_eq!(parse("pkg:npm/lodash").unwrap().version, None);
        assert!(parse("lodash@1").is_none());
    }
}
