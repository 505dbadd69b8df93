//! Pure domain types and rules. Nothing here does I/O.
//!
//! Every type is parsed at the boundary ("parse, don't validate"): a value of
//! `Email`, `Phone`, `FieldName` or a typed id cannot hold an invalid value, so
//! code that receives one never re-checks it.

pub mod condition;
pub mod contact;
pub mod email;
pub mod error_code;
pub mod fields;
pub mod flow;
pub mod ids;
pub mod jsonpath;
pub mod keys;
pub mod page;
pub mod phone;
pub mod signature;
pub mod stored;

pub use contact::{ContactStatus, MembershipStatus};
pub use email::Email;
pub use error_code::ErrorCode;
pub use fields::{FieldDef, FieldName, FieldType};
pub use ids::{
    ApiKeyId, AttemptId, ContactId, DeliveryId, EventId, FlowId, IdError, JobId, ListId, RunId,
    SubscriptionId, WebhookId, WorkspaceId,
};
pub use keys::{ApiKeySecret, Scope};
pub use page::{Cursor, Page, PageRequest};
pub use phone::Phone;
pub use stored::{Stored, UnknownValue};

/// Milliseconds since the Unix epoch: the one time representation both stores
/// keep, so ordering and comparisons are identical on SQLite and PostgreSQL.
pub type Millis = i64;

/// Formats stored milliseconds as an RFC 3339 UTC timestamp for the API.
pub fn millis_to_rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
