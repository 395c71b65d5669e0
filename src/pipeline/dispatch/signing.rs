//! Standard Webhooks signing: the `webhook-id` a delivery keeps across retries and the
//! `webhook-signature` computed afresh for each attempt.
//!
//! The signature is `v1,` followed by the standard base64 of HMAC-SHA256 over
//! `"{id}.{timestamp}.{body}"`, keyed with the bytes decoded from the channel's `whsec_`
//! secret. A channel with several secrets (a partner rotating) sends one signature per
//! secret, separated by single spaces as the specification allows; a receiver accepts
//! the delivery if any one of them verifies with its key. Partners verify it with any
//! Standard Webhooks library, so this module is tested against the specification's
//! published vector and the `standardwebhooks` crate rather than against itself.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::config::SigningKey;

/// Crockford's base32 alphabet: no `i`, `l`, `o` or `u`, so an id read aloud or copied by
/// hand from a partner's log is not misread.
const ID_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// 26 symbols of 5 bits: 130 random bits, as many symbols as a ULID.
const ID_LEN: usize = 26;

/// A fresh `webhook-id`: `msg_` and 26 random base32 characters.
///
/// Made once per delivery and stored with it, so that every retry carries the same id
/// and the partner can drop duplicates.
pub fn new_webhook_id() -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(4 + ID_LEN);
    id.push_str("msg_");
    for _ in 0..ID_LEN {
        id.push(char::from(
            ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())],
        ));
    }
    id
}

/// The `webhook-signature` header value, `v1,<base64>`, for one attempt of a delivery.
///
/// `timestamp` is the attempt's whole Unix seconds, sent alongside as
/// `webhook-timestamp`; `body` is exactly the bytes sent.
pub fn sign(key: &SigningKey, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes a key of any length");
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one `v1,<base64>` per key, in the order given,
/// separated by single spaces. With one key it is exactly [`sign`].
pub fn signature_header(
    keys: &[SigningKey],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let signatures: Vec<String> = keys
        .iter()
        .map(|key| sign(key, webhook_id, timestamp, body))
        .collect();
    signatures.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use standardwebhooks::Webhook;

    /// The vector of the Standard Webhooks reference libraries
    /// (`libraries/php/tests/WebhookTest.php`, `testSignFunctionWorks`, in
    /// github.com/standard-webhooks/standard-webhooks), also in Svix's docs.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key(secret: &str) -> SigningKey {
        let encoded = secret.strip_prefix("whsec_").expect("a whsec_ secret");
        SigningKey(STANDARD.decode(encoded).expect("base64 secret"))
    }

    fn headers(id: &str, timestamp: i64, signature: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        headers
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        let signature = sign(
            &key(SPEC_SECRET),
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY.as_bytes(),
        );
        assert_eq!(signature, SPEC_SIGNATURE);
    }

    #[test]
    fn signature_matches_the_rust_reference_library_vector() {
        // The vector of the `standardwebhooks` crate's own `test_sign`.
        let signature = sign(
            &key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn the_standardwebhooks_crate_verifies_what_we_sign() {
        let webhook = Webhook::new(SPEC_SECRET).unwrap();
        let id = new_webhook_id();
        let timestamp = now();
        let body = br#"{"coupon":"WELCOME10","user_id":"u-1"}"#;
        let signature = sign(&key(SPEC_SECRET), &id, timestamp, body);

        webhook
            .verify(body, &headers(&id, timestamp, &signature))
            .expect("a receiver library accepts our signature");
        assert_eq!(
            webhook.sign(&id, timestamp, body).unwrap(),
            signature,
            "both implementations compute the same signature"
        );
    }

    #[test]
    fn a_tampered_body_fails_verification() {
        let webhook = Webhook::new(SPEC_SECRET).unwrap();
        let id = new_webhook_id();
        let timestamp = now();
        let signature = sign(&key(SPEC_SECRET), &id, timestamp, br#"{"amount":"10.00"}"#);

        let tampered = webhook.verify(
            br#"{"amount":"99.00"}"#,
            &headers(&id, timestamp, &signature),
        );
        assert!(tampered.is_err(), "a changed body must not verify");
        let other_id = webhook.verify(
            br#"{"amount":"10.00"}"#,
            &headers("msg_other", timestamp, &signature),
        );
        assert!(other_id.is_err(), "a changed id must not verify");
    }

    #[test]
    fn two_secrets_give_two_signatures_each_verifying_alone() {
        // The rotation of a partner's key: the old key and the new one, both in use.
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let id = new_webhook_id();
        let timestamp = now();
        let body = br#"{"coupon":"WELCOME10","user_id":"u-1"}"#;
        let header = signature_header(&[key(old), key(new)], &id, timestamp, body);

        let signatures: Vec<&str> = header.split(' ').collect();
        assert_eq!(signatures.len(), 2, "{header}");
        assert!(signatures.iter().all(|s| s.starts_with("v1,")), "{header}");
        for secret in [old, new] {
            Webhook::new(secret)
                .unwrap()
                .verify(body, &headers(&id, timestamp, &header))
                .expect("a receiver holding either key alone accepts the delivery");
        }
        let other = "whsec_ZXhhbXBsZSB3YWxsZXQga2V5OiByZXBsYWNlIG1lISE=";
        let stranger = Webhook::new(other).unwrap();
        assert!(stranger
            .verify(body, &headers(&id, timestamp, &header))
            .is_err());
        assert_eq!(
            signature_header(&[key(old)], &id, timestamp, body),
            sign(&key(old), &id, timestamp, body),
            "one secret signs exactly as before"
        );
    }

    #[test]
    fn webhook_ids_are_prefixed_random_base32() {
        let id = new_webhook_id();
        let tail = id.strip_prefix("msg_").expect("msg_ prefix");
        assert_eq!(tail.len(), ID_LEN);
        assert!(tail.bytes().all(|b| ID_ALPHABET.contains(&b)), "{id}");
        assert_ne!(id, new_webhook_id());
    }
}
