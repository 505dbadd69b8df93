//! Typed, prefixed identifiers (`ws_…`, `key_…`, `ls_…`, `ct_…`).
//!
//! The suffix is a lowercase ULID: unique without coordination between
//! processes and ordered by creation time, which is what cursor pagination
//! sorts on. The prefix makes an id self-describing, so passing a contact id
//! where a list id belongs is caught at the boundary with a clear error.

use std::fmt;

/// Why a string is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{got}` is not a {kind} id (expected `{prefix}_` followed by 26 characters)")]
    Malformed {
        kind: &'static str,
        prefix: &'static str,
        got: String,
    },
    #[error("`{got}` is a {got_kind} id, but a {kind} id (`{prefix}_…`) is expected here")]
    WrongKind {
        kind: &'static str,
        prefix: &'static str,
        got_kind: &'static str,
        got: String,
    },
}

const KINDS: &[(&str, &str)] = &[
    ("ws", "workspace"),
    ("key", "API key"),
    ("ls", "list"),
    ("ct", "contact"),
    ("fl", "flow"),
    ("run", "run"),
    ("wh", "webhook"),
    ("dlv", "delivery"),
    ("job", "job"),
];

fn parse_id(raw: &str, prefix: &'static str, kind: &'static str) -> Result<String, IdError> {
    let malformed = || IdError::Malformed {
        kind,
        prefix,
        got: truncate(raw),
    };
    let Some((p, suffix)) = raw.split_once('_') else {
        return Err(malformed());
    };
    if p != prefix {
        if let Some((_, got_kind)) = KINDS.iter().find(|(k, _)| *k == p) {
            return Err(IdError::WrongKind {
                kind,
                prefix,
                got_kind,
                got: truncate(raw),
            });
        }
        return Err(malformed());
    }
    if suffix.len() != 26 || ulid::Ulid::from_string(&suffix.to_ascii_uppercase()).is_err() {
        return Err(malformed());
    }
    Ok(format!("{prefix}_{}", suffix.to_ascii_lowercase()))
}

/// A ULID greater than every one this process made before, even within one
/// millisecond (plain `Ulid::new()` is random inside a millisecond, so a row
/// created later could sort before a cursor already handed out). Across
/// processes order follows the clocks, which is as good as time ordering gets.
fn next_ulid() -> ulid::Ulid {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut guard = match GENERATOR.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    guard.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

/// Error messages quote the offending input; a megabyte of garbage must not
/// be echoed back whole.
fn truncate(raw: &str) -> String {
    if raw.chars().count() > 64 {
        let head: String = raw.chars().take(64).collect();
        format!("{head}…")
    } else {
        raw.to_owned()
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub const KIND: &'static str = $kind;

            /// A fresh id, ordered after every id made earlier by this clock.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, next_ulid().to_string().to_ascii_lowercase()))
            }

            pub fn parse(raw: &str) -> Result<Self, IdError> {
                parse_id(raw, $prefix, $kind).map(Self)
            }

            /// For values read back from the store, which only ever holds ids
            /// this type produced.
            pub fn from_trusted(raw: String) -> Self {
                Self(raw)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

typed_id!(
    /// A tenant: every other row belongs to exactly one.
    WorkspaceId, "ws", "workspace"
);
typed_id!(
    /// An API key's public id (never the secret).
    ApiKeyId, "key", "API key"
);
typed_id!(ListId, "ls", "list");
typed_id!(ContactId, "ct", "contact");
typed_id!(FlowId, "fl", "flow");
typed_id!(RunId, "run", "run");
typed_id!(EventId, "evt", "event");
typed_id!(
    /// A job of the leased queue (`store::queue`).
    JobId, "job", "job"
);
typed_id!(
    /// A reusable outbound webhook (`/v1/webhooks`).
    WebhookId, "wh", "webhook"
);
typed_id!(
    /// One outbound message: sent as `webhook-id` on every attempt.
    DeliveryId, "msg", "delivery"
);
typed_id!(
    /// One HTTP attempt of a delivery.
    AttemptId, "atm", "attempt"
);
typed_id!(
    /// An event subscription (`/v1/subscriptions`): stored and delivered as
    /// a webhook with event types.
    SubscriptionId, "sub", "subscription"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_round_trip_and_sort_by_creation() {
        let a = ContactId::generate();
        let b = ContactId::generate();
        assert_eq!(ContactId::parse(a.as_str()).unwrap(), a);
        assert!(a.as_str().starts_with("ct_"));
        assert!(a <= b);
    }

    #[test]
    fn ids_made_in_a_burst_are_strictly_increasing() {
        let ids: Vec<_> = (0..1000).map(|_| ContactId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn wrong_kind_is_named() {
        let ct = ContactId::generate();
        let err = ListId::parse(ct.as_str()).unwrap_err();
        assert!(
            matches!(
                err,
                IdError::WrongKind {
                    got_kind: "contact",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for raw in [
            "",
            "ls_",
            "ls_123",
            "ls",
            "ls_01hzzzzzzzzzzzzzzzzzzzzzz!",
            "xx_01hzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert!(ListId::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn parse_normalises_case() {
        let id = ListId::generate();
        let upper = format!("ls_{}", &id.as_str()[3..].to_ascii_uppercase());
        assert_eq!(ListId::parse(&upper).unwrap(), id);
    }
}
