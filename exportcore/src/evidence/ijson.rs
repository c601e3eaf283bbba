//! I-JSON (RFC 7493) checks on raw evidence bytes, which RFC 8785 canonical JSON requires and
//! a JSON parser does not make: member names unique within each object (a parser keeps the
//! last of `{"id":"X","id":"Y"}`, so the export would silently say `Y`), and numbers that
//! survive as IEEE doubles (an integer beyond ±2^53, or a number that overflows a double or
//! underflows to zero, would be written back as another number).
//!
//! One pass over the bytes, no allocation unless a member name has escapes. Syntax errors are
//! left to the JSON parser, which reports them with a line; this scanner only needs to stay
//! in step with valid JSON.

/// What is wrong, and where: the byte offset in the checked text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Offset of the offending member name or number.
    pub offset: usize,
    /// What is wrong, naming the member.
    pub reason: String,
}

/// Nesting past which a record is refused (serde_json's own limit for a `Value`).
const MAX_DEPTH: usize = 128;

/// The largest integer every IEEE double represents exactly, and its neighbours.
const MAX_SAFE: u64 = 1 << 53;

/// Checks `text` (one JSON value) for duplicate member names and numbers that do not survive
/// as doubles. `Ok` for text that is not valid JSON: the parser reports that.
pub fn check(text: &[u8]) -> Result<(), Violation> {
    // One entry per open container: `Some(names seen)` for an object, `None` for an array.
    // A set, not a list: an object of a million members is checked in linear time.
    let mut stack: Vec<Option<std::collections::HashSet<Vec<u8>>>> = Vec::new();
    let mut i = 0;
    // In an object, the next string is a member name.
    let mut expect_key = false;
    let mut last_key: Vec<u8> = Vec::new();
    while i < text.len() {
        match text[i] {
            // Deeper than serde_json parses a `Value` (128): refused here, in constant memory
            // (a stack entry per level would let a 64 MiB line of `[` take gigabytes), and not
            // left to a parser — a typed one skipping unknown fields has no depth limit.
            b'{' | b'[' if stack.len() >= MAX_DEPTH => {
                return Err(Violation {
                    offset: i,
                    reason: format!("nested deeper than {MAX_DEPTH} arrays and objects"),
                })
            }
            b'{' => {
                stack.push(Some(std::collections::HashSet::new()));
                expect_key = true;
                i += 1;
            }
            b'[' => {
                stack.push(None);
                expect_key = false;
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                i += 1;
            }
            b',' => {
                expect_key = matches!(stack.last(), Some(Some(_)));
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let start = i;
                let Some((end, name)) = string_at(text, i) else { return Ok(()) };
                // An escape that decodes to no Unicode text (a lone surrogate, `"\ud800"`):
                // I-JSON forbids it, and skipping it would leave the rest of the document
                // unchecked.
                let Some(name) = name else {
                    return Err(Violation {
                        offset: start,
                        reason: "a string whose escapes are not Unicode text (a lone surrogate; I-JSON, RFC 7493 §2.1)"
                            .into(),
                    });
                };
                if expect_key {
                    if let Some(Some(names)) = stack.last_mut() {
                        if names.contains(&name) {
                            return Err(Violation {
                                offset: start,
                                reason: format!(
                                    "duplicate member name {:?} in one object (I-JSON, RFC 7493: names must be unique)",
                                    String::from_utf8_lossy(&name)
                                ),
                            });
                        }
                        last_key.clone_from(&name);
                        names.insert(name);
                    }
                    expect_key = false;
                }
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len() && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                if let Some(why) = number_problem(&text[start..i]) {
                    let member = String::from_utf8_lossy(&last_key);
                    return Err(Violation {
                        offset: start,
                        reason: format!(
                            "number {} (member {member:?}) {why} (I-JSON, RFC 7493: numbers must survive as IEEE doubles)",
                            String::from_utf8_lossy(&text[start..i])
                        ),
                    });
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The end of the string starting at `text[start] == '"'` and its content, with escapes
/// decoded when there are any (so `"a"` and `"\u0061"` compare equal). `None` when
/// unterminated.
fn string_at(text: &[u8], start: usize) -> Option<(usize, Option<Vec<u8>>)> {
    let mut i = start + 1;
    let mut escaped = false;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let raw = &text[start + 1..i];
                let name = if escaped {
                    // Decode through the JSON parser itself: exactly its notion of equality.
                    serde_json::from_slice::<String>(&text[start..=i]).ok().map(String::into_bytes)
                } else {
                    Some(raw.to_vec())
                };
                return Some((i + 1, name));
            }
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// Why a number token does not survive as a double, if it does not.
fn number_problem(token: &[u8]) -> Option<&'static str> {
    let s = std::str::from_utf8(token).ok()?;
    let digits = s.trim_start_matches('-');
    if !digits.contains(['.', 'e', 'E']) {
        let big = digits.len() > 16 || digits.parse::<u64>().map_or(true, |n| n > MAX_SAFE);
        return big.then_some("is an integer beyond ±2^53");
    }
    let v: f64 = s.parse().ok()?;
    if v.is_infinite() {
        return Some("overflows a double");
    }
    let mantissa = digits.split(['e', 'E']).next().unwrap_or_default();
    if v == 0.0 && mantissa.bytes().any(|b| matches!(b, b'1'..=b'9')) {
        return Some("underflows to zero");
    }
    // An integer written with a fraction or an exponent (`9007199254740993.0`, `…e0`) must
    // survive too: beyond 2^53 the double may be another integer.
    if v.abs() >= MAX_SAFE as f64 && v.fract() == 0.0 {
        if let Some(exact) = exact_integer(digits) {
            if v.abs() < 2f64.powi(128) && exact != v.abs() as u128 {
                return Some("is an integer beyond ±2^53");
            }
        }
    }
    None
}

/// The exact value of an unsigned decimal token when it is an integer below 2^128 (`None` for
/// a fraction or anything larger).
fn exact_integer(token: &str) -> Option<u128> {
    let (mantissa, exp) = match token.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i32>().ok()?),
        None => (token, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut exp = exp.checked_sub(i32::try_from(frac.len()).ok()?)?;
    while exp < 0 {
        // Only trailing zeros may be shifted off: anything else is a fraction.
        if !digits.ends_with('0') {
            return None;
        }
        digits.pop();
        exp += 1;
    }
    let digits = digits.trim_start_matches('0');
    if digits.len() + usize::try_from(exp).ok()? > 38 {
        return None;
    }
    let mut n: u128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    for _ in 0..exp {
        n = n.checked_mul(10)?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> String {
        check(s.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn duplicates_at_any_depth_and_through_escapes_are_found() {
        assert!(reason(r#"{"id":"X","id":"Y"}"#).contains(r#"duplicate member name "id""#));
        assert!(reason(r#"{"a":{"s":1,"t":[{"k":1,"k":2}]}}"#).contains(r#""k""#));
        assert!(reason(r#"{"a":1,"\u0061":2}"#).contains(r#""a""#));
        let vex = r#"{"statements":[{"status":"affected","status":"not_affected"}]}"#;
        assert!(reason(vex).contains(r#""status""#));
        // Same names in sibling objects, names equal to values, escaped quotes: all fine.
        check(br#"{"a":{"x":1},"b":{"x":1},"c":"a","d":"q\"a","e":[{"x":1},{"x":2}]}"#).unwrap();
        check(br#"{"a":"}","b":"{\"a\":1,\"a\":2}"}"#).unwrap();
    }

    #[test]
    fn an_object_of_many_members_is_checked_in_linear_time() {
        // 300,000 members: a list of names compared pairwise would take hours here.
        let mut text = String::from("{");
        for i in 0..300_000 {
            text.push_str(&format!("\"k{i}\":0,"));
        }
        check(format!("{}}}", text.trim_end_matches(',')).as_bytes()).unwrap();
        text.push_str("\"k7\":1}");
        assert!(reason(&text).contains(r#""k7""#));
    }

    #[test]
    fn numbers_that_do_not_survive_as_doubles_are_refused() {
        for (n, why) in [
            ("9007199254740993", "beyond ±2^53"),
            ("18446744073709551616", "beyond ±2^53"),
            ("-9007199254740993", "beyond ±2^53"),
            ("1e400", "overflows"),
            ("1e-400", "underflows to zero"),
            ("-0.5e-400", "underflows to zero"),
        ] {
            let r = reason(&format!(r#"{{"cvss":{n}}}"#));
            assert!(r.contains(why) && r.contains(r#"member "cvss""#), "{n}: {r}");
        }
        // Written with a fraction or an exponent, the same integers.
        for n in ["9007199254740993.0", "9007199254740993e0", "-90071992547409930e-1", "1.8446744073709551617e19"] {
            let r = reason(&format!(r#"{{"cvss":{n}}}"#));
            assert!(r.contains("beyond ±2^53"), "{n}: {r}");
        }
        for ok in [
            "0",
            "-0",
            "9007199254740992",
            "-9007199254740992",
            "7.5",
            "1e10",
            "0.0",
            "0e-400",
            "1.5E-300",
            "9007199254740992.0",
            "1e20",
            "1.0e300",
            "123.456e2",
        ] {
            check(format!(r#"{{"n":{ok},"m":[{ok}]}}"#).as_bytes()).unwrap_or_else(|v| panic!("{ok}: {v:?}"));
        }
    }

    #[test]
    fn a_lone_surrogate_is_refused_and_does_not_end_the_check() {
        assert!(reason(r#"{"a":"\ud800","id":"X","id":"Y"}"#).contains("lone surrogate"));
        assert!(reason(r#"{"\udc00":1}"#).contains("lone surrogate"));
        check(br#"{"a":"\ud83d\ude00","b":"\u00e9"}"#).unwrap();
    }

    #[test]
    fn nesting_past_the_parser_limit_is_refused_in_constant_memory() {
        // 16 MiB of `[`: refused at the limit, before a stack of millions of entries.
        let deep = vec![b'['; 16 << 20];
        assert!(check(&deep).unwrap_err().reason.contains("nested deeper than 128"));
        // Deep inside a member a typed parser would skip, before a duplicate: still refused.
        let skipped = format!("{{\"zz\":{}1{},\"a\":1,\"a\":2}}", "[".repeat(129), "]".repeat(129));
        assert!(check(skipped.as_bytes()).is_err());
        // Within the limit duplicates are still found.
        let nested = format!("{}{{\"a\":1,\"a\":2}}{}", "[".repeat(100), "]".repeat(100));
        assert!(reason(&nested).contains("duplicate"));
    }

    #[test]
    fn invalid_json_is_left_to_the_parser() {
        for s in ["", "{", r#"{"a"#, "[1,", r#"{"a":"x"#] {
            let _ = check(s.as_bytes());
        }
    }
}
