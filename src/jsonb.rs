//! jsonb arguments of SQL functions, read without pgrx's JsonB: that parses every argument with
//! serde_json, whose recursion limit (128) turns a deeper document into a panic, an internal error
//! to the caller. Functions that take jsonb read its text themselves and refuse what they cannot
//! read with an error of their own; the claim reads only a value's size.

use std::ffi::CStr;

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::{direct_function_call, pg_sys, FromDatum};

/// The text of a jsonb value, unparsed.
pub struct JsonbText(pub String);

impl FromDatum for JsonbText {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<JsonbText> {
        if is_null {
            return None;
        }
        let text = unsafe { direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(datum)]) }?;
        Some(JsonbText(text.to_string_lossy().into_owned()))
    }
}

/// The size a jsonb value has once detoasted and decompressed, read from its header (a TOAST
/// pointer or a compressed datum records it) without reading the value itself.
pub struct DetoastedSize(pub i64);

impl FromDatum for DetoastedSize {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<DetoastedSize> {
        if is_null {
            return None;
        }
        let size = unsafe { pg_sys::toast_raw_datum_size(datum) };
        Some(DetoastedSize(i64::try_from(size).unwrap_or(i64::MAX)))
    }
}

/// Arguments of SQL type jsonb that are read through their own `FromDatum`.
macro_rules! jsonb_argument {
    ($type:ty) => {
        unsafe impl<'fcx> ArgAbi<'fcx> for $type {
            unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> $type {
                let index = arg.index();
                unsafe { arg.unbox_arg_using_from_datum() }
                    .unwrap_or_else(|| pgrx::error!("billhook: jsonb argument {index} must not be NULL"))
            }

            unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> pgrx::nullable::Nullable<$type> {
                unsafe { arg.unbox_arg_using_from_datum() }.into()
            }
        }

        pgrx::impl_sql_translatable!($type, arg_only = "jsonb");
    };
}

jsonb_argument!(JsonbText);
jsonb_argument!(DetoastedSize);
