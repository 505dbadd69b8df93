//! When a delivery is tried again, and whether it may go now: pure
//! functions of a webhook's settings, its delivery's history and the time,
//! so the delivery engine's decisions are tested without a clock or a
//! network.
//!
//! - [`verdict`]: what an attempt's answer means (WH-4): 2xx succeeds; 4xx
//!   other than 408, 409, 425 and 429 is final (410 also disables the
//!   webhook); 3xx, 5xx, 408/409/425/429, timeouts and connection errors are
//!   tried again, honouring `Retry-After` up to a cap.
//! - [`retry_delay`]: the default schedule (at once, 5 s, 5 min, 30 min, 2 h,
//!   5 h, 10 h, 10 h) with ±20 % jitter, cut off by the webhook's retry count.
//! - [`next_allowed`] and [`verification_matches`]: the one-per-hour rule for
//!   webhooks whose receiver has not answered with the key (WH-8).
//! - [`should_disable`]: a webhook failing without a success for a whole
//!   period is disabled (WH-12).

use std::time::Duration;

use rand::Rng;

use crate::domain::Millis;

/// The default schedule: the delay before each retry (WH-4).
pub const SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// Until verified, one delivery per hour (WH-8).
pub const UNVERIFIED_INTERVAL: Duration = Duration::from_secs(3600);

/// How an attempt failed before any answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Connect,
    /// The target resolved only to refused addresses (`incorrect_url_ip`).
    UnsafeTarget,
    /// The body template failed to render.
    Template,
    /// The request itself could not be built (a header that is not valid).
    Unsendable,
}

/// What an attempt's outcome means for its delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again; `after` is the receiver's `Retry-After`, capped.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// No more attempts; `disable` also turns the webhook off (410 Gone).
    Final {
        reason: String,
        disable: bool,
    },
}

/// The verdict on an HTTP answer (`status`, `Retry-After` header value).
pub fn verdict(status: u16, retry_after: Option<&str>, now: Millis, cap: Duration) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 409 | 425 | 429 | 500..=599 => Verdict::Retry {
            reason: format!("the receiver answered {status}"),
            after: retry_after
                .and_then(|v| parse_retry_after(v, now))
                .map(|d| d.min(cap)),
        },
        410 => Verdict::Final {
            reason: "the receiver answered 410 Gone: the webhook is disabled".into(),
            disable: true,
        },
        400..=499 => Verdict::Final {
            reason: format!("the receiver answered {status}, which is not retried"),
            disable: false,
        },
        300..=399 => Verdict::Retry {
            reason: format!("the receiver answered {status}; redirects are not followed"),
            after: None,
        },
        _ => Verdict::Retry {
            reason: format!("the receiver answered an unexpected status {status}"),
            after: None,
        },
    }
}

/// The verdict on an attempt that got no answer.
pub fn failure_verdict(failure: Failure) -> Verdict {
    match failure {
        Failure::Timeout => Verdict::Retry {
            reason: "the request timed out".into(),
            after: None,
        },
        Failure::Connect => Verdict::Retry {
            reason: "the connection failed".into(),
            after: None,
        },
        Failure::UnsafeTarget => Verdict::Final {
            reason: "incorrect_url_ip: the URL resolves only to refused addresses".into(),
            disable: false,
        },
        Failure::Template => Verdict::Final {
            reason: "the body template failed".into(),
            disable: false,
        },
        Failure::Unsendable => Verdict::Final {
            reason: "the request could not be built".into(),
            disable: false,
        },
    }
}

/// `Retry-After` as seconds or an HTTP date; None if it is neither, or a
/// date already past.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = at.timestamp_millis().checked_sub(now)?;
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// The delay before retry number `retry` (1 for the first retry), jittered
/// by up to ±20 %; None once `retries` are spent.
pub fn retry_delay(retry: u32, retries: u8, rng: &mut impl Rng) -> Option<Duration> {
    if retry == 0 || retry > u32::from(retries) {
        return None;
    }
    let index = usize::try_from(retry - 1).unwrap_or(usize::MAX);
    let base = SCHEDULE
        .get(index)
        .copied()
        .unwrap_or(SCHEDULE[SCHEDULE.len() - 1]);
    Some(base.mul_f64(rng.random_range(0.8..=1.2)))
}

/// When the next delivery to a webhook may start: at once once verified,
/// else an hour after the last one sent.
pub fn next_allowed(verified: bool, last_sent: Option<Millis>) -> Option<Millis> {
    match (verified, last_sent) {
        (false, Some(at)) => Some(at.saturating_add(UNVERIFIED_INTERVAL.as_millis() as Millis)),
        _ => None,
    }
}

/// Whether a response body carries the webhook's verification key: the
/// whole body as plain text (surrounding whitespace ignored), or a JSON
/// object's `verification_key`.
pub fn verification_matches(body: &[u8], key: &str) -> bool {
    if key.is_empty() {
        return false;
    }
    if std::str::from_utf8(body).is_ok_and(|t| t.trim() == key) {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("verification_key")?.as_str().map(|k| k == key))
        .unwrap_or(false)
}

/// Whether a webhook whose deliveries have failed since `failing_since`
/// (none succeeded after it) has failed for the whole `period`.
pub fn should_disable(failing_since: Option<Millis>, now: Millis, period: Duration) -> bool {
    failing_since.is_some_and(|since| now.saturating_sub(since) >= period.as_millis() as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const CAP: Duration = Duration::from_secs(3600);

    #[test]
    fn answers_map_to_verdicts() {
        assert_eq!(verdict(200, None, 0, CAP), Verdict::Delivered);
        assert_eq!(verdict(204, None, 0, CAP), Verdict::Delivered);
        for retried in [301, 302, 408, 409, 425, 429, 500, 502, 503] {
            assert!(
                matches!(verdict(retried, None, 0, CAP), Verdict::Retry { .. }),
                "{retried}"
            );
        }
        for final_ in [400, 401, 403, 404, 405, 413, 422] {
            assert!(
                matches!(
                    verdict(final_, None, 0, CAP),
                    Verdict::Final { disable: false, .. }
                ),
                "{final_}"
            );
        }
        assert!(matches!(
            verdict(410, None, 0, CAP),
            Verdict::Final { disable: true, .. }
        ));
        assert!(matches!(
            failure_verdict(Failure::UnsafeTarget),
            Verdict::Final { ref reason, .. } if reason.starts_with("incorrect_url_ip")
        ));
        assert!(matches!(
            failure_verdict(Failure::Timeout),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn retry_after_in_seconds_or_a_date_and_capped() {
        let now = chrono::DateTime::parse_from_rfc2822("Fri, 04 Dec 2026 10:00:00 GMT")
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 09:00:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        let Verdict::Retry { after, .. } = verdict(429, Some("999999"), now, CAP) else {
            panic!("429 is retried");
        };
        assert_eq!(after, Some(CAP));
    }

    #[test]
    fn the_schedule_with_jitter_and_the_retry_count() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (i, base) in SCHEDULE.iter().enumerate() {
            let d = retry_delay(i as u32 + 1, 8, &mut rng).unwrap();
            assert!(
                d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2),
                "retry {}: {d:?}",
                i + 1
            );
        }
        assert_eq!(
            retry_delay(9, 8, &mut rng),
            None,
            "eight retries, then final"
        );
        assert_eq!(retry_delay(1, 0, &mut rng), None, "no retries configured");
        let late = retry_delay(20, 20, &mut rng).unwrap();
        assert!(
            late >= Duration::from_secs(8 * 3600),
            "past the table: the last step"
        );
        let spread: std::collections::HashSet<Duration> = (0..20)
            .map(|_| retry_delay(2, 8, &mut rng).unwrap())
            .collect();
        assert!(spread.len() > 10, "jittered, not fixed");
    }

    #[test]
    fn unverified_webhooks_send_once_an_hour() {
        assert_eq!(next_allowed(false, None), None);
        assert_eq!(next_allowed(false, Some(1_000)), Some(1_000 + 3_600_000));
        assert_eq!(next_allowed(true, Some(1_000)), None);
    }

    #[test]
    fn the_verification_key_as_text_or_json() {
        assert!(verification_matches(b"k-123", "k-123"));
        assert!(verification_matches(b"  k-123\n", "k-123"));
        assert!(verification_matches(
            br#"{"verification_key":"k-123","ok":true}"#,
            "k-123"
        ));
        assert!(!verification_matches(
            br#"{"verification_key":"other"}"#,
            "k-123"
        ));
        assert!(!verification_matches(b"k-1234", "k-123"));
        assert!(!verification_matches(b"", ""));
        assert!(!verification_matches(&[0xff, 0xfe], "k"));
    }

    #[test]
    fn disabled_after_a_whole_failing_period() {
        let day = Duration::from_secs(86_400);
        assert!(!should_disable(None, 10 * 86_400_000, day));
        assert!(!should_disable(Some(0), 86_399_999, day));
        assert!(should_disable(Some(0), 86_400_000, day));
    }
}
