//! Non-finite floats in a fingerprint, spelt as Python's `json.dumps` spells them.
//!
//! `serde_json` writes `NaN` and the infinities as `null` before its formatter sees the
//! value, so a formatter alone cannot tell `f64::NAN` from `()`. Python writes `NaN`,
//! `Infinity` and `-Infinity`; hashing `null` instead would make a legitimate retry look
//! like key reuse in a mixed fleet. [`NonFinite`] wraps the serializer: it forwards
//! everything unchanged except a non-finite float, for which it leaves the token in a
//! [`Pending`] cell and asks for a `null`; [`CanonicalFormatter`] writes the token there.

use std::cell::Cell;
use std::io;

use serde::ser::{
    Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant, Serializer,
};
use serde_json::ser::Formatter;

use crate::wire::json_text::{FloatStyle, PythonFormatter};

/// The token to write instead of the next `null`, shared by [`NonFinite`] and
/// [`CanonicalFormatter`].
pub(crate) type Pending = Cell<Option<&'static str>>;

/// Python's spelling of a non-finite float.
fn token(x: f64) -> &'static str {
    if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// The formatter of fingerprint text: Python `repr` floats, integers in full, and a
/// pending non-finite token in place of `null`.
#[derive(Debug)]
pub(crate) struct CanonicalFormatter<'p> {
    pub(crate) pending: &'p Pending,
}

impl Formatter for CanonicalFormatter<'_> {
    fn write_null<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(self.pending.take().unwrap_or("null").as_bytes())
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        python_repr().write_f64(writer, value)
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        python_repr().write_f32(writer, value)
    }

    fn write_i128<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: i128) -> io::Result<()> {
        python_repr().write_i128(writer, value)
    }

    fn write_u128<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: u128) -> io::Result<()> {
        python_repr().write_u128(writer, value)
    }
}

fn python_repr() -> PythonFormatter {
    PythonFormatter {
        style: FloatStyle::PythonRepr,
    }
}

/// A serializer that forwards to `inner`, except that a non-finite float becomes its
/// Python token (through [`Pending`]). Map keys are passed on unwrapped: a float key is
/// `serde_json`'s to refuse.
pub(crate) struct NonFinite<'p, S> {
    pub(crate) inner: S,
    pub(crate) pending: &'p Pending,
}

/// A value serialized through [`NonFinite`].
struct Wrapped<'p, 'v, T: ?Sized> {
    value: &'v T,
    pending: &'p Pending,
}

impl<T: Serialize + ?Sized> Serialize for Wrapped<'_, '_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(NonFinite {
            inner: serializer,
            pending: self.pending,
        })
    }
}

/// A compound serializer of `inner` whose elements go through [`NonFinite`].
pub(crate) struct Compound<'p, C> {
    inner: C,
    pending: &'p Pending,
}

impl<'p, C> Compound<'p, C> {
    fn wrap<'v, T: ?Sized>(&self, value: &'v T) -> Wrapped<'p, 'v, T> {
        Wrapped {
            value,
            pending: self.pending,
        }
    }
}

impl<'p, S: Serializer> NonFinite<'p, S> {
    fn wrap<'v, T: ?Sized>(&self, value: &'v T) -> Wrapped<'p, 'v, T> {
        Wrapped {
            value,
            pending: self.pending,
        }
    }

    fn non_finite(self, value: f64) -> Result<S::Ok, S::Error> {
        self.pending.set(Some(token(value)));
        let done = self.inner.serialize_unit();
        // Cleared whatever `inner` did with it, so no later `null` picks it up.
        self.pending.set(None);
        done
    }
}

macro_rules! forward {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
            self.inner.$method(v)
        }
    )*};
}

impl<'p, S: Serializer> Serializer for NonFinite<'p, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'p, S::SerializeSeq>;
    type SerializeTuple = Compound<'p, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'p, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'p, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'p, S::SerializeMap>;
    type SerializeStruct = Compound<'p, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'p, S::SerializeStructVariant>;

    forward! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f32(v)
        } else {
            self.non_finite(f64::from(v))
        }
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            self.inner.serialize_f64(v)
        } else {
            self.non_finite(v)
        }
    }

    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_none()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        let value = self.wrap(value);
        self.inner.serialize_some(&value)
    }

    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_variant(name, index, variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let value = self.wrap(value);
        self.inner.serialize_newtype_struct(name, &value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        let value = self.wrap(value);
        self.inner
            .serialize_newtype_variant(name, index, variant, &value)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        let pending = self.pending;
        let inner = self.inner.serialize_seq(len)?;
        Ok(Compound { inner, pending })
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        let pending = self.pending;
        let inner = self.inner.serialize_tuple(len)?;
        Ok(Compound { inner, pending })
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        let pending = self.pending;
        let inner = self.inner.serialize_tuple_struct(name, len)?;
        Ok(Compound { inner, pending })
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        let pending = self.pending;
        let inner = self
            .inner
            .serialize_tuple_variant(name, index, variant, len)?;
        Ok(Compound { inner, pending })
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        let pending = self.pending;
        let inner = self.inner.serialize_map(len)?;
        Ok(Compound { inner, pending })
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        // `serde_json`'s raw-value and arbitrary-precision number tokens arrive here too
        // and are forwarded as they are: their text reaches the formatter unchanged.
        let pending = self.pending;
        let inner = self.inner.serialize_struct(name, len)?;
        Ok(Compound { inner, pending })
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let pending = self.pending;
        let inner = self
            .inner
            .serialize_struct_variant(name, index, variant, len)?;
        Ok(Compound { inner, pending })
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// The compound serializers whose elements are values: each element is wrapped, so a
/// float inside it is written as Python writes it; the rest is forwarded.
macro_rules! wrapping_compound {
    ($($trait:ident::$method:ident),* $(,)?) => {$(
        impl<C: $trait> $trait for Compound<'_, C> {
            type Ok = C::Ok;
            type Error = C::Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                let value = self.wrap(value);
                self.inner.$method(&value)
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.inner.end()
            }
        }
    )*};
}

wrapping_compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl<C: SerializeMap> SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        self.inner.serialize_key(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        let value = self.wrap(value);
        self.inner.serialize_value(&value)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeStruct> SerializeStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let value = self.wrap(value);
        self.inner.serialize_field(key, &value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}

impl<C: SerializeStructVariant> SerializeStructVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), C::Error> {
        let value = self.wrap(value);
        self.inner.serialize_field(key, &value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
        self.inner.skip_field(key)
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.inner.end()
    }
}
