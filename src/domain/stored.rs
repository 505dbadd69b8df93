//! Enums kept as text in database columns (and shown on the wire in the
//! same form): one string per variant, written once by [`stored_enum!`],
//! and one way to read a stored value back, [`Stored::decode`], which fails
//! loudly on text it does not know instead of guessing a default.

use std::fmt;

/// A closed set of values stored as text.
pub trait Stored: Sized + Copy + 'static {
    /// What the value is, for messages ("run status").
    const WHAT: &'static str;
    /// Every variant, in declaration order.
    const ALL: &'static [Self];

    /// The one string form, stored and sent.
    fn as_text(self) -> &'static str;

    /// Reads a value back from the database. Unknown text (a newer version's
    /// value, a hand edit) is an error naming it: a run read as `active`
    /// because its status was not understood would be executed again.
    fn decode(raw: &str) -> Result<Self, UnknownValue> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_text() == raw)
            .ok_or_else(|| UnknownValue {
                what: Self::WHAT,
                raw: raw.chars().take(64).collect(),
            })
    }
}

/// A stored value that no variant has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownValue {
    pub what: &'static str,
    pub raw: String,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the database holds {} `{}`, which this version of hookflow does not know \
             (written by a newer version, or edited by hand)",
            self.what, self.raw
        )
    }
}

impl std::error::Error for UnknownValue {}

/// Declares the string form of each variant of an enum once, and derives
/// from it `as_str`, `parse` (input from people: `None` when unknown) and
/// [`Stored`] (`decode`, for values read back from a database).
#[macro_export]
macro_rules! stored_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl $crate::domain::stored::Stored for $ty {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &[$(Self::$variant),+];

            fn as_text(self) -> &'static str {
                self.as_str()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ContactStatus, FieldType, MembershipStatus, Scope};
    use crate::flows::records::{EndReason, StepOutcome};
    use crate::store::entry::EntryRefusal;
    use crate::store::{FlowStatus, RunStatus};

    fn texts<T: Stored>() -> Vec<&'static str> {
        T::ALL.iter().map(|v| v.as_text()).collect()
    }

    /// The wire and stored forms are a compatibility promise: this pins
    /// them. Changing one needs a migration and a note, not just an edit.
    #[test]
    fn the_stored_forms_are_pinned() {
        assert_eq!(
            texts::<RunStatus>(),
            [
                "active",
                "waiting",
                "completed",
                "exited",
                "failed",
                "cancelled"
            ]
        );
        assert_eq!(texts::<FlowStatus>(), ["draft", "active", "paused"]);
        assert_eq!(
            texts::<ContactStatus>(),
            ["subscribed", "unsubscribed", "bounced", "complained"]
        );
        assert_eq!(texts::<MembershipStatus>(), ["subscribed", "unsubscribed"]);
        assert_eq!(texts::<Scope>(), ["admin", "ingest"]);
        assert_eq!(
            texts::<FieldType>(),
            ["text", "number", "date", "boolean", "enum"]
        );
        assert_eq!(
            texts::<StepOutcome>(),
            [
                "next",
                "yes",
                "no",
                "waiting",
                "resumed",
                "passed",
                "event",
                "timeout",
                "goal",
                "exit_step",
                "exit_condition",
                "failed",
                "completed",
                "cancelled"
            ]
        );
        assert_eq!(
            texts::<EndReason>(),
            [
                "completed",
                "goal",
                "exit_step",
                "exit_condition",
                "failed",
                "cancelled"
            ]
        );
        assert_eq!(texts::<EntryRefusal>(), ["already_entered", "run_active"]);
        // A run's end reason is also its last step's outcome.
        for r in EndReason::ALL {
            assert_eq!(StepOutcome::from(*r).as_str(), r.as_str());
        }
    }

    fn round_trips<T>()
    where
        T: Stored + PartialEq + fmt::Debug + serde::Serialize,
    {
        for v in T::ALL {
            assert_eq!(T::decode(v.as_text()), Ok(*v));
            // The JSON form (serde) is the stored form.
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_text());
        }
        let err = T::decode("Active ").unwrap_err();
        assert_eq!(err.what, T::WHAT);
        assert!(err.to_string().contains("`Active `"), "{err}");
    }

    #[test]
    fn every_form_decodes_to_its_variant_and_nothing_else_does() {
        round_trips::<RunStatus>();
        round_trips::<FlowStatus>();
        round_trips::<ContactStatus>();
        round_trips::<MembershipStatus>();
        round_trips::<Scope>();
        round_trips::<FieldType>();
        round_trips::<StepOutcome>();
        round_trips::<EndReason>();
    }
}
