//! The Idempotency-Key of a push, a pure function of the install, the event and the webhook.
//!
//! Why not a random key drawn when the delivery row is made: the worker creates deliveries in
//! transactions that commit asynchronously and pushes right away, so a crash can lose a delivery
//! row whose push already reached the receiver. The fan-out after recovery makes the row again;
//! with a derived key it carries the key the receiver has already seen.
//!
//! The key is a name-based UUID (version 8 with SHA-256, RFC 9562 appendix B.2) of the install's
//! random namespace (`billhook.fan_out_state.key_namespace`), the event id and the webhook id: ids
//! restart with a new install, its namespace does not repeat.

use sha2::{Digest, Sha256};

pub fn delivery_key(namespace: &[u8; 16], event_id: i64, webhook_id: i64) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(namespace)
        .chain_update(event_id.to_be_bytes())
        .chain_update(webhook_id.to_be_bytes())
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key[6] = (key[6] & 0x0f) | 0x80;
    key[8] = (key[8] & 0x3f) | 0x80;
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMESPACE: [u8; 16] = *b"0123456789abcdef";

    #[test]
    fn the_same_event_and_webhook_always_give_the_same_key() {
        assert_eq!(delivery_key(&NAMESPACE, 7, 3), delivery_key(&NAMESPACE, 7, 3));
    }

    #[test]
    fn event_webhook_and_install_each_change_the_key() {
        let key = delivery_key(&NAMESPACE, 7, 3);
        assert_ne!(key, delivery_key(&NAMESPACE, 3, 7));
        assert_ne!(key, delivery_key(&NAMESPACE, 7, 4));
        assert_ne!(key, delivery_key(b"fedcba9876543210", 7, 3));
    }

    #[test]
    fn keys_are_version_8_rfc_9562_uuids() {
        for event in 0..100 {
            let key = delivery_key(&NAMESPACE, event, 1);
            assert_eq!(key[6] >> 4, 8, "version");
            assert_eq!(key[8] >> 6, 0b10, "variant");
        }
    }
}
