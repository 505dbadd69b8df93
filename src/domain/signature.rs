//! Signed inbound calls (IN-9), as the Standard Webhooks specification
//! defines them: a `whsec_` secret shared with the sender, and three headers,
//! `webhook-id`, `webhook-timestamp` (seconds since the epoch) and
//! `webhook-signature` (space-separated `v1,<base64 HMAC-SHA256>` entries,
//! any one of which may match), over `{id}.{timestamp}.{raw body}`.
//!
//! Pure: the caller passes the current time, so the tolerance is tested
//! without a clock. The same signing code will sign outbound deliveries
//! (WH-3).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What every secret starts with, so people and secret scanners know it.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far `webhook-timestamp` may be from now, either way: wider lets
/// captured calls be replayed longer; narrower refuses senders whose clocks
/// drift. Five minutes is the specification's recommendation.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Random bytes in a generated secret (192 bits; the specification asks for
/// 24 to 64).
const SECRET_BYTES: usize = 24;

/// Longest `webhook-id` accepted; it becomes the idempotency key, which has
/// the same limit.
pub const MAX_ID_LEN: usize = 255;

/// A flow's signing secret, `whsec_` + base64 of the key. Kept in clear by
/// the store (an HMAC needs the key itself), shown to people once, and never
/// printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(…)")
    }
}

impl SigningSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut key = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
    }

    /// A secret read back from the store, which only holds generated ones.
    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The HMAC key: the base64 after the prefix (the prefix is optional, as
    /// in the reference libraries). `None` if it does not decode.
    fn key(&self) -> Option<Vec<u8>> {
        let b64 = self.0.strip_prefix(SECRET_PREFIX).unwrap_or(&self.0);
        STANDARD.decode(b64).ok().filter(|k| !k.is_empty())
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Option<[u8; 32]> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key()?).ok()?;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        Some(mac.finalize().into_bytes().into())
    }

    /// The `webhook-signature` value for a message: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self
            .mac(id, &timestamp.to_string(), body)
            .unwrap_or_default();
        format!("v1,{}", STANDARD.encode(mac))
    }
}

/// The three headers of a signed call, as received (`None` when absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Why a signed call was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is absent (or empty).
    #[error("the call must be signed: the `{0}` header is missing")]
    Missing(&'static str),
    /// A header is malformed, or no signature matches.
    #[error("{0}")]
    Invalid(&'static str),
    /// Signed too long ago (or in the future): possibly a replay.
    #[error(
        "`webhook-timestamp` is {0} s away from the server's time; at most 300 s are accepted (check the sender's clock)"
    )]
    OutOfTolerance(i64),
}

/// Checks a call's signature headers against `secret` and the raw `body`;
/// `now` is the current time in seconds since the epoch. On success, the
/// `webhook-id` (the message's stable id, the same on a redelivery).
pub fn verify<'a>(
    secret: &SigningSecret,
    headers: &SignedHeaders<'a>,
    body: &[u8],
    now: i64,
) -> Result<&'a str, SignatureError> {
    use SignatureError::{Invalid, Missing};
    let present = |v: Option<&'a str>, name| v.filter(|s| !s.is_empty()).ok_or(Missing(name));
    let id = present(headers.id, "webhook-id")?;
    let timestamp = present(headers.timestamp, "webhook-timestamp")?;
    let signatures = present(headers.signature, "webhook-signature")?;
    if id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid(
            "`webhook-id` must be 1 to 255 visible ASCII characters",
        ));
    }
    let ts: i64 = timestamp
        .parse()
        .ok()
        .filter(|_| timestamp.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(Invalid(
            "`webhook-timestamp` must be whole seconds since the Unix epoch",
        ))?;
    let skew = now.saturating_sub(ts);
    if skew.abs() > TOLERANCE_SECS {
        return Err(SignatureError::OutOfTolerance(skew.abs()));
    }
    let expected = secret
        .mac(id, timestamp, body)
        .ok_or(Invalid("the flow's signing secret is unusable"))?;
    // Every entry is checked, matching or not, so the time taken does not
    // tell which one matched.
    let mut matched = subtle::Choice::from(0);
    for entry in signatures.split(' ') {
        let Some(("v1", b64)) = entry.split_once(',') else {
            continue; // another scheme (v1a) or noise: not ours to judge
        };
        if let Ok(sig) = STANDARD.decode(b64)
            && sig.len() == expected.len()
        {
            matched |= sig.ct_eq(&expected);
        }
    }
    if bool::from(matched) {
        Ok(id)
    } else {
        Err(Invalid(
            "no `v1` signature in `webhook-signature` matches this body with the flow's secret",
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    /// The example of the Standard Webhooks reference libraries: what they
    /// sign, we verify, and the other way round.
    #[test]
    fn matches_the_reference_libraries() {
        let secret = SigningSecret::from_trusted("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert_eq!(secret.sign(id, ts, body), sig);
        assert_eq!(
            verify(&secret, &headers(id, "1614265330", sig), body, ts + 10),
            Ok(id)
        );
    }

    #[test]
    fn any_one_of_several_signatures_is_enough() {
        let s = SigningSecret::generate();
        let good = s.sign("m1", 100, b"{}");
        let list = format!("v1,AAAA v1a,xyz {good} v1,bm9wZQ==");
        assert_eq!(
            verify(&s, &headers("m1", "100", &list), b"{}", 100),
            Ok("m1")
        );
        let other = SigningSecret::generate().sign("m1", 100, b"{}");
        assert!(matches!(
            verify(&s, &headers("m1", "100", &other), b"{}", 100),
            Err(SignatureError::Invalid(_))
        ));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let s = SigningSecret::generate();
        let sig = s.sign("m1", 100, b"{}");
        let mut h = headers("m1", "100", &sig);
        h.timestamp = None;
        assert_eq!(
            verify(&s, &h, b"{}", 100),
            Err(SignatureError::Missing("webhook-timestamp"))
        );
        h.timestamp = Some("");
        assert_eq!(
            verify(&s, &h, b"{}", 100),
            Err(SignatureError::Missing("webhook-timestamp"))
        );
        for bad_ts in ["1e3", "-100", "+100", " 100", "99999999999999999999"] {
            h.timestamp = Some(bad_ts);
            assert!(
                matches!(verify(&s, &h, b"{}", 100), Err(SignatureError::Invalid(_))),
                "{bad_ts}"
            );
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad_id in ["a b", "é", long.as_str()] {
            assert!(matches!(
                verify(&s, &headers(bad_id, "100", &sig), b"{}", 100),
                Err(SignatureError::Invalid(_))
            ));
        }
        assert_eq!(
            verify(&s, &SignedHeaders::default(), b"{}", 100),
            Err(SignatureError::Missing("webhook-id"))
        );
    }

    #[test]
    fn timestamps_beyond_five_minutes_either_way_are_refused() {
        let s = SigningSecret::generate();
        let ts = 1_700_000_000;
        let sig = s.sign("m1", ts, b"{}");
        let h = headers("m1", "1700000000", &sig);
        for now in [ts - 300, ts, ts + 300] {
            assert!(verify(&s, &h, b"{}", now).is_ok(), "{now}");
        }
        assert_eq!(
            verify(&s, &h, b"{}", ts + 301),
            Err(SignatureError::OutOfTolerance(301))
        );
        assert_eq!(
            verify(&s, &h, b"{}", ts - 301),
            Err(SignatureError::OutOfTolerance(301))
        );
    }

    #[test]
    fn generated_secrets_are_prefixed_random_and_not_debug_printed() {
        let (a, b) = (SigningSecret::generate(), SigningSecret::generate());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with(SECRET_PREFIX));
        assert_eq!(a.key().map(|k| k.len()), Some(SECRET_BYTES));
        assert!(!format!("{a:?}").contains(a.as_str()));
    }

    proptest! {
        #[test]
        fn a_signature_verifies_and_any_change_breaks_it(
            key in proptest::collection::vec(any::<u8>(), 24..64),
            id in "[!-~]{1,40}",
            ts in 1_000_000_000i64..4_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..200),
            other_id in "[!-~]{1,40}",
            ts_delta in 1i64..=300,
            flip in any::<prop::sample::Index>(),
            extra in any::<u8>(),
        ) {
            let s = SigningSecret::from_trusted(format!("whsec_{}", STANDARD.encode(&key)));
            let sig = s.sign(&id, ts, &body);
            let ts_s = ts.to_string();
            prop_assert_eq!(verify(&s, &headers(&id, &ts_s, &sig), &body, ts), Ok(id.as_str()));

            // Another body: one byte changed, or one byte more.
            let mut changed = body.clone();
            if changed.is_empty() {
                changed.push(extra);
            } else {
                let i = flip.index(changed.len());
                changed[i] ^= extra.max(1);
            }
            prop_assert!(verify(&s, &headers(&id, &ts_s, &sig), &changed, ts).is_err());
            let mut longer = body.clone();
            longer.push(extra);
            prop_assert!(verify(&s, &headers(&id, &ts_s, &sig), &longer, ts).is_err());

            // Another id.
            if other_id != id {
                prop_assert!(verify(&s, &headers(&other_id, &ts_s, &sig), &body, ts).is_err());
            }

            // Another timestamp, still within the tolerance of now.
            let moved = (ts + ts_delta).to_string();
            prop_assert!(verify(&s, &headers(&id, &moved, &sig), &body, ts + ts_delta).is_err());

            // Another secret.
            let mut key2 = key.clone();
            key2[0] ^= 1;
            let s2 = SigningSecret::from_trusted(format!("whsec_{}", STANDARD.encode(&key2)));
            prop_assert!(verify(&s2, &headers(&id, &ts_s, &sig), &body, ts).is_err());
        }
    }
}
