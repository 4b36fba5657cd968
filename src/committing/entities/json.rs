//! JSON text written piece by piece, for entities built from their rows: objects of keys and
//! values, arrays of values already written. Pure. Postgres turns the text into jsonb, which orders
//! an object's keys its own way, so the order written here does not matter.

/// A JSON object being written.
pub struct Object(String);

impl Object {
    pub fn with_capacity(bytes: usize) -> Object {
        let mut text = String::with_capacity(bytes);
        text.push('{');
        Object(text)
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_string(&mut self.0, key);
        self.0.push(':');
    }

    /// `key` with a string value, or null.
    pub fn string(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(value) => push_string(&mut self.0, value),
            None => self.0.push_str("null"),
        }
    }

    /// `key` with a value that is JSON already (a number, a boolean, an object, an array), or null.
    pub fn json(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        self.0.push_str(value.unwrap_or("null"));
    }

    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// A JSON array of values that are JSON already.
pub fn array<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::from("[");
    for (n, value) in values.into_iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        text.push_str(value);
    }
    text.push(']');
    text
}

/// `value` as a JSON string.
pub fn string(value: &str) -> String {
    let mut text = String::with_capacity(value.len() + 2);
    push_string(&mut text, value);
    text
}

/// `value` as a JSON string: quotes, backslashes and control characters escaped, everything else
/// as it is.
fn push_string(text: &mut String, value: &str) {
    text.push('"');
    let mut plain_from = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        text.push_str(&value[plain_from..at]);
        if escaped.is_empty() {
            text.push_str(&format!("\\u{byte:04x}"));
        } else {
            text.push_str(escaped);
        }
        plain_from = at + 1;
    }
    text.push_str(&value[plain_from..]);
    text.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
    }

    #[test]
    fn strings_come_back_as_they_went_in() {
        for value in ["", "plain", "quote \" and \\ backslash", "\u{0}\u{1}\u{1f}\n\r\t\u{8}\u{c}", "é € 🦀", "\u{7f}"]
        {
            let mut object = Object::with_capacity(0);
            object.string(value, Some(value));
            let text = object.finish();
            assert_eq!(parsed(&text), serde_json::json!({ value: value }), "{text}");
        }
    }

    #[test]
    fn objects_hold_nulls_numbers_and_nested_json() {
        let mut inner = Object::with_capacity(8);
        inner.json("n", Some("5"));
        let mut object = Object::with_capacity(64);
        object.string("a", None);
        object.json("b", None);
        object.json("c", Some("true"));
        object.json("d", Some(&inner.finish()));
        object.json("e", Some(&array(["1", "{}"])));
        object.json("f", Some(&array([])));
        assert_eq!(
            parsed(&object.finish()),
            serde_json::json!({"a": null, "b": null, "c": true, "d": {"n": 5}, "e": [1, {}], "f": []})
        );
    }

    #[test]
    fn an_empty_object_is_valid() {
        assert_eq!(Object::with_capacity(0).finish(), "{}");
    }
}
