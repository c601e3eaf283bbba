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
            "[a-zA-Z0-9 \u{e9}\u{20ac}\u{1f600}\"\\\\]{0,8}".prop_map(Value::String),
        ]
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

    proptest! {
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
