//! The rules behind writing a webhook: its URL, headers and own settings, its generated token,
//! secrets and keys, and the registration check (verify_endpoint), which sends a real push. The
//! management functions themselves are SQL (`sql/api.sql`).

use pgrx::prelude::*;

use crate::delivering::push::envelope::{Envelope, Payload, PayloadFormat, Unbuildable};
use crate::delivering::push::sign::{self, SigningKey};
use crate::delivering::push::{self, credentials, headers::parse_headers, Destination};
use crate::delivering::{http_client, url_policy, webhook_settings};
use crate::error::{BillhookError, OrReport};
use crate::jsonb::JsonbText;

/// The URL as views and operational events show it: scheme, host and port (`url_policy::shown_url`).
#[pg_extern(immutable, parallel_safe, strict)]
fn redact_url(url: &str) -> String {
    url_policy::shown_url(url)
}

/// True for a URL billhook can deliver to; raises 22023 naming the URL and the reason otherwise.
#[pg_extern(immutable, parallel_safe)]
fn check_webhook_url(url: &str) -> bool {
    url_policy::validate_url(url).or_report();
    true
}

#[pg_extern(volatile, parallel_safe)]
fn generate_token() -> String {
    credentials::new_token()
}

#[pg_extern(volatile, parallel_safe)]
fn generate_signing_secret() -> String {
    credentials::new_signing_secret()
}

#[pg_extern(volatile, parallel_safe)]
fn generate_signing_key() -> String {
    credentials::new_signing_key()
}

/// The `whpk_` public key of a `whsk_` signing key (the generated column `webhooks.public_key`);
/// 22023 for anything else.
#[pg_extern(immutable, strict, parallel_safe)]
fn ed25519_public_key(signing_key: &str) -> String {
    sign::public_key(signing_key).ok_or(BillhookError::InvalidSigningKey).or_report()
}

/// The registration check: a `webhook.verification` push with the webhook's headers, signed with
/// each key of `signing_secret` (space-separated `whsec_` secrets and `whsk_` keys, as
/// billhook.signing_keys gives them), that must be answered with 200. Raises 22023 naming the URL
/// (credentials redacted) and what came back otherwise. Runs in the calling session, with the worker's timeouts, address policy and TLS roots.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn verify_endpoint(
    webhook_id: i64,
    administration_id: i64,
    url: &str,
    token: &str,
    signing_secret: &str,
    enabled_events: Vec<Option<String>>,
    headers: JsonbText,
    checked_at: &str,
) -> bool {
    let headers = headers_of(&headers, url);
    registration_check(webhook_id, administration_id, url, token, signing_secret, enabled_events, headers, checked_at)
}

/// The registration check without headers. Not in a fresh install's SQL: the install scripts of
/// 0.1.0 to 0.3.0 bind billhook.check_endpoint to this symbol, and an install of those versions
/// runs on this library until it is updated.
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn check_endpoint(
    webhook_id: i64,
    administration_id: i64,
    url: &str,
    token: &str,
    signing_secret: &str,
    enabled_events: Vec<Option<String>>,
    checked_at: &str,
) -> bool {
    registration_check(
        webhook_id,
        administration_id,
        url,
        token,
        signing_secret,
        enabled_events,
        Vec::new(),
        checked_at,
    )
}

#[allow(clippy::too_many_arguments)]
fn registration_check(
    webhook_id: i64,
    administration_id: i64,
    url: &str,
    token: &str,
    signing_secret: &str,
    enabled_events: Vec<Option<String>>,
    headers: Vec<(String, String)>,
    checked_at: &str,
) -> bool {
    let entity = serde_json::json!({
        "id": webhook_id.to_string(),
        "url": url_policy::redact_url(url),
        "enabled_events": enabled_events,
    });
    let entity = serde_json::value::to_raw_value(&entity).expect("JSON of strings serialises");
    let destination = Destination {
        url,
        format: PayloadFormat::Billhook,
        payload: Payload::Full,
        signing_keys: signing_secret.split_whitespace().filter_map(SigningKey::parse).collect(),
        headers,
        request_timeout: None,
    };
    let envelope = Envelope {
        administration_id: administration_id.to_string(),
        webhook_id: webhook_id.to_string(),
        webhook_token: token,
        entity_type: "Webhook",
        entity_id: webhook_id.to_string(),
        state: None,
        action: "webhook.verification",
        event_id: None,
        occurred_at: checked_at,
        entity: &entity,
        previous_state: None,
    };
    let key = format!("verify-{webhook_id}-{}", credentials::new_token());
    let push = push::build(destination, &envelope, key).unwrap_or_else(|Unbuildable(reason)| {
        BillhookError::EndpointCheckFailed { url: url_policy::redact_url(url), answer: reason }.report()
    });
    let outcome = http_client::Client::new(&crate::gucs::http_settings()).send(&push);
    let answer = match (outcome.http_status, outcome.error) {
        (Some(200), _) => return true,
        (Some(status), _) => format!("answered HTTP {status}"),
        (None, Some(error)) => error,
        (None, None) => "did not answer".to_string(),
    };
    BillhookError::EndpointCheckFailed {
        url: url_policy::redact_url(url),
        answer: url_policy::redact_credentials(&answer, url),
    }
    .report()
}

/// True for a webhook's own settings (NULL: the global value); raises 22023 naming the setting and
/// its value otherwise, by the rules of the settings themselves. Backs a check on `webhooks`.
#[pg_extern(immutable, parallel_safe)]
fn check_webhook_settings(
    retry_schedule: Option<&str>,
    request_timeout_ms: Option<f64>,
    max_in_flight: Option<i32>,
    max_requests_per_second: Option<f64>,
) -> bool {
    use webhook_settings as settings;
    if let Some(schedule) = retry_schedule {
        settings::parse_retry_schedule(schedule).or_report();
    }
    if let Some(milliseconds) = request_timeout_ms {
        settings::request_timeout(milliseconds).or_report();
    }
    if let Some(requests) = max_in_flight {
        settings::max_in_flight(requests).or_report();
    }
    if let Some(rate) = max_requests_per_second {
        settings::max_requests_per_second(rate).or_report();
    }
    true
}

/// True if `value` is one of the names the webhook option `option` takes (webhook_settings.rs);
/// raises 22023 naming it otherwise. Backs checks on `webhooks`.
#[pg_extern(immutable, parallel_safe, strict)]
fn check_webhook_choice(option: &str, value: &str) -> bool {
    webhook_settings::choice(option, value).or_report();
    true
}

/// True for headers a webhook with this URL may have (headers.rs); raises 22023 naming the bad
/// header otherwise. Backs a check on `webhooks`, so every way of writing one is validated.
#[pg_extern(immutable, parallel_safe)]
fn check_webhook_headers(headers: JsonbText, url: &str) -> bool {
    headers_of(&headers, url);
    true
}

/// The headers of a webhook with this URL, or 22023 naming the bad one.
fn headers_of(JsonbText(headers): &JsonbText, url: &str) -> Vec<(String, String)> {
    let headers: serde_json::Value = serde_json::from_str(headers)
        .map_err(|e| BillhookError::UnreadableJson { what: "headers", reason: e.to_string() })
        .or_report();
    parse_headers(&headers, url_policy::basic_auth(url).1.is_some()).or_report()
}
