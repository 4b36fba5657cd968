//! Standard Webhooks signatures over `"id.timestamp.body"`: `v1,<base64 HMAC-SHA256>` keyed with the
//! base64 part of a `whsec_` secret, and `v1a,<base64 ed25519 signature>` made with a `whsk_` key
//! whose public half (`whpk_`) receivers verify with. Pure: receivers' standardwebhooks and svix
//! libraries (v1) and any ed25519 implementation (v1a) verify these unmodified.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::Signer;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::delivering::push::credentials::{PRIVATE_KEY_PREFIX, PUBLIC_KEY_PREFIX, SECRET_PREFIX};

/// A key a push is signed with.
#[derive(Clone)]
pub enum SigningKey {
    Hmac(Vec<u8>),
    Ed25519(ed25519_dalek::SigningKey),
}

impl SigningKey {
    /// A stored key: `whsk_<base64 of a 32-byte seed>` is ed25519; `whsec_<base64>` (or bare
    /// base64) an HMAC secret.
    pub fn parse(stored: &str) -> Option<SigningKey> {
        match stored.strip_prefix(PRIVATE_KEY_PREFIX) {
            Some(encoded) => {
                ed25519_seed(encoded).map(|seed| SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
            None => secret_key(stored).map(SigningKey::Hmac),
        }
    }

    fn sign(&self, message: &[u8]) -> String {
        match self {
            SigningKey::Hmac(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
                mac.update(message);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            }
            SigningKey::Ed25519(key) => format!("v1a,{}", STANDARD.encode(key.sign(message).to_bytes())),
        }
    }
}

fn ed25519_seed(encoded: &str) -> Option<[u8; 32]> {
    STANDARD.decode(encoded).ok()?.try_into().ok()
}

/// The raw HMAC key of a `whsec_<base64>` secret (a bare base64 secret is accepted too).
fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).ok().filter(|key| !key.is_empty())
}

/// The `whpk_` public key of a `whsk_` private key; None for anything else.
pub fn public_key(private_key: &str) -> Option<String> {
    let seed = ed25519_seed(private_key.strip_prefix(PRIVATE_KEY_PREFIX)?)?;
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    Some(format!("{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(public.as_bytes())))
}

/// The `webhook-signature` header value: one signature per key, space-separated, so a receiver
/// holding either the new or the old key accepts the push during a rotation, and one that checks
/// only v1 or only v1a finds its own.
pub fn signature_header(message_id: &str, timestamp: i64, body: &[u8], keys: &[SigningKey]) -> String {
    let mut message = Vec::with_capacity(message_id.len() + body.len() + 22);
    message.extend_from_slice(message_id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.to_string().as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    keys.iter().map(|key| key.sign(&message)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    fn hmac(secret: &str) -> SigningKey {
        SigningKey::parse(secret).unwrap()
    }

    /// The example of the Standard Webhooks specification and its reference libraries.
    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = hmac("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let header = signature_header("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#, &[key]);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    /// RFC 8032, section 7.1, test 2: the seed, its public key and the signature of one byte.
    #[test]
    fn ed25519_matches_the_rfc_8032_test_vector() {
        let seed = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
        let seed: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&seed[2 * i..2 * i + 2], 16).unwrap()).collect();
        let private = format!("{PRIVATE_KEY_PREFIX}{}", STANDARD.encode(&seed));
        let public = public_key(&private).unwrap();
        let public_bytes = STANDARD.decode(public.strip_prefix(PUBLIC_KEY_PREFIX).unwrap()).unwrap();
        let hex: String = public_bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
        let SigningKey::Ed25519(key) = SigningKey::parse(&private).unwrap() else { panic!("an ed25519 key") };
        let signature: String = key.sign(&[0x72]).to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            signature,
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        );
    }

    #[test]
    fn a_v1a_signature_verifies_with_the_public_key_over_id_timestamp_and_body() {
        let private = crate::delivering::push::credentials::new_signing_key();
        let header = signature_header("msg_1", 1614265330, b"{}", &[SigningKey::parse(&private).unwrap()]);
        let encoded = header.strip_prefix("v1a,").expect("a v1a signature");
        let signature = Signature::from_slice(&STANDARD.decode(encoded).unwrap()).unwrap();
        let public = STANDARD.decode(public_key(&private).unwrap().strip_prefix(PUBLIC_KEY_PREFIX).unwrap()).unwrap();
        let public = VerifyingKey::from_bytes(&public.try_into().unwrap()).unwrap();
        assert!(public.verify(b"msg_1.1614265330.{}", &signature).is_ok());
        assert!(public.verify(b"msg_1.1614265331.{}", &signature).is_err(), "another timestamp");
    }

    #[test]
    fn rotation_and_both_kinds_sign_with_every_key_in_order() {
        let keys = [
            hmac("whsec_bmV3LWtleQ=="),
            hmac("whsec_b2xkLWtleQ=="),
            SigningKey::parse(&crate::delivering::push::credentials::new_signing_key()).unwrap(),
        ];
        let all = signature_header("id", 1, b"{}", &keys);
        let parts: Vec<&str> = all.split(' ').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], signature_header("id", 1, b"{}", &keys[..1]));
        assert_eq!(parts[1], signature_header("id", 1, b"{}", &keys[1..2]));
        assert!(parts[2].starts_with("v1a,"));
    }

    #[test]
    fn rejects_keys_that_are_not_base64_or_not_32_bytes() {
        assert_eq!(secret_key("whsec_not base64!"), None);
        assert_eq!(secret_key("whsec_"), None);
        assert_eq!(secret_key("whsec_AAEC"), Some(vec![0, 1, 2]));
        assert!(SigningKey::parse("whsk_AAEC").is_none(), "3 bytes are no ed25519 seed");
        assert!(SigningKey::parse("whsk_not base64!").is_none());
        assert_eq!(public_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
    }
}
