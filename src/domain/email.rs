//! Contact email addresses.

use std::fmt;

/// A syntactically valid, normalised email address: trimmed and lowercased,
/// at most 254 characters with a local part of at most 64.
///
/// RFC 5321 lets a server treat local parts case-sensitively, but no mailbox
/// provider does, and Mailchimp and Klaviyo both treat `Jane@x.com` and
/// `jane@x.com` as one subscriber; two contacts there would be a bug report.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than 254 characters")]
    TooLong,
    #[error("email has no `@`")]
    NoAt,
    #[error("the part of the email before `@` is longer than 64 characters")]
    LocalTooLong,
    #[error("`{0}` is not a valid email address")]
    Invalid(String),
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.chars().count() > 254 {
            return Err(EmailError::TooLong);
        }
        let Some((local, domain)) = trimmed.rsplit_once('@') else {
            return Err(EmailError::NoAt);
        };
        if local.chars().count() > 64 {
            return Err(EmailError::LocalTooLong);
        }
        let options = email_address::Options {
            // `user@localhost` is valid RFC 5322 but undeliverable from a
            // marketing tool; require a dot in the domain.
            minimum_sub_domains: 2,
            allow_domain_literal: false,
            allow_display_text: false,
        };
        let invalid = || EmailError::Invalid(trimmed.to_owned());
        if local.is_empty() || domain.is_empty() || trimmed.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        email_address::EmailAddress::parse_with_options(trimmed, options).map_err(|_| invalid())?;
        // The crate accepts single-label TLDs such as `a@b.c1`; also refuse
        // labels that are empty or start/end with a hyphen.
        if domain
            .split('.')
            .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
        {
            return Err(invalid());
        }
        Ok(Self(trimmed.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For values read back from the store, which only holds parsed emails.
    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_domain_and_trims() {
        let e = Email::parse("  Jane.Doe@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "jane.doe@example.com");
    }

    #[test]
    fn rejects_bad_addresses() {
        let long_local = format!("{}@example.com", "a".repeat(1000));
        for raw in [
            "",
            "   ",
            "a@",
            "@b.c",
            "a b@c.d",
            "plain",
            "a@b",
            "a@@b.c",
            "a@b..c",
            "a@-b.c",
            ".a@b.c",
            "a.@b.c",
            "a..b@c.d",
            "a@[127.0.0.1]",
            "Name <a@b.c>",
            &long_local,
        ] {
            assert!(Email::parse(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn accepts_common_addresses() {
        for raw in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            "x_y-z@exa-mple.io",
            "o'brien@ie.ie",
        ] {
            assert!(Email::parse(raw).is_ok(), "rejected {raw:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_is_idempotent(s in "\\PC{0,80}") {
            if let Ok(e) = Email::parse(&s) {
                prop_assert_eq!(Email::parse(e.as_str()).unwrap(), e);
            }
        }
    }
}
