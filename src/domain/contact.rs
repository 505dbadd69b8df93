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

crate::stored_enum!(ContactStatus, "contact status", {
    Subscribed => "subscribed",
    Unsubscribed => "unsubscribed",
    Bounced => "bounced",
    Complained => "complained",
});

/// A membership's state in one list. Removing a contact from a list deletes
/// the membership; `unsubscribed` keeps the row for a contact who left the
/// list but whose history matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MembershipStatus {
    Subscribed,
    Unsubscribed,
}

crate::stored_enum!(MembershipStatus, "membership status", {
    Subscribed => "subscribed",
    Unsubscribed => "unsubscribed",
});
