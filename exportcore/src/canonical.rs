//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! Written by hand because no maintained crate implements all of RFC 8785: object members
//! sorted by their UTF-16 code units (not by UTF-8 bytes, which orders characters above
//! U+FFFF differently), numbers printed as ECMAScript's `Number.prototype.toString` prints an
//! IEEE 754 double, no insignificant whitespace, and strings escaped as `JSON.stringify` does
//! (which is exactly what `serde_json` emits for a string, so that part is delegated).
//!
//! Integers beyond ±2^53 cannot be represented exactly by an I-JSON consumer; like every JCS
//! implementation we print them through their double value.
//!
//! ```
//! let text = r#"{"b": [1E30, 4.50, 2e-3], "a": "\u20ac"}"#;
//! let bytes = exportcore::canonical::canonicalize_str(text)?;
//! assert_eq!(bytes, r#"{"a":"€","b":[1e+30,4.5,0.002]}"#.as_bytes());
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde::Serialize;
use serde_json::Value;
use std::io::{self, Write};

/// Serializes any `Serialize` value to canonical JSON bytes.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, &value).map_err(serde_json::Error::io)?;
    Ok(out)
}

mod direct;

/// The bytes of [`to_vec`], written without first making a `serde_json::Value` of the whole
/// document: objects are held as their members' finished bytes until sorted, so a document of
/// many small parts (a run manifest of 100,000 entries, a provenance statement) needs about
/// twice its output in memory, not a tree of maps ten times that size. For a `Value` already
/// in hand, [`to_vec`] (or [`write_value`]) is faster.
pub fn to_vec_direct<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    value.serialize(direct::Direct { out: &mut out })?;
    Ok(out)
}

/// Parses JSON text and returns its canonical form.
pub fn canonicalize_str(text: &str) -> serde_json::Result<Vec<u8>> {
    let value: Value = serde_json::from_str(text)?;
    let mut out = Vec::with_capacity(text.len());
    write_value(&mut out, &value).map_err(serde_json::Error::io)?;
    Ok(out)
}

/// Writes `value` in canonical form to `w`.
pub fn write_value<W: Write + ?Sized>(w: &mut W, value: &Value) -> io::Result<()> {
    match value {
        Value::Null => w.write_all(b"null"),
        Value::Bool(true) => w.write_all(b"true"),
        Value::Bool(false) => w.write_all(b"false"),
        Value::Number(n) => write_number(w, n),
        Value::String(s) => write_string(w, s),
        Value::Array(items) => {
            w.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_value(w, item)?;
            }
            w.write_all(b"]")
        }
        Value::Object(map) => {
            w.write_all(b"{")?;
            // Fast path: keys already iterate in UTF-8 byte order (serde_json's default map) and
            // none holds a character at or above U+E000, so UTF-8 order equals the UTF-16 code
            // unit order JCS requires. Otherwise sort explicitly (e.g. under serde_json's
            // `preserve_order` feature, or for keys with astral-plane characters).
            let mut prev: Option<&String> = None;
            let in_order = map.keys().all(|k| {
                let ok = prev.is_none_or(|p| p.as_bytes() < k.as_bytes()) && k.chars().all(|c| (c as u32) < 0xE000);
                prev = Some(k);
                ok
            });
            if in_order {
                for (i, (key, v)) in map.iter().enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    write_string(w, key)?;
                    w.write_all(b":")?;
                    write_value(w, v)?;
                }
            } else {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    write_string(w, key)?;
                    w.write_all(b":")?;
                    write_value(w, &map[key])?;
                }
            }
            w.write_all(b"}")
        }
    }
}

fn write_string<W: Write + ?Sized>(w: &mut W, s: &str) -> io::Result<()> {
    // serde_json escapes exactly as JSON.stringify: \" \\ \b \f \n \r \t, other C0 controls
    // as lowercase \u00xx, and nothing else.
    serde_json::to_writer(&mut *w, s).map_err(io::Error::other)
}

/// True when `bytes` is one JSON value already in the exact form [`write_value`] would write
/// (RFC 8785): no whitespace, object keys unique and in UTF-16 order, strings with only the
/// escapes JCS uses, `true`/`false`/`null`, and integers of at most 15 digits (other numbers
/// answer `false`, conservatively). A `true` answer means the bytes can be copied instead of
/// parsed and re-serialised; `false` only means "take the slow path". Never panics, allocates
/// only for keys that need decoding, and refuses more than 127 nested arrays/objects (as
/// serde_json does).
pub fn is_canonical(bytes: &[u8]) -> bool {
    // Outside strings the grammar admits ASCII only; strings with non-ASCII bytes get a
    // UTF-8 check.
    let mut s = Scan { b: bytes, i: 0 };
    s.value(0) && s.i == bytes.len()
}

/// Index of the first `"`, `\\` or C0 control byte in `b` (eight bytes at a time), and
/// whether a non-ASCII byte comes before it.
fn string_stop(b: &[u8]) -> Option<(usize, bool)> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    let mut high = 0u64;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        let zero_at = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        // Bytes < 0x20, bytes equal to '"', bytes equal to '\\'.
        let hits = (x.wrapping_sub(ONES * 0x20) & !x & HIGHS) | zero_at(x ^ (ONES * 0x22)) | zero_at(x ^ (ONES * 0x5c));
        if hits != 0 {
            break; // the exact byte is found below
        }
        high |= x & HIGHS;
        i += 8;
    }
    let p = i + b[i..].iter().position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f))?;
    Some((p, high != 0 || !b[i..p].is_ascii()))
}

/// Most nested arrays/objects [`is_canonical`] accepts (serde_json's recursion limit).
const MAX_NESTING: usize = 127;

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn literal(&mut self, lit: &[u8]) -> bool {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            // serde_json's parser takes at most 127 nested arrays/objects: so do we, so a
            // line we accept is one every other reader of the bundle can parse.
            Some(b'{' | b'[') if depth >= MAX_NESTING => false,
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    /// Integers only: `0`, or an optional `-` and 1–15 digits without a leading zero.
    fn number(&mut self) -> bool {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let digits = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let n = self.i - digits;
        if n == 0 || n > 15 || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return false;
        }
        if self.b[digits] == b'0' && (n > 1 || neg) {
            return false;
        }
        self.i > start
    }

    /// Scans a string; returns its raw body (between the quotes).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.i += 1; // opening quote
        let start = self.i;
        let mut non_ascii = false;
        loop {
            let (n, high) = string_stop(&self.b[self.i..])?;
            self.i += n;
            non_ascii |= high;
            match self.b[self.i] {
                b'"' => {
                    let body = &self.b[start..self.i];
                    self.i += 1;
                    return (!non_ascii || std::str::from_utf8(body).is_ok()).then_some(body);
                }
                b'\\' => {
                    match self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            // Only C0 controls other than the five with short forms, lowercase.
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            let lower = |c: &u8| matches!(c, b'0'..=b'9' | b'a'..=b'f');
                            if &hex[..2] != b"00" || !hex.iter().all(lower) || hex[2] > b'1' {
                                return None;
                            }
                            if matches!(&hex[2..], b"08" | b"09" | b"0a" | b"0c" | b"0d") {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control byte
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.peek() == Some(b']') {
            self.i += 1;
            return true;
        }
        loop {
            if !self.value(depth + 1) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        self.i += 1;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return true;
        }
        let mut prev: Option<&'a [u8]> = None;
        loop {
            if self.peek() != Some(b'"') {
                return false;
            }
            let Some(key) = self.string() else { return false };
            if let Some(p) = prev {
                if key_order(p, key) != std::cmp::Ordering::Less {
                    return false;
                }
            }
            prev = Some(key);
            if self.peek() != Some(b':') {
                return false;
            }
            self.i += 1;
            if !self.value(depth + 1) {
                return false;
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }
}

/// Orders two raw (still escaped, valid UTF-8) canonical key bodies by the UTF-16 code units of
/// their decoded text.
fn key_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let plain = |k: &[u8]| k.iter().all(|c| c.is_ascii() && *c != b'\\');
    if plain(a) && plain(b) {
        return a.cmp(b);
    }
    let decode = |k: &[u8]| -> String {
        let mut quoted = Vec::with_capacity(k.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(k);
        quoted.push(b'"');
        serde_json::from_slice(&quoted).unwrap_or_default()
    };
    let (a, b) = (decode(a), decode(b));
    a.encode_utf16().cmp(b.encode_utf16())
}

const MAX_SAFE: u64 = 1 << 53;

fn write_number<W: Write + ?Sized>(w: &mut W, n: &serde_json::Number) -> io::Result<()> {
    if let Some(u) = n.as_u64() {
        if u <= MAX_SAFE {
            return write!(w, "{u}");
        }
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() <= MAX_SAFE {
            return write!(w, "{i}");
        }
    }
    match n.as_f64() {
        Some(f) => w.write_all(format_es_number(f).as_bytes()),
        None => Err(io::Error::other("number is not representable as a double")),
    }
}

/// Formats a finite double exactly as ECMAScript's `Number.prototype.toString()`.
pub fn format_es_number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        // JSON has no NaN/Infinity; serde_json never produces them.
        return "0".to_owned();
    }
    if x < 0.0 {
        return format!("-{}", format_es_number(-x));
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, like ECMAScript requires.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let k = digits.len() as i32;
    let n = exp + 1;
    let mut out = String::with_capacity(24);
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc8785_sample() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let out = canonicalize_str(input).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn rfc8785_sorting_uses_utf16() {
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let out = String::from_utf8(canonicalize_str(input).unwrap()).unwrap();
        let order: Vec<&str> =
            ["Carriage Return", "One", "Control", "Latin Small", "Euro Sign", "Emoji", "Hebrew"].to_vec();
        let positions: Vec<usize> = order.iter().map(|s| out.find(s).unwrap()).collect();
        let mut sorted = positions.clone();
        sorted.sort_unstable();
        assert_eq!(positions, sorted, "{out}");
    }

    #[test]
    fn es_numbers() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (9007199254740994.0, "9007199254740994"),
            (0.1 + 0.2, "0.30000000000000004"),
            (295147905179352830000.0, "295147905179352830000"),
            (4.5, "4.5"),
            (1.25e-5, "0.0000125"),
        ];
        for (x, want) in cases {
            assert_eq!(format_es_number(*x), *want, "{x:e}");
        }
    }

    #[test]
    fn big_integers_go_through_double() {
        assert_eq!(canonicalize_str("[9007199254740993]").unwrap(), b"[9007199254740992]");
        assert_eq!(canonicalize_str("[-42, 18446744073709551615]").unwrap(), b"[-42,18446744073709552000]");
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|i| Value::from(i64::from(i))),
            (-1e12f64..1e12).prop_map(Value::from),
            "[a-zA-Z0-9 \u{e9}\u{20ac}\u{1f600}\"\\\\/\n\t\u{1}\u{7f}]{0,8}".prop_map(Value::String),
        ]
    }

    proptest! {
        #[test]
        fn direct_serialisation_writes_the_same_bytes(v in json_value()) {
            prop_assert_eq!(to_vec_direct(&v).unwrap(), to_vec(&v).unwrap());
        }
    }

    #[test]
    fn direct_serialisation_of_structs_and_enums_is_to_vec() {
        #[derive(serde::Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(i32, String),
            Named { z: bool, a: Option<f64> },
        }
        #[derive(serde::Serialize)]
        struct S {
            zeta: Vec<E>,
            #[serde(rename = "\u{1f600}")]
            astral: (),
            #[serde(rename = "\u{e9}")]
            accent: std::collections::HashMap<u32, &'static str>,
            alpha: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            skipped: Option<u8>,
            #[serde(flatten)]
            extra: std::collections::BTreeMap<String, f64>,
            bytes: &'static [u8],
        }
        let s = S {
            zeta: vec![E::Unit, E::New(7), E::Tuple(-3, "x\n\"y".into()), E::Named { z: true, a: Some(1e21) }],
            astral: (),
            accent: [(10, "ten"), (2, "two")].into_iter().collect(),
            alpha: None,
            skipped: None,
            extra: [("beta".to_owned(), 0.1), ("alpha".to_owned(), 2.0)].into_iter().collect(),
            bytes: b"ab",
        };
        assert_eq!(
            String::from_utf8(to_vec_direct(&s).unwrap()).unwrap(),
            String::from_utf8(to_vec(&s).unwrap()).unwrap()
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\u{e9}\u{1f600}]{1,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Writes JSON text with object members in an order given by `seed` and random spacing.
    fn write_shuffled(v: &Value, seed: &mut u64, out: &mut String) {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        match v {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                for i in (1..entries.len()).rev() {
                    let j = (next() % (i as u64 + 1)) as usize;
                    entries.swap(i, j);
                }
                out.push_str("{ ");
                for (i, (k, val)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(" ,\n");
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(" : ");
                    write_shuffled(val, seed, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_shuffled(item, seed, out);
                }
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).unwrap()),
        }
    }

    #[test]
    fn is_canonical_accepts_exactly_the_canonical_form() {
        for yes in [
            r#"{"a":1,"b":[true,false,null],"c":{"":"x\n\u001f\"\\/é"}}"#,
            r#"[]"#,
            r#"{}"#,
            r#"-123456789012345"#,
            r#"0"#,
            r#"{"\r":1,"1":2,"ö":3,"€":4,"😀":5,"דּ":6}"#,
        ] {
            assert!(is_canonical(yes.as_bytes()), "{yes}");
            assert_eq!(canonicalize_str(yes).unwrap(), yes.as_bytes(), "{yes}");
        }
        for no in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a": 1}"#,
            r#" {"a":1}"#,
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"a":-0}"#,
            r#"{"a":007}"#,
            r#"{"a":1234567890123456}"#,
            r#""\/""#,
            "\"tab\there\"",
            r#""\u00e9""#,
            r#""\u000A""#,
            r#""\u000a""#,
            "{\"\u{fb33}\":1,\"\u{1f600}\":2}",
            r#"[1,]"#,
            r#"{"a":1}x"#,
            r#"tru"#,
            "\"\u{1}\"",
            "",
        ] {
            assert!(!is_canonical(no.as_bytes()), "{no:?}");
        }
        assert!(!is_canonical(b"\"\xff\""), "invalid UTF-8");
        // Long strings: the stop byte at every offset of the eight-byte scan.
        for at in 0..40 {
            let head = "a".repeat(at);
            let tail = "b".repeat(40 - at);
            let good = format!("{{\"k\":\"{head}\\n{tail}\u{e9}\"}}");
            assert!(is_canonical(good.as_bytes()), "{good}");
            let raw_control = format!("{{\"k\":\"{head}\u{1}{tail}\"}}");
            assert!(!is_canonical(raw_control.as_bytes()), "{raw_control:?}");
            let bad_escape = format!("{{\"k\":\"{head}\\/{tail}\"}}");
            assert!(!is_canonical(bad_escape.as_bytes()), "{bad_escape}");
            let unterminated = format!("{{\"k\":\"{head}{tail}");
            assert!(!is_canonical(unterminated.as_bytes()), "{unterminated}");
        }
        // Nesting: exactly as deep as serde_json parses, no deeper.
        for levels in [126, 127, 128, 200] {
            let deep = format!("{{\"a\":{}{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1));
            let serde_ok = serde_json::from_str::<Value>(&deep).is_ok();
            assert_eq!(is_canonical(deep.as_bytes()), serde_ok, "{levels} levels");
            assert_eq!(serde_ok, levels <= 127, "{levels} levels");
        }
    }

    proptest! {
        #[test]
        fn canonical_output_is_recognised(v in json_value()) {
            let c = to_vec(&v).unwrap();
            let numbers_are_small_ints = !String::from_utf8_lossy(&c).contains(['.', 'e']);
            if numbers_are_small_ints {
                prop_assert!(is_canonical(&c), "{}", String::from_utf8_lossy(&c));
            }
        }

        #[test]
        fn recognised_input_is_its_own_canonical_form(v in json_value(), seed in 1u64..) {
            let mut seed = seed;
            let mut shuffled = String::new();
            write_shuffled(&v, &mut seed, &mut shuffled);
            for candidate in [shuffled.into_bytes(), serde_json::to_vec(&v).unwrap()] {
                if is_canonical(&candidate) {
                    let text = std::str::from_utf8(&candidate).unwrap();
                    prop_assert_eq!(canonicalize_str(text).unwrap(), candidate);
                }
            }
        }

        #[test]
        fn key_order_and_spacing_do_not_matter(v in json_value(), s1 in 1u64.., s2 in 1u64..) {
            let (mut a, mut b) = (String::new(), String::new());
            let (mut s1, mut s2) = (s1, s2);
            write_shuffled(&v, &mut s1, &mut a);
            write_shuffled(&v, &mut s2, &mut b);
            let ca = canonicalize_str(&a).unwrap();
            prop_assert_eq!(&ca, &canonicalize_str(&b).unwrap());
            // Canonical form is a fixed point and still means the same value.
            prop_assert_eq!(&canonicalize_str(std::str::from_utf8(&ca).unwrap()).unwrap(), &ca);
            let back: Value = serde_json::from_slice(&ca).unwrap();
            prop_assert_eq!(to_vec(&back).unwrap(), ca);
        }
    }
}
