//! Library-level bad input: `..` paths into the in-memory source, request limits through the
//! public parser, unknown profiles through the registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use exportcore::{Limits, MemoryEvidence, RunRequest};

#[test]
fn dot_dot_paths_are_refused() {
    let mut ev = MemoryEvidence::new();
    for bad in ["advisories/../../etc/passwd", "/etc/passwd", "advisories/./a.json", "advisories\\a.json"] {
        let err = ev.insert(bad, "{}").unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_PATH_UNSAFE", "{bad}");
    }
}

#[test]
fn every_request_limit() {
    let limits = Limits::default();
    let too_big = format!(r#"{{"profileId":"json:raw","targets":["vex"]{}}}"#, " ".repeat(300 * 1024));
    assert_eq!(RunRequest::from_json(too_big.as_bytes(), &limits).unwrap_err().code(), "ERR_EXPORT_TOO_LARGE");
    let many: Vec<&str> = std::iter::repeat_n("\"advisory\"", 51).collect();
    let body = format!(r#"{{"profileId":"json:raw","targets":[{}]}}"#, many.join(","));
    let err = RunRequest::from_json(body.as_bytes(), &limits).unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_REQUEST_INVALID");
    assert!(err.to_string().contains("targets"), "{err}");
    for (body, field) in [
        (r#"{"profileId":"json:raw","compressionLevel":0}"#, "compressionLevel"),
        (r#"{"profileId":"json:raw","compressionLevel":20}"#, "compressionLevel"),
        (r#"{"profileId":"json:raw","compression":"gzip","compressionLevel":10}"#, "compressionLevel"),
    ] {
        let err = RunRequest::from_json(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(err.code(), "ERR_EXPORT_REQUEST_INVALID", "{body}");
        assert!(err.to_string().contains(field), "{err}");
    }
    let ok = RunRequest::from_json(br#"{"profileId":"json:raw","compression":"zstd","compressionLevel":19}"#, &limits);
    assert_eq!(ok.unwrap().compression_level, Some(19));
    let err = exportcore_json::profiles().get("trivy:nope").unwrap_err();
    assert_eq!(err.code(), "ERR_EXPORT_PROFILE_NOT_FOUND");
}
