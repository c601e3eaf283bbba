//! Canonical JSON straight from a `Serialize` value, without a `serde_json::Value` of the
//! whole document: each object is held as its members' finished bytes until it is sorted and
//! written, so a document of many small parts (a run manifest of 100,000 entries, a
//! provenance statement) costs about twice its output in memory instead of a tree of maps
//! ten times that size. Scalars go through `serde_json::Value`, so numbers and strings come
//! out exactly as [`super::write_value`] writes them.

use super::write_value;
use serde::ser::{self, Serialize};
use serde_json::{Error, Value};

type Result<T> = std::result::Result<T, Error>;

/// Serializes into `out`.
pub(super) struct Direct<'a> {
    pub(super) out: &'a mut Vec<u8>,
}

impl Direct<'_> {
    fn scalar<T: Serialize + ?Sized>(self, v: &T) -> Result<()> {
        let value = serde_json::to_value(v)?;
        write_value(self.out, &value).map_err(Error::io)
    }
}

/// Writes `members` (key, canonical value bytes) as an object: sorted by the UTF-16 code units
/// of the keys; a repeated key keeps its last value, as a `serde_json::Map` would.
fn write_object(out: &mut Vec<u8>, mut members: Vec<(String, Vec<u8>)>) -> Result<()> {
    members.reverse();
    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    members.dedup_by(|later, earlier| later.0 == earlier.0);
    out.push(b'{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_value(out, &Value::String(key.clone())).map_err(Error::io)?;
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
    Ok(())
}

fn bytes_of<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    v.serialize(Direct { out: &mut out })?;
    Ok(out)
}

fn key_of<T: Serialize + ?Sized>(key: &T) -> Result<String> {
    match serde_json::to_value(key)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(ser::Error::custom(format!("an object key must be a string, not {other}"))),
    }
}

/// An array being written.
pub(super) struct Seq<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// For a tuple variant: close the wrapping object too.
    wrapped: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        v.serialize(Direct { out: self.out })
    }

    fn close(self) -> Result<()> {
        self.out.push(b']');
        if self.wrapped {
            self.out.push(b'}');
        }
        Ok(())
    }
}

/// An object being collected.
pub(super) struct Obj<'a> {
    out: &'a mut Vec<u8>,
    members: Vec<(String, Vec<u8>)>,
    key: Option<String>,
    /// For a struct variant: the variant name it is wrapped in.
    variant: Option<&'static str>,
}

impl Obj<'_> {
    fn close(self) -> Result<()> {
        match self.variant {
            None => write_object(self.out, self.members),
            Some(name) => {
                let mut inner = Vec::new();
                write_object(&mut inner, self.members)?;
                write_object(self.out, vec![(name.to_owned(), inner)])
            }
        }
    }
}

macro_rules! scalars {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<()> {
            self.scalar(&v)
        }
    )*};
}

impl<'a> ser::Serializer for Direct<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Obj<'a>;
    type SerializeStruct = Obj<'a>;
    type SerializeStructVariant = Obj<'a>;

    scalars!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64,
        serialize_u128: u128, serialize_f32: f32, serialize_f64: f64, serialize_char: char, serialize_str: &str,
        serialize_bytes: &[u8]);

    fn serialize_none(self) -> Result<()> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<()> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<()> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        self.serialize_none()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<()> {
        self.scalar(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<()> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<()> {
        write_object(self.out, vec![(variant.to_owned(), bytes_of(v)?)])
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>> {
        self.out.push(b'[');
        Ok(Seq { out: self.out, first: true, wrapped: false })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, variant: &'static str, _: usize) -> Result<Seq<'a>> {
        // One member, so nothing to sort: open the object here and close it after the array.
        self.out.push(b'{');
        write_value(self.out, &Value::String(variant.to_owned())).map_err(Error::io)?;
        self.out.extend_from_slice(b":[");
        Ok(Seq { out: self.out, first: true, wrapped: true })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Obj<'a>> {
        Ok(Obj { out: self.out, members: Vec::with_capacity(len.unwrap_or(0)), key: None, variant: None })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Obj<'a>> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, variant: &'static str, len: usize) -> Result<Obj<'a>> {
        Ok(Obj { out: self.out, members: Vec::with_capacity(len), key: None, variant: Some(variant) })
    }
}

/// The array traits serde has one of per kind of sequence, all writing elements in order.
macro_rules! seq_traits {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
                self.element(v)
            }
            fn end(self) -> Result<()> {
                self.close()
            }
        }
    )*};
}
seq_traits!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Obj<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.key = Some(key_of(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        let key = self.key.take().ok_or_else(|| <Error as ser::Error>::custom("a map value without its key"))?;
        self.members.push((key, bytes_of(v)?));
        Ok(())
    }
    fn end(self) -> Result<()> {
        self.close()
    }
}

/// The two struct traits: a named field is a member.
macro_rules! struct_traits {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Obj<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Result<()> {
                self.members.push((key.to_owned(), bytes_of(v)?));
                Ok(())
            }
            fn end(self) -> Result<()> {
                self.close()
            }
        }
    )*};
}
struct_traits!(SerializeStruct, SerializeStructVariant);
