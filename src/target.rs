//! Webhook URL validation and the address policy that keeps pushes away from internal
//! networks (SSRF). Pure: no Postgres calls.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// Addresses a push must not reach unless `billhook.allow_private_targets` is on: loopback,
/// private, shared (CGNAT), link-local (cloud metadata at 169.254.169.254), unspecified,
/// multicast and broadcast — also when wrapped in an IPv4-mapped IPv6 address.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
            "169.254.169.254", "0.0.0.0", "0.1.2.3", "100.64.0.1", "224.0.0.1", "255.255.255.255",
            "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
        ] {
            assert!(is_private_address(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(!is_private_address(public.parse().unwrap()), "{public}");
        }
    }

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
