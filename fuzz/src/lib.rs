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
    // writes 2e11 as 200000000000), and an independent, straightforward RFC 8785
    // implementation writes the same bytes.
    if ijson::check(data).is_ok() {
        assert!(same(&again, &value), "canonicalising changed a value of I-JSON input");
        let mut reference = String::new();
        jcs(&value, &mut reference);
        assert_eq!(String::from_utf8_lossy(&written), reference, "the JCS writer and the reference disagree");
    }
}

/// RFC 8785 written out plainly from the RFC's rules, sharing no code with exportcore:
/// members sorted by UTF-16 code units, strings with the JSON short escapes and `\u00xx` for
/// other control characters, numbers as ECMAScript's `Number.prototype.toString`.
fn jcs(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&es_number(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => jcs_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                jcs(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                jcs_string(k, out);
                out.push(':');
                jcs(v, out);
            }
            out.push('}');
        }
    }
}

fn jcs_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript `Number.prototype.toString` for finite doubles, from Rust's shortest
/// round-trip digits (`{:e}`): the ES rules applied to digits `d` and exponent `n`.
fn es_number(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if x < 0.0 {
        return format!("-{}", es_number(-x));
    }
    let sci = format!("{x:e}"); // e.g. "1.2345e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().unwrap_or(0) + 1; // the decimal point sits after n digits
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e < 0 { '-' } else { '+' };
        let rest = if k > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        format!("{}{rest}e{sign}{}", &digits[..1], e.abs())
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
