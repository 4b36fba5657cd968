//! Webhook URL validation. Pure: no Postgres calls.

use crate::error::BillhookError;

pub const MAX_URL_LENGTH: usize = 2048;

/// Accepts an absolute http(s) URL with a host, at most [`MAX_URL_LENGTH`] characters.
/// Credentials in the URL are allowed: Moneybird lets receivers put basic auth or a token there.
pub fn validate_url(raw: &str) -> Result<url::Url, BillhookError> {
    let invalid = |reason: &str| BillhookError::InvalidUrl {
        url: shorten(raw),
        reason: reason.to_string(),
    };
    if raw.len() > MAX_URL_LENGTH {
        return Err(invalid(&format!("longer than {MAX_URL_LENGTH} characters")));
    }
    if raw.trim() != raw || raw.is_empty() {
        return Err(invalid("empty or surrounded by whitespace"));
    }
    let parsed = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!("scheme \"{}\" is not http or https", parsed.scheme())));
    }
    match parsed.host_str() {
        Some(host) if !host.is_empty() => Ok(parsed),
        _ => Err(invalid("no host")),
    }
}

/// Error messages name the bad value, but a 100 kB value would drown the message.
fn shorten(raw: &str) -> String {
    const SHOWN: usize = 120;
    match raw.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &raw[..cut]),
        None => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_with_host() {
        for ok in [
            "https://example.com/hook",
            "http://127.0.0.1:8080/x?token=abc",
            "https://user:pass@example.com/",
            "http://[::1]:9000/",
        ] {
            assert!(validate_url(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_relative_other_schemes_and_hostless() {
        for (bad, reason) in [
            ("/hook", "relative URL without a base"),
            ("example.com/hook", "relative URL without a base"),
            ("ftp://example.com/", "scheme \"ftp\" is not http or https"),
            ("mailto:a@example.com", "scheme \"mailto\" is not http or https"),
            ("http://", "empty host"),
            ("", "empty or surrounded by whitespace"),
            (" https://example.com", "empty or surrounded by whitespace"),
        ] {
            match validate_url(bad) {
                Err(BillhookError::InvalidUrl { url, reason: got }) => {
                    assert_eq!(url, bad);
                    assert_eq!(got, reason, "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn enforces_the_length_limit_and_shortens_the_message() {
        let at_limit = format!("https://example.com/{}", "a".repeat(MAX_URL_LENGTH - 20));
        assert_eq!(at_limit.len(), MAX_URL_LENGTH);
        assert!(validate_url(&at_limit).is_ok());
        let over = format!("{at_limit}b");
        let err = validate_url(&over).unwrap_err();
        let BillhookError::InvalidUrl { url, reason } = &err else { panic!("{err:?}") };
        assert_eq!(reason, "longer than 2048 characters");
        assert_eq!(url.chars().count(), 121);
    }
}
