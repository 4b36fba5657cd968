//! A jsonb argument of a SQL function, as its text: pgrx's JsonB parses every argument with
//! serde_json, whose recursion limit (128) turns a deeper document into a panic, an internal error
//! to the caller. Functions that take jsonb read it themselves and refuse what they cannot read
//! with an error of their own.

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

unsafe impl<'fcx> ArgAbi<'fcx> for JsonbText {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> JsonbText {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| pgrx::error!("billhook: jsonb argument {index} must not be NULL"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> pgrx::nullable::Nullable<JsonbText> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(JsonbText, arg_only = "jsonb");
