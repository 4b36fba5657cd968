//! Webhook tokens and signing secrets, drawn from the operating system's CSPRNG.

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
}
