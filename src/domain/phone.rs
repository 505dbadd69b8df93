//! Contact phone numbers in E.164.

use std::fmt;

/// A phone number in E.164 form: `+`, a country code that does not start
/// with 0, and at most 15 digits in all. Spaces, dots, dashes and
/// parentheses people type are removed before checking.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Phone(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not an E.164 phone number (expected `+` then 8 to 15 digits, e.g. +380631234567)"
)]
pub struct PhoneError(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, PhoneError> {
        let err = || PhoneError(raw.chars().take(40).collect());
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let digits = compact.strip_prefix('+').ok_or_else(err)?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !ok {
            return Err(err());
        }
        Ok(Self(compact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_compacts() {
        assert_eq!(
            Phone::parse("+380 63 123-45-67").unwrap().as_str(),
            "+380631234567"
        );
        assert_eq!(
            Phone::parse("+1 (415) 555-2671").unwrap().as_str(),
            "+14155552671"
        );
    }

    #[test]
    fn rejects() {
        for raw in [
            "",
            "380631234567",
            "+0123456789",
            "+12",
            "+1234567890123456",
            "+38063abc4567",
            "++380631234567",
        ] {
            assert!(Phone::parse(raw).is_err(), "accepted {raw:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_output_is_canonical(s in "\\PC{0,40}") {
            if let Ok(p) = Phone::parse(&s) {
                prop_assert_eq!(Phone::parse(p.as_str()).unwrap(), p.clone());
                prop_assert!(p.as_str().starts_with('+'));
            }
        }
    }
}
