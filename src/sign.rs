//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! keyed with the base64 part of a `whsec_` secret. Pure: receivers' standardwebhooks and svix
//! libraries verify these unmodified.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::credentials::SECRET_PREFIX;

/// The raw HMAC key of a `whsec_<base64>` secret (a bare base64 secret is accepted too).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).ok().filter(|key| !key.is_empty())
}

/// The `webhook-signature` header value: one `v1,<signature>` per key, space-separated, so a
/// receiver holding either the new or the old secret accepts the push during a rotation.
pub fn signature_header(message_id: &str, timestamp: i64, body: &[u8], keys: &[Vec<u8>]) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
            mac.update(message_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = signature_header("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#, &[key]);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let keys = [b"new-key".to_vec(), b"old-key".to_vec()];
        let both = signature_header("id", 1, b"{}", &keys);
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature_header("id", 1, b"{}", &keys[..1]));
        assert_eq!(parts[1], signature_header("id", 1, b"{}", &keys[1..]));
    }

    #[test]
    fn rejects_secrets_that_are_not_base64() {
        assert_eq!(secret_key("whsec_not base64!"), None);
        assert_eq!(secret_key("whsec_"), None);
        assert_eq!(secret_key("whsec_AAEC"), Some(vec![0, 1, 2]));
    }
}
