//! Webhook tokens, signing secrets and ed25519 signing keys, drawn from the operating system's
//! CSPRNG.

use base64::Engine;
use rand::rngs::OsRng;
use rand::TryRngCore;

/// Like Moneybird's webhook token: 24 alphanumeric characters (about 143 bits).
pub const TOKEN_LENGTH: usize = 24;
const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Standard Webhooks secrets are `whsec_` followed by base64 of 24 to 64 random bytes.
pub const SECRET_PREFIX: &str = "whsec_";
const SECRET_BYTES: usize = 32;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.try_fill_bytes(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// Standard Webhooks ed25519 keys: `whsk_` and base64 of the 32-byte seed (private), `whpk_` and
/// base64 of the 32-byte public key.
pub const PRIVATE_KEY_PREFIX: &str = "whsk_";
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

pub fn new_token() -> String {
    let mut token = String::with_capacity(TOKEN_LENGTH);
    while token.len() < TOKEN_LENGTH {
        for byte in random_bytes::<32>() {
            // 248 = 4 * 62: rejecting larger bytes keeps every character equally likely.
            if byte < 248 && token.len() < TOKEN_LENGTH {
                token.push(TOKEN_ALPHABET[(byte % 62) as usize] as char);
            }
        }
    }
    token
}

pub fn new_signing_secret() -> String {
    let key = random_bytes::<SECRET_BYTES>();
    format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(key))
}

pub fn new_signing_key() -> String {
    format!("{PRIVATE_KEY_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_24_alphanumerics_and_distinct() {
        let tokens: HashSet<String> = (0..1000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 1000);
        for t in &tokens {
            assert_eq!(t.len(), TOKEN_LENGTH);
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()), "{t}");
        }
    }

    #[test]
    fn secrets_are_whsec_base64_of_32_bytes() {
        let secret = new_signing_secret();
        let key = secret.strip_prefix(SECRET_PREFIX).expect("prefix");
        let decoded = base64::engine::general_purpose::STANDARD.decode(key).expect("base64");
        assert_eq!(decoded.len(), SECRET_BYTES);
        assert_ne!(new_signing_secret(), secret);
    }

    #[test]
    fn signing_keys_are_whsk_base64_of_32_bytes_with_a_public_key() {
        let key = new_signing_key();
        let seed = key.strip_prefix(PRIVATE_KEY_PREFIX).expect("prefix");
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(seed).expect("base64").len(), 32);
        assert!(crate::delivering::push::sign::public_key(&key).unwrap().starts_with(PUBLIC_KEY_PREFIX));
        assert_ne!(new_signing_key(), key);
    }
}
