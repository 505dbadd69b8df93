//! Contact and membership statuses.

use serde::{Deserialize, Serialize};

/// Whether a contact may be emailed. `bounced` and `complained` are set by
/// delivery feedback; all four can be set through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContactStatus {
    Subscribed,
    Unsubscribed,
    Bounced,
    Complained,
}

impl ContactStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribed => "subscribed",
            Self::Unsubscribed => "unsubscribed",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "subscribed" => Self::Subscribed,
            "unsubscribed" => Self::Unsubscribed,
            "bounced" => Self::Bounced,
            "complained" => Self::Complained,
            _ => return None,
        })
    }
}

/// A membership's state in one list. Removing a contact from a list deletes
/// the membership; `unsubscribed` keeps the row for a contact who left the
/// list but whose history matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MembershipStatus {
    Subscribed,
    Unsubscribed,
}

impl MembershipStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribed => "subscribed",
            Self::Unsubscribed => "unsubscribed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "subscribed" => Some(Self::Subscribed),
            "unsubscribed" => Some(Self::Unsubscribed),
            _ => None,
        }
    }
}
