//! Content types of portal assets, from the file name's extension.
//!
//! The table is [`CONTENT_TYPES`] (the same table is in `docs/devportal.md`, checked by a
//! test). Matching is case-insensitive on the file name and prefers the longest extension
//! (`x.tar.gz` is `application/gzip` through `tar.gz`, not through `gz` — both agree here, but
//! the rule keeps future entries unambiguous). A name with no listed extension is
//! [`DEFAULT_CONTENT_TYPE`]. Types are IANA-registered where one exists; source files of SDKs
//! use the common `text/x-<language>` names.
//!
//! ```
//! use exportcore_devportal::content_type::content_type;
//! assert_eq!(content_type("portal/index.HTML"), "text/html");
//! assert_eq!(content_type("sdks/dotnet/Client.cs"), "text/x-csharp");
//! assert_eq!(content_type("sdks/python/dist/client-1.0.tar.gz"), "application/gzip");
//! assert_eq!(content_type("changelog/LICENSE"), "application/octet-stream");
//! ```

/// The type of a file whose extension is not in [`CONTENT_TYPES`].
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// `(extension without the dot, lowercase; content type)`, sorted by extension.
pub const CONTENT_TYPES: &[(&str, &str)] = &[
    ("avif", "image/avif"),
    ("bmp", "image/bmp"),
    ("c", "text/x-c"),
    ("cjs", "text/javascript"),
    ("cs", "text/x-csharp"),
    ("csproj", "application/xml"),
    ("css", "text/css"),
    ("csv", "text/csv"),
    ("gif", "image/gif"),
    ("go", "text/x-go"),
    ("gz", "application/gzip"),
    ("h", "text/x-c"),
    ("htm", "text/html"),
    ("html", "text/html"),
    ("ico", "image/vnd.microsoft.icon"),
    ("jar", "application/java-archive"),
    ("java", "text/x-java"),
    ("jpeg", "image/jpeg"),
    ("jpg", "image/jpeg"),
    ("js", "text/javascript"),
    ("json", "application/json"),
    ("jsonl", "application/x-ndjson"),
    ("kt", "text/x-kotlin"),
    ("map", "application/json"),
    ("markdown", "text/markdown"),
    ("md", "text/markdown"),
    ("mjs", "text/javascript"),
    ("ndjson", "application/x-ndjson"),
    ("nupkg", "application/zip"),
    ("otf", "font/otf"),
    ("pdf", "application/pdf"),
    ("png", "image/png"),
    ("proto", "text/plain"),
    ("ps1", "text/plain"),
    ("py", "text/x-python"),
    ("rb", "text/x-ruby"),
    ("rs", "text/x-rust"),
    ("sh", "application/x-sh"),
    ("svg", "image/svg+xml"),
    ("swift", "text/x-swift"),
    ("tar", "application/x-tar"),
    ("tar.gz", "application/gzip"),
    ("tgz", "application/gzip"),
    ("toml", "application/toml"),
    ("ts", "text/x-typescript"),
    ("ttf", "font/ttf"),
    ("txt", "text/plain"),
    ("wasm", "application/wasm"),
    ("webp", "image/webp"),
    ("whl", "application/zip"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("xml", "application/xml"),
    ("yaml", "application/yaml"),
    ("yml", "application/yaml"),
    ("zip", "application/zip"),
];

/// The content type of `path` (only its last segment counts).
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path).to_lowercase();
    CONTENT_TYPES
        .iter()
        .filter(|(ext, _)| {
            name.len() > ext.len() + 1
                && name.ends_with(ext)
                && name.as_bytes().get(name.len() - ext.len() - 1) == Some(&b'.')
        })
        .max_by_key(|(ext, _)| ext.len())
        .map_or(DEFAULT_CONTENT_TYPE, |(_, t)| t)
}

/// True for files packed with mode 0755: shell scripts (`.sh`).
pub(crate) fn is_script(path: &str) -> bool {
    content_type(path) == "application/x-sh"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_lowercase() {
        assert!(CONTENT_TYPES.windows(2).all(|w| w[0].0 < w[1].0), "sorted, no duplicates");
        assert!(CONTENT_TYPES.iter().all(|(e, _)| *e == e.to_lowercase() && !e.starts_with('.')));
    }

    #[test]
    fn lookups() {
        assert_eq!(content_type("portal/assets/app.css"), "text/css");
        assert_eq!(content_type("specs/export-center.openapi.yaml"), "application/yaml");
        assert_eq!(content_type("a.TAR.GZ"), "application/gzip");
        assert_eq!(content_type("x/.gz"), DEFAULT_CONTENT_TYPE, "a bare extension is a hidden name, not a type");
        assert_eq!(content_type("x/json"), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type("x/Makefile"), DEFAULT_CONTENT_TYPE);
        assert!(is_script("sdks/python/install.sh"));
        assert!(!is_script("sdks/python/install.shx"));
    }

    /// The table in docs/devportal.md is this table.
    #[test]
    fn docs_table_matches() {
        let doc = include_str!("../../../docs/devportal.md");
        let start = doc.find("<!-- content-types:begin -->").expect("table start marker in docs/devportal.md");
        let end = doc.find("<!-- content-types:end -->").expect("table end marker in docs/devportal.md");
        let rows: Vec<(String, String)> = doc[start..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
                (cells[1].trim_start_matches('.').to_owned(), cells[2].to_owned())
            })
            .collect();
        let table: Vec<(String, String)> =
            CONTENT_TYPES.iter().map(|(e, t)| ((*e).to_owned(), (*t).to_owned())).collect();
        assert_eq!(rows, table, "docs/devportal.md content-type table is out of date");
    }
}
