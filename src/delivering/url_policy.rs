//! Webhook URL validation and the address policy that keeps pushes away from internal
//! networks (SSRF). Pure: no Postgres calls.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const MAX_URL_LENGTH: usize = 2048;

/// Why a URL is refused: the URL as shown (credentials redacted, shortened) and the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidUrl {
    pub url: String,
    pub reason: String,
}

/// Accepts an absolute http(s) URL with a host, at most [`MAX_URL_LENGTH`] characters.
/// Credentials in the URL are allowed: Moneybird lets receivers put basic auth or a token there.
pub fn validate_url(raw: &str) -> Result<url::Url, InvalidUrl> {
    let invalid = |reason: &str| InvalidUrl { url: shorten(&redact_url(raw)), reason: reason.to_string() };
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

/// The URL as billhook shows it in views, logs and errors: credentials in it (basic auth, a token
/// as user name) replaced by `***`, as in `https://user:***@host/`. Text that is not a URL with
/// credentials comes back unchanged.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else { return raw.to_string() };
    match (parsed.username().is_empty(), parsed.password().is_some()) {
        (_, true) => {
            let _ = parsed.set_password(Some("***"));
        }
        (false, false) => {
            let _ = parsed.set_username("***");
        }
        (true, false) => return raw.to_string(),
    }
    parsed.to_string()
}

/// The URL as readers see it in views and operational events (billhook_reader may not read
/// `webhooks.url`): its scheme, host and port, with credentials, path and query each shown as
/// `***`, as in `https://***@host/***`. A URL's path or query is often its secret (Slack's
/// `/services/T/B/<secret>`, `?token=`), and only the URL's owner can tell which part is.
pub fn shown_url(raw: &str) -> String {
    let Ok(parsed) = url::Url::parse(raw) else { return "***".to_string() };
    let Some(host) = parsed.host_str() else { return "***".to_string() };
    let credentials = if parsed.username().is_empty() && parsed.password().is_none() { "" } else { "***@" };
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = if parsed.path() == "/" && parsed.query().is_none() && parsed.fragment().is_none() { "" } else { "***" };
    format!("{}://{credentials}{host}{port}/{rest}", parsed.scheme())
}

/// `text` with the credentials of `url` (if it has any) replaced by `***`: error texts of the HTTP
/// client may quote the URL.
pub fn redact_credentials(text: &str, url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else { return text.to_string() };
    let text = text.replace(url, &redact_url(url));
    // What redact_url hides: the password, or a user name standing alone (a token).
    match parsed.password().unwrap_or(parsed.username()) {
        "" => text,
        secret => text.replace(secret, "***"),
    }
}

/// A push's URL and its `Authorization` header: credentials in the URL (`https://user:pass@host/`,
/// as Moneybird allows) leave the URL and travel as HTTP basic auth, percent-decoded.
pub fn basic_auth(raw: &str) -> (String, Option<String>) {
    use base64::Engine;
    // Most URLs carry no credentials: no parse for them on every push.
    if !raw.contains('@') {
        return (raw.to_string(), None);
    }
    let Ok(mut parsed) = url::Url::parse(raw) else { return (raw.to_string(), None) };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return (raw.to_string(), None);
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let credentials = format!("{}:{}", decode(parsed.username()), decode(parsed.password().unwrap_or("")));
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    (parsed.to_string(), Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))))
}

/// Addresses a push must not reach unless `billhook.allow_private_targets` is on: loopback,
/// private, shared (CGNAT), link-local (cloud metadata at 169.254.169.254), unspecified,
/// multicast, broadcast and reserved addresses — also when an IPv6 address carries an IPv4 one
/// (IPv4-mapped and -compatible, NAT64, 6to4), and Teredo, whose IPv4 side cannot be checked.
pub fn is_private_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments 192.0.0.0/24, benchmarking 198.18.0.0/15, reserved 240.0.0.0/4.
        || (a, b, c) == (192, 0, 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::`.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let from = |high: u16, low: u16| Some(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)));
    match s {
        [0, 0, 0, 0, 0, 0 | 0xffff, high, low] => from(high, low),
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => from(high, low),
        [0x2002, high, low, ..] => from(high, low),
        _ => None,
    }
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let [first, second, ..] = ip.segments();
    ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        // link-local fe80::/10 and the deprecated site-local fec0::/10
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // local-use NAT64 64:ff9b:1::/48, Teredo 2001::/32
        || (first, second) == (0x64, 0xff9b)
        || (first, second) == (0x2001, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private_address(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "198.20.0.1",
            "192.0.1.1",
            "223.255.255.254",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::8.8.8.8",
        ] {
            assert!(!is_private_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn addresses_hidden_in_ipv6_and_reserved_ranges_are_private() {
        for private in [
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::",
            "::127.0.0.1",
            "::10.0.0.1",
            "::169.254.169.254",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.1",
            "240.0.0.1",
            "250.1.2.3",
            "fec0::1",
            "feff::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(is_private_address(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(redact_url("https://user:s3cret@example.com/hook?a=1"), "https://user:***@example.com/hook?a=1");
        assert_eq!(redact_url("https://t0ken@example.com/"), "https://***@example.com/");
        assert_eq!(redact_url("https://example.com/hook"), "https://example.com/hook");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn readers_see_a_urls_scheme_host_and_port_only() {
        let shown = |url| shown_url(url);
        assert_eq!(shown("https://hooks.slack.com/services/T0/B0/s3cret"), "https://hooks.slack.com/***");
        assert_eq!(shown("https://example.com/?token=s3cret"), "https://example.com/***");
        assert_eq!(shown("https://example.com/#s3cret"), "https://example.com/***");
        assert_eq!(shown("http://user:s3cret@127.0.0.1:8080/hook"), "http://***@127.0.0.1:8080/***");
        assert_eq!(shown("https://t0ken@example.com"), "https://***@example.com/");
        assert_eq!(shown("https://example.com:443/"), "https://example.com/");
        assert_eq!(shown("http://[::1]:9/"), "http://[::1]:9/");
        assert_eq!(shown("not a url s3cret"), "***");
        let url = "https://user:s3cret@example.com/hook";
        assert_eq!(
            redact_credentials("connecting to https://user:s3cret@example.com/hook: user s3cret refused", url),
            "connecting to https://user:***@example.com/hook: user *** refused"
        );
        assert_eq!(redact_credentials("timed out", "https://example.com/"), "timed out");
        assert_eq!(redact_credentials("bad t0ken", "https://t0ken@example.com/"), "bad ***");
    }

    #[test]
    fn credentials_in_the_url_become_basic_auth() {
        assert_eq!(
            basic_auth("https://user:s3cret@example.com/hook?a=1"),
            ("https://example.com/hook?a=1".to_string(), Some("Basic dXNlcjpzM2NyZXQ=".to_string()))
        );
        // Percent-encoded characters are sent decoded; a lone user name is a user with no password.
        assert_eq!(basic_auth("https://us%40r:p%3Ass@example.com/").1, Some("Basic dXNAcjpwOnNz".to_string()));
        assert_eq!(basic_auth("https://t0ken@example.com/").1, Some("Basic dDBrZW46".to_string()));
        assert_eq!(basic_auth("https://example.com/a@b"), ("https://example.com/a@b".to_string(), None));
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
                Err(InvalidUrl { url, reason: got }) => {
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
        let InvalidUrl { url, reason } = &err;
        assert_eq!(reason, "longer than 2048 characters");
        assert_eq!(url.chars().count(), 121);
    }
}
