//! A typed, borrowing view of an OSV advisory: what [`super::schema::check_osv`] checks and
//! what adapters read, without building a `serde_json::Value` tree.
//!
//! Parse it straight from a record's bytes with [`Osv::from_json`] (strings are borrowed from
//! the input unless they contain escapes), or from an already parsed `Value` with
//! `Osv::deserialize(&value)`. Every field is *lenient*: a field of an unexpected JSON type
//! deserialises as [`Text::Other`] / [`List::Other`] / [`Obj::Other`] instead of failing, so
//! [`Osv::check`] reports schema errors with the same messages whichever way the view was
//! built. Unknown fields are skipped.
//!
//! ```
//! use exportcore::evidence::osv::Osv;
//! let line = br#"{"id":"GHSA-1","modified":"2024-05-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"a"},"versions":["1.0.0"]}]}"#;
//! let osv = Osv::from_json(line)?;
//! let modified = osv.check().map_err(|e| exportcore::ExportError::evidence(exportcore::Location::file("x"), e))?;
//! assert_eq!(osv.id.as_str(), Some("GHSA-1"));
//! assert_eq!(modified.to_string(), "2024-05-01T00:00:00Z");
//! let affected = osv.affected.items()[0].get().unwrap();
//! assert_eq!(affected.package.get().unwrap().name.as_str(), Some("a"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::model::Timestamp;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

type Check<T> = std::result::Result<T, String>;

/// A JSON value seen as a string, when it is one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Text<'a> {
    /// The field is absent.
    #[default]
    Missing,
    /// `null`.
    Null,
    /// A string.
    Str(Cow<'a, str>),
    /// Any other JSON value (ignored).
    Other,
}

impl Text<'_> {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Text::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string when it is one and not empty.
    pub fn non_empty(&self) -> Option<&str> {
        self.as_str().filter(|s| !s.is_empty())
    }

    fn required(&self, key: &str, what: impl Fn() -> String) -> Check<&str> {
        match self {
            Text::Str(s) if !s.trim().is_empty() => Ok(s),
            Text::Str(_) => Err(format!("{}: \"{key}\" must not be empty", what())),
            Text::Missing => Err(format!("{}: missing required field \"{key}\"", what())),
            Text::Null | Text::Other => Err(format!("{}: \"{key}\" must be a string", what())),
        }
    }

    fn optional(&self, key: &str, what: impl Fn() -> String) -> Check<Option<&str>> {
        match self {
            Text::Missing | Text::Null => Ok(None),
            Text::Str(s) => Ok(Some(s)),
            Text::Other => Err(format!("{}: \"{key}\" must be a string", what())),
        }
    }
}

/// Consumes and ignores the rest of a sequence or map.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the non-matching visitor methods of a lenient type as "some other value".
macro_rules! other_values {
    ($other:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Text::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Text::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Text::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text::Null)
            }
            other_values!(Text::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| Text::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| Text::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A JSON value seen as an array of `T`, when it is one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum List<T> {
    /// The field is absent.
    #[default]
    Missing,
    /// `null`.
    Null,
    /// An array.
    Items(Vec<T>),
    /// Any other JSON value (ignored).
    Other,
}

impl<T> List<T> {
    /// The items (none unless it is an array).
    pub fn items(&self) -> &[T] {
        match self {
            List::Items(v) => v,
            _ => &[],
        }
    }

    fn optional(&self, key: &str, what: impl Fn() -> String) -> Check<&[T]> {
        match self {
            List::Missing | List::Null => Ok(&[]),
            List::Items(v) => Ok(v),
            List::Other => Err(format!("{}: \"{key}\" must be an array", what())),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List::Items(items))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(List::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(List::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(List::Other)
            }
            other_values!(List::Other);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| List::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A JSON value seen as an object of shape `T`, when it is an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Obj<T> {
    /// The field is absent.
    #[default]
    Missing,
    /// `null`.
    Null,
    /// An object.
    Obj(T),
    /// Any other JSON value (ignored).
    Other,
}

impl<T> Obj<T> {
    /// The object, if it is one.
    pub fn get(&self) -> Option<&T> {
        match self {
            Obj::Obj(t) => Some(t),
            _ => None,
        }
    }

    fn required(&self, what: impl Fn() -> String) -> Check<&T> {
        self.get().ok_or_else(|| format!("{} must be a JSON object", what()))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Obj::Obj)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Obj::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Obj::Null)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Obj::Other)
            }
            other_values!(Obj::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| Obj::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An OSV 1.6 advisory: the fields the schema check and the adapters use.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Osv<'a> {
    /// `id`.
    #[serde(borrow)]
    pub id: Text<'a>,
    /// `modified`.
    #[serde(borrow)]
    pub modified: Text<'a>,
    /// `published`.
    #[serde(borrow)]
    pub published: Text<'a>,
    /// `withdrawn`.
    #[serde(borrow)]
    pub withdrawn: Text<'a>,
    /// `aliases`.
    #[serde(borrow)]
    pub aliases: List<Text<'a>>,
    /// `summary`.
    #[serde(borrow)]
    pub summary: Text<'a>,
    /// `details`.
    #[serde(borrow)]
    pub details: Text<'a>,
    /// `severity`.
    #[serde(borrow)]
    pub severity: List<Obj<Severity<'a>>>,
    /// `affected`.
    #[serde(borrow)]
    pub affected: List<Obj<Affected<'a>>>,
    /// `references`.
    #[serde(borrow)]
    pub references: List<Obj<Reference<'a>>>,
    /// `database_specific`.
    #[serde(borrow)]
    pub database_specific: Obj<DatabaseSpecific<'a>>,
}

/// One `affected` entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Affected<'a> {
    /// `package`.
    #[serde(borrow)]
    pub package: Obj<Package<'a>>,
    /// `ranges`.
    #[serde(borrow)]
    pub ranges: List<Obj<Range<'a>>>,
    /// `versions`.
    #[serde(borrow)]
    pub versions: List<Text<'a>>,
}

/// `affected[].package`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Package<'a> {
    /// `ecosystem`.
    #[serde(borrow)]
    pub ecosystem: Text<'a>,
    /// `name`.
    #[serde(borrow)]
    pub name: Text<'a>,
}

/// `affected[].ranges[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Range<'a> {
    /// `type`: `ECOSYSTEM`, `SEMVER` or `GIT`.
    #[serde(borrow, rename = "type")]
    pub kind: Text<'a>,
    /// `events`.
    #[serde(borrow)]
    pub events: List<Obj<Event<'a>>>,
}

/// One range event: exactly one of its fields is set in a valid advisory.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Event<'a> {
    /// `introduced`.
    #[serde(borrow)]
    pub introduced: Text<'a>,
    /// `fixed`.
    #[serde(borrow)]
    pub fixed: Text<'a>,
    /// `last_affected`.
    #[serde(borrow)]
    pub last_affected: Text<'a>,
    /// `limit`.
    #[serde(borrow)]
    pub limit: Text<'a>,
}

/// `severity[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Severity<'a> {
    /// `type` (`CVSS_V3`, ...).
    #[serde(borrow, rename = "type")]
    pub kind: Text<'a>,
    /// `score` (a vector string).
    #[serde(borrow)]
    pub score: Text<'a>,
}

/// `references[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Reference<'a> {
    /// `url`.
    #[serde(borrow)]
    pub url: Text<'a>,
}

/// `database_specific` (the fields adapters read; the rest is skipped).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DatabaseSpecific<'a> {
    /// `severity` (GitHub's `LOW`, `MODERATE`, `HIGH`, `CRITICAL`).
    #[serde(borrow)]
    pub severity: Text<'a>,
    /// `cwe_ids`.
    #[serde(borrow)]
    pub cwe_ids: List<Text<'a>>,
}

impl<'a> Osv<'a> {
    /// Parses a record's bytes. Fails only on malformed JSON, a non-object, or a field given
    /// twice (then parse it as a `Value` first, which keeps the last, and deserialise that).
    pub fn from_json(bytes: &'a [u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }
}

impl Osv<'_> {
    /// Checks the OSV 1.6 rules: `id` and `modified` are required; the shapes of `aliases`,
    /// `affected` (package, ranges with their events, versions) and `severity` are checked
    /// when present. Returns `modified`.
    pub fn check(&self) -> Check<Timestamp> {
        let id = self.id.required("id", || "OSV advisory".into())?;
        let what = || format!("OSV advisory {id}");
        let time = |s: &str, key: &str| Timestamp::parse(s).map_err(|e| format!("{}: \"{key}\": {e}", what()));
        let modified = time(self.modified.required("modified", what)?, "modified")?;
        for (key, t) in [("published", &self.published), ("withdrawn", &self.withdrawn)] {
            if let Some(s) = t.optional(key, what)? {
                time(s, key)?;
            }
        }
        for (i, a) in self.aliases.optional("aliases", what)?.iter().enumerate() {
            if a.as_str().is_none() {
                return Err(format!("{}: aliases[{i}] must be a string", what()));
            }
        }
        for (i, aff) in self.affected.optional("affected", what)?.iter().enumerate() {
            let w = || format!("{}: affected[{i}]", what());
            let a = aff.required(w)?;
            if !matches!(a.package, Obj::Missing) {
                let wp = || format!("{}.package", w());
                let p = a.package.required(wp)?;
                p.ecosystem.required("ecosystem", wp)?;
                p.name.required("name", wp)?;
            }
            for (j, r) in a.ranges.optional("ranges", w)?.iter().enumerate() {
                let wr = || format!("{}.ranges[{j}]", w());
                let r = r.required(wr)?;
                let ty = r.kind.required("type", wr)?;
                if !matches!(ty, "ECOSYSTEM" | "SEMVER" | "GIT") {
                    return Err(format!("{}: unknown range type {ty:?}", wr()));
                }
                let events = r.events.optional("events", wr)?;
                if events.is_empty() {
                    return Err(format!("{}: \"events\" must be a non-empty array", wr()));
                }
                for (k, e) in events.iter().enumerate() {
                    let we = || format!("{}.events[{k}]", wr());
                    let e = e.required(we)?;
                    let set: Vec<(&str, &Text<'_>)> =
                        [("introduced", &e.introduced), ("fixed", &e.fixed), ("last_affected", &e.last_affected)]
                            .into_iter()
                            .chain([("limit", &e.limit)])
                            .filter(|(_, t)| !matches!(t, Text::Missing))
                            .collect();
                    if set.len() != 1 {
                        return Err(format!("{}: needs exactly one of introduced, fixed, last_affected, limit", we()));
                    }
                    set[0].1.required(set[0].0, we)?;
                }
            }
            for (j, v) in a.versions.optional("versions", w)?.iter().enumerate() {
                if v.as_str().is_none() {
                    return Err(format!("{}.versions[{j}] must be a string", w()));
                }
            }
        }
        for (i, s) in self.severity.optional("severity", what)?.iter().enumerate() {
            let w = || format!("{}: severity[{i}]", what());
            let s = s.required(w)?;
            s.kind.required("type", w)?;
            s.score.required("score", w)?;
        }
        Ok(modified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn borrows_plain_strings_and_owns_escaped_ones() {
        let bytes = br#"{"id":"A","details":"line\nbreak","aliases":["CVE-1"],"x":{"deep":[1,2,{"y":null}]}}"#;
        let osv = Osv::from_json(bytes).unwrap();
        assert!(matches!(osv.id, Text::Str(Cow::Borrowed("A"))));
        assert!(matches!(osv.details, Text::Str(Cow::Owned(ref s)) if s == "line\nbreak"));
        assert_eq!(osv.aliases.items().len(), 1);
    }

    #[test]
    fn lenient_fields_keep_the_shape_errors_for_check() {
        let v = json!({"id": "X", "modified": "2024-01-01T00:00:00Z", "aliases": "CVE-1",
            "references": "nope", "database_specific": [1], "summary": 5});
        let osv = Osv::deserialize(&v).unwrap();
        assert!(matches!(osv.references, List::Other));
        assert!(matches!(osv.database_specific, Obj::Other));
        assert_eq!(osv.summary, Text::Other);
        assert!(osv.check().unwrap_err().contains("\"aliases\" must be an array"));
        let v = json!({"id": null, "modified": "2024-01-01T00:00:00Z"});
        let nulls = Osv::deserialize(&v).unwrap();
        assert!(nulls.check().unwrap_err().contains("\"id\" must be a string"));
    }

    #[test]
    fn duplicate_fields_fail_the_direct_parse_only() {
        let bytes = br#"{"id":"A","id":"B","modified":"2024-01-01T00:00:00Z"}"#;
        assert!(Osv::from_json(bytes).is_err());
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(Osv::deserialize(&v).unwrap().id.as_str(), Some("B"));
    }

    use proptest::prelude::*;
    use serde_json::Value;

    /// A field that is absent, null, of the wrong type, or one of the given good values.
    fn field(good: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
        let goods = proptest::sample::select(good);
        prop_oneof![
            2 => goods.prop_map(Some),
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            1 => prop_oneof![Just(json!(7)), Just(json!(true)), Just(json!({"x": 1})), Just(json!(["x"]))].prop_map(Some),
        ]
    }

    fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
        Value::Object(fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect())
    }

    fn event() -> impl Strategy<Value = Value> {
        let v = || field(vec![json!("0"), json!("1.2.3"), json!(""), json!(" ")]);
        (v(), v(), v(), v(), any::<bool>()).prop_map(|(i, f, l, m, extra)| {
            let mut e = object(vec![("introduced", i), ("fixed", f), ("last_affected", l), ("limit", m)]);
            if extra {
                e["note"] = json!("ignored");
            }
            e
        })
    }

    fn osv_doc() -> impl Strategy<Value = Value> {
        let range = (
            field(vec![json!("ECOSYSTEM"), json!("SEMVER"), json!("GIT"), json!("OTHER")]),
            prop_oneof![
                prop::collection::vec(event(), 0..3).prop_map(|e| Some(Value::Array(e))),
                field(vec![json!([])])
            ],
        )
            .prop_map(|(t, events)| object(vec![("type", t), ("events", events)]));
        let package = (field(vec![json!("npm"), json!(""), json!("PyPI")]), field(vec![json!("a"), json!(" ")]))
            .prop_map(|(e, n)| object(vec![("ecosystem", e), ("name", n)]));
        let affected = (
            prop_oneof![package.prop_map(Some), field(vec![json!({})])],
            prop_oneof![prop::collection::vec(range, 0..3).prop_map(|r| Some(Value::Array(r))), field(vec![json!([])])],
            field(vec![json!(["1.0", "2.0"]), json!(["1.0", 3]), json!([])]),
        )
            .prop_map(|(p, r, v)| object(vec![("package", p), ("ranges", r), ("versions", v)]));
        let severity = (field(vec![json!("CVSS_V3"), json!("")]), field(vec![json!("CVSS:3.1/AV:N"), json!("")]))
            .prop_map(|(t, sc)| object(vec![("type", t), ("score", sc)]));
        let time = || field(vec![json!("2024-01-01T00:00:00Z"), json!("2024-13-01"), json!("")]);
        (
            field(vec![json!("GHSA-1"), json!(""), json!("  ")]),
            time(),
            time(),
            time(),
            field(vec![json!(["CVE-1"]), json!(["CVE-1", 2]), json!([])]),
            prop_oneof![
                prop::collection::vec(affected, 0..3).prop_map(|a| Some(Value::Array(a))),
                field(vec![json!([])])
            ],
            prop_oneof![
                prop::collection::vec(severity, 0..2).prop_map(|s| Some(Value::Array(s))),
                field(vec![json!([])])
            ],
            field(vec![json!("text"), json!({"deep": [1, {"x": null}]})]),
        )
            .prop_map(|(id, m, p, w, aliases, affected, severity, other)| {
                object(vec![
                    ("id", id),
                    ("modified", m),
                    ("published", p),
                    ("withdrawn", w),
                    ("aliases", aliases),
                    ("affected", affected),
                    ("severity", severity),
                    ("database_specific", other),
                ])
            })
    }

    proptest! {
        /// The view parsed straight from bytes and the view of a parsed `Value` reach the same
        /// verdict, with the same message, on well- and ill-shaped advisories alike.
        #[test]
        fn bytes_and_value_paths_judge_alike(doc in osv_doc()) {
            let bytes = serde_json::to_vec(&doc).unwrap();
            let direct = Osv::from_json(&bytes).unwrap().check();
            let via_value = crate::evidence::schema::check_osv(&doc);
            prop_assert_eq!(direct, via_value);
        }
    }
}
