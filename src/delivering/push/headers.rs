//! A webhook's own HTTP headers (`webhooks.headers`, e.g. a bearer token): checked when the webhook
//! is written, sent with every push. Pure: no Postgres calls.

use serde_json::Value;

/// Headers a webhook may have at most.
pub const MAX_HEADERS: usize = 32;
/// Longest value of one header, in bytes.
pub const MAX_VALUE_LENGTH: usize = 4096;
/// Headers billhook writes itself (and the framing of the request): a webhook's headers may not
/// replace them, nor any `webhook-*` header of the signature scheme.
pub const RESERVED: [&str; 7] =
    ["content-type", "content-length", "transfer-encoding", "connection", "host", "idempotency-key", "user-agent"];
const RESERVED_PREFIX: &str = "webhook-";

/// Why a webhook's headers are refused: the header's name (or the whole value) and the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidHeader {
    pub name: String,
    pub reason: String,
}

/// The headers of a `headers` value: a JSON object of names to string values. `url_has_credentials`:
/// the URL's credentials become the Authorization header, so the object may not set another.
pub fn parse_headers(value: &Value, url_has_credentials: bool) -> Result<Vec<(String, String)>, InvalidHeader> {
    let invalid = |name: &str, reason: &str| InvalidHeader { name: name.to_string(), reason: reason.to_string() };
    let Value::Object(object) = value else {
        return Err(invalid("headers", "not a JSON object of header names to string values"));
    };
    if object.len() > MAX_HEADERS {
        return Err(invalid("headers", &format!("more than {MAX_HEADERS} headers")));
    }
    let mut headers: Vec<(String, String)> = Vec::with_capacity(object.len());
    for (name, value) in object {
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(invalid(name, "not a header name (letters, digits and !#$%&'*+-.^_`|~ only)"));
        }
        if RESERVED.contains(&lower.as_str()) || lower.starts_with(RESERVED_PREFIX) {
            return Err(invalid(name, "set by billhook itself"));
        }
        if lower == "authorization" && url_has_credentials {
            return Err(invalid(name, "the URL's credentials are sent as the Authorization header already"));
        }
        if headers.iter().any(|(other, _)| other.eq_ignore_ascii_case(name)) {
            return Err(invalid(name, "given twice (header names ignore case)"));
        }
        let Value::String(value) = value else { return Err(invalid(name, "value is not a string")) };
        if value.len() > MAX_VALUE_LENGTH {
            return Err(invalid(name, &format!("value longer than {MAX_VALUE_LENGTH} bytes")));
        }
        // CR and LF would start a header of the receiver's choosing (header injection).
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(invalid(name, "value contains a control character (CR, LF, NUL, …)"));
        }
        headers.push((name.clone(), value.clone()));
    }
    Ok(headers)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(value: Value) -> InvalidHeader {
        parse_headers(&value, false).expect_err("refused")
    }

    #[test]
    fn accepts_an_object_of_string_values_in_order() {
        let headers = parse_headers(&json!({"Authorization": "Bearer abc", "X-Tenant": "7\tb"}), false).unwrap();
        assert_eq!(
            headers,
            vec![("Authorization".to_string(), "Bearer abc".to_string()), ("X-Tenant".to_string(), "7\tb".to_string())]
        );
        assert_eq!(parse_headers(&json!({}), true).unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_billhook_sets_and_header_injection() {
        for name in ["Content-Type", "host", "Idempotency-Key", "webhook-signature", "Webhook-Id", "User-Agent"] {
            assert_eq!(refused(json!({ name: "x" })).reason, "set by billhook itself", "{name}");
        }
        assert_eq!(refused(json!({"X-A": "a\r\nX-Evil: 1"})).name, "X-A");
        assert_eq!(refused(json!({"X-A": "a\u{0}"})).reason, "value contains a control character (CR, LF, NUL, …)");
        assert_eq!(refused(json!({"X A": "a"})).name, "X A");
        assert_eq!(refused(json!({"X-A:": "a"})).name, "X-A:");
        assert_eq!(refused(json!({"": "a"})).name, "");
        assert_eq!(refused(json!({"X-A": 1})).reason, "value is not a string");
        assert_eq!(refused(json!({"X-A": "a", "x-a": "b"})).reason, "given twice (header names ignore case)");
        assert_eq!(refused(json!(["X-A"])).name, "headers");
        assert_eq!(refused(json!({"X-A": "a".repeat(MAX_VALUE_LENGTH + 1)})).name, "X-A");
        let many: serde_json::Map<String, Value> = (0..=MAX_HEADERS).map(|n| (format!("X-{n}"), json!("v"))).collect();
        assert_eq!(refused(Value::Object(many)).reason, "more than 32 headers");
    }

    #[test]
    fn authorization_conflicts_with_credentials_in_the_url() {
        assert!(parse_headers(&json!({"Authorization": "Bearer a"}), false).is_ok());
        let refused = parse_headers(&json!({"authorization": "Bearer a"}), true).unwrap_err();
        assert_eq!(refused.name, "authorization");
    }
}
