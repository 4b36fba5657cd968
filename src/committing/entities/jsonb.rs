//! jsonb values built directly, for entities built from their rows: keys and values pushed to
//! Postgres's own jsonb builder (`pushJsonbValue`, what jsonb_build_object and the jsonb parser
//! use), so that no JSON text is written only to be parsed again by the statement that stores it.
//! Postgres orders an object's keys its own way (and keeps the last of equal keys), so the order
//! pushed here does not matter.
//!
//! The builder keeps pointers to what it is given until `finish` writes the value: so strings are
//! copied into the current memory context as they are pushed (the row they come from is gone by
//! then), and a nested value (`JsonbDatum`) must live until its parent is finished.

use pgrx::pg_sys::{self, Datum};
use pgrx::{IntoDatum, PgMemoryContexts};

use super::rows::Unreadable;

use pg_sys::JsonbIteratorToken::{
    WJB_BEGIN_ARRAY, WJB_BEGIN_OBJECT, WJB_ELEM, WJB_END_ARRAY, WJB_END_OBJECT, WJB_KEY, WJB_VALUE,
};

/// A jsonb object (an uncompressed varlena in memory) made by `Object::finish`. It points into a
/// memory context and is valid only as long as that context: entities/ hands out only values in
/// the memory of the caller's SPI connection, used by its next statement.
#[derive(Clone, Copy)]
pub struct JsonbDatum(Datum);

impl JsonbDatum {
    /// The value copied into `context`, in exactly its size (a finished value is built in a buffer
    /// grown by doubling).
    pub fn copied_into(self, context: &PgMemoryContexts) -> JsonbDatum {
        unsafe {
            let value = self.0.cast_mut_ptr::<pg_sys::varlena>();
            let size = pgrx::varlena::varsize_any(value);
            let copy = pg_sys::MemoryContextAlloc(context.value(), size);
            std::ptr::copy_nonoverlapping(value as *const u8, copy as *mut u8, size);
            JsonbDatum(Datum::from(copy))
        }
    }
}

impl IntoDatum for JsonbDatum {
    fn into_datum(self) -> Option<Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// A JSON object being built.
pub struct Object {
    state: *mut pg_sys::JsonbParseState,
}

impl Object {
    pub fn new() -> Object {
        let mut object = Object { state: std::ptr::null_mut() };
        object.push(WJB_BEGIN_OBJECT, None);
        object
    }

    /// `key` with a string value, or null.
    pub fn string(&mut self, key: &'static str, value: Option<&str>) -> Result<(), Unreadable> {
        let mut value = match value {
            Some(value) => string_value(value)?,
            None => scalar(pg_sys::jbvType::jbvNull),
        };
        self.key(key);
        self.push(WJB_VALUE, Some(&mut value));
        Ok(())
    }

    /// `key` with null.
    pub fn null(&mut self, key: &'static str) {
        self.key(key);
        self.push(WJB_VALUE, Some(&mut scalar(pg_sys::jbvType::jbvNull)));
    }

    /// `key` with a number (a numeric datum).
    pub fn number(&mut self, key: &'static str, numeric: Datum) {
        self.key(key);
        let mut value = scalar(pg_sys::jbvType::jbvNumeric);
        value.val.numeric = numeric.cast_mut_ptr();
        self.push(WJB_VALUE, Some(&mut value));
    }

    /// `key` with a nested object or array.
    pub fn jsonb(&mut self, key: &'static str, nested: JsonbDatum) {
        self.key(key);
        self.push(WJB_VALUE, Some(&mut binary(nested)));
    }

    /// `key` with an array of nested objects or arrays, in order.
    pub fn array(&mut self, key: &'static str, elements: impl IntoIterator<Item = JsonbDatum>) {
        self.key(key);
        self.push(WJB_BEGIN_ARRAY, None);
        for element in elements {
            self.push(WJB_ELEM, Some(&mut binary(element)));
        }
        self.push(WJB_END_ARRAY, None);
    }

    /// The object as a jsonb value, in the current memory context.
    pub fn finish(mut self) -> JsonbDatum {
        let object = self.push(WJB_END_OBJECT, None);
        JsonbDatum(Datum::from(unsafe { pg_sys::JsonbValueToJsonb(object) }))
    }

    fn key(&mut self, key_text: &'static str) {
        let mut key = scalar(pg_sys::jbvType::jbvString);
        // A key's text is static: nothing to copy.
        key.val.string.val = key_text.as_ptr() as *mut std::ffi::c_char;
        key.val.string.len = key_text.len() as i32;
        self.push(WJB_KEY, Some(&mut key));
    }

    fn push(
        &mut self,
        token: pg_sys::JsonbIteratorToken::Type,
        value: Option<&mut pg_sys::JsonbValue>,
    ) -> *mut pg_sys::JsonbValue {
        let value = value.map_or(std::ptr::null_mut(), |v| v as *mut _);
        unsafe { pg_sys::pushJsonbValue(&mut self.state, token, value) }
    }
}

fn scalar(kind: pg_sys::jbvType::Type) -> pg_sys::JsonbValue {
    let mut value: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    value.type_ = kind;
    value
}

/// A jsonb string of `text`, copied into the current memory context: the builder keeps a pointer
/// to it until the value is finished.
fn string_value(text: &str) -> Result<pg_sys::JsonbValue, Unreadable> {
    // Longer strings jsonb cannot hold: the SQL builder then raises Postgres's own error.
    if text.len() > pg_sys::JENTRY_OFFLENMASK as usize {
        return Err(Unreadable);
    }
    let mut value = scalar(pg_sys::jbvType::jbvString);
    value.val.string.len = text.len() as i32;
    unsafe {
        let copy = pg_sys::palloc(text.len()) as *mut u8;
        std::ptr::copy_nonoverlapping(text.as_ptr(), copy, text.len());
        value.val.string.val = copy as *mut std::ffi::c_char;
    }
    Ok(value)
}

/// A nested jsonb value, pushed as its container: the builder copies its keys and values one by
/// one, pointing into it.
fn binary(nested: JsonbDatum) -> pg_sys::JsonbValue {
    let mut value = scalar(pg_sys::jbvType::jbvBinary);
    unsafe {
        let jsonb = nested.0.cast_mut_ptr::<pg_sys::Jsonb>();
        value.val.binary.data = &mut (*jsonb).root;
        value.val.binary.len = (pgrx::varlena::varsize_any(jsonb as *const pg_sys::varlena) - pg_sys::VARHDRSZ) as i32;
    }
    value
}
