//! A push: what billhook sends for one delivery (or for a registration check) — the body in the
//! webhook's payload format (`envelope`, `moneybird`), its Idempotency-Key (`idempotency`), its
//! signatures (`sign`, with keys from `credentials`) and the webhook's own headers (`headers`).
//! `build` is the one way a push is made, by the worker and by verify_endpoint alike. Pure: no
//! Postgres calls.

pub mod credentials;
pub mod envelope;
pub mod headers;
pub mod idempotency;
pub mod moneybird;
pub mod sign;

use std::time::Duration;

use super::url_policy::basic_auth;
use envelope::{Envelope, Payload, PayloadFormat, Unbuildable};
use sign::SigningKey;

/// One signed POST. The signature is made when the request leaves, so a retry carries a fresh
/// `webhook-timestamp` under the same `webhook-id` (the idempotency key).
pub struct Push {
    /// Without credentials: those travel in `headers` as Authorization (see `Push::new`), so no
    /// error text of the HTTP client can quote them.
    pub url: String,
    pub body: Vec<u8>,
    pub idempotency_key: String,
    pub signing_keys: Vec<SigningKey>,
    /// The webhook's own headers (checked when it was written, headers.rs).
    pub headers: Vec<(String, String)>,
    /// The webhook's own request timeout, instead of the agent's.
    pub request_timeout: Option<Duration>,
}

impl Push {
    /// A push to `url`, whose credentials (if any) become its Authorization header.
    pub fn new(url: &str, body: Vec<u8>, idempotency_key: String, signing_keys: Vec<SigningKey>) -> Push {
        let (url, authorization) = basic_auth(url);
        let headers = authorization.map(|value| ("Authorization".to_string(), value)).into_iter().collect();
        Push { url, body, idempotency_key, signing_keys, headers, request_timeout: None }
    }
}

/// The webhook a push goes to, as far as the push is concerned.
pub struct Destination<'a> {
    /// May hold credentials: they become the Authorization header.
    pub url: &'a str,
    pub format: PayloadFormat,
    pub payload: Payload,
    pub signing_keys: Vec<SigningKey>,
    /// The webhook's own headers (checked when it was written).
    pub headers: Vec<(String, String)>,
    /// The webhook's own request timeout; None is the worker's.
    pub request_timeout: Option<Duration>,
}

/// The push of `envelope` to `destination` under `idempotency_key`; the signature is made when it
/// leaves (http_client.rs). Err when the body cannot be made in the destination's format.
pub fn build(
    destination: Destination<'_>,
    envelope: &Envelope<'_>,
    idempotency_key: String,
) -> Result<Push, Unbuildable> {
    let body = envelope.to_json(destination.format, destination.payload)?;
    let mut push = Push::new(destination.url, body, idempotency_key, destination.signing_keys);
    push.headers.extend(destination.headers);
    push.request_timeout = destination.request_timeout;
    Ok(push)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn envelope(entity: &RawValue) -> Envelope<'_> {
        Envelope {
            administration_id: "1".into(),
            webhook_id: "7".into(),
            webhook_token: "token",
            entity_type: "SalesInvoice",
            entity_id: "42".into(),
            state: Some("open"),
            action: "sales_invoice_created",
            event_id: Some("9".into()),
            occurred_at: "2026-01-01T00:00:00.000000Z",
            entity,
            previous_state: None,
        }
    }

    #[test]
    fn a_push_carries_the_body_credentials_headers_and_timeout_of_its_destination() {
        let entity = RawValue::from_string(r#"{"id":"42"}"#.into()).unwrap();
        let destination = Destination {
            url: "https://user:secret@hooks.example.com/in",
            format: PayloadFormat::Billhook,
            payload: Payload::Full,
            signing_keys: vec![SigningKey::Hmac(b"k".to_vec())],
            headers: vec![("X-Tenant".into(), "a".into())],
            request_timeout: Some(Duration::from_secs(3)),
        };
        let push = build(destination, &envelope(&entity), "key-9".into()).unwrap();
        assert_eq!(push.url, "https://hooks.example.com/in", "no credentials in the URL");
        assert_eq!(push.headers[0].0, "Authorization");
        assert_eq!(push.headers[1], ("X-Tenant".to_string(), "a".to_string()));
        assert_eq!(push.request_timeout, Some(Duration::from_secs(3)));
        assert_eq!(push.idempotency_key, "key-9");
        assert_eq!(push.signing_keys.len(), 1);
        let body: serde_json::Value = serde_json::from_slice(&push.body).unwrap();
        assert_eq!(body["entity_id"], "42");
        assert_eq!(body["event_id"], "9");
        assert_eq!(body["entity"]["id"], "42");
    }
}
