//! The fuzz targets' bodies, shared by the AFL binaries (`src/bin/*.rs`) and by
//! `tests/replay.rs`, which runs every corpus input through them without AFL (the CI smoke).

use exportcore::evidence::{ijson, EvidenceKind, MemoryEvidence, Records};
use std::io::Cursor;

/// Every record reader on one input: as an advisory, VEX, policy and Maven `.ndjson` file and
/// as a whole `.json` document. Errors are fine; panics and hangs are bugs.
pub fn records(data: &[u8]) {
    for (dir, kind) in [
        ("advisories", EvidenceKind::Advisory),
        ("vex", EvidenceKind::Vex),
        ("policy", EvidenceKind::Policy),
        ("java", EvidenceKind::Java),
    ] {
        for ext in ["ndjson", "json"] {
            let mut ev = MemoryEvidence::new();
            if ev.insert(&format!("{dir}/x.{ext}"), data.to_vec()).is_err() {
                continue;
            }
            if let Ok(records) = Records::new(&ev, kind) {
                for r in records {
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Differential canonical JSON: whatever the fast `is_canonical` check accepts (it may refuse
/// canonical text it is not sure of, e.g. long integers: then the writer's path is taken) is
/// exactly what the JCS writer writes, and the writer is idempotent.
pub fn canonical(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(written) = exportcore::canonical::to_vec(&value) else { return };
    if exportcore::canonical::is_canonical(data) {
        assert_eq!(written, data, "is_canonical accepted bytes the JCS writer writes differently");
    }
    let again: serde_json::Value = serde_json::from_slice(&written).expect("canonical output parses");
    assert_eq!(exportcore::canonical::to_vec(&again).ok().as_deref(), Some(&written[..]), "JCS is not idempotent");
    // I-JSON input keeps its values through the writer (numbers compared as doubles: JCS
    // writes 2e11 as 200000000000).
    if ijson::check(data).is_ok() {
        assert!(same(&again, &value), "canonicalising changed a value of I-JSON input");
    }
}

fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Number, Object};
    match (a, b) {
        (Number(x), Number(y)) => x.as_f64() == y.as_f64(),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Object(x), Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w))),
        _ => a == b,
    }
}

/// Manifests, DSSE envelopes and devportal manifests from bytes.
pub fn manifests(data: &[u8]) {
    let _ = serde_json::from_slice::<exportcore::Manifest>(data);
    let _ = exportcore::sign::dsse::Envelope::parse_exact(data, "fuzz");
    let _ = exportcore_devportal::manifest::BundleManifest::parse(data);
    let _ = exportcore::RunRequest::from_json(data, &exportcore::Limits::default());
}

/// The archive reader behind `verify` (tar, tar.gz, tar.zst), strict and bomb-guarded.
pub fn archive(data: &[u8]) {
    let mut report = exportcore::verify::VerifyReport::default();
    exportcore::verify::verify_archive(Cursor::new(data.to_vec()), "", &mut report);
}
