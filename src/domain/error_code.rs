//! The stable codes of API errors (`{"error": {"code": …}}`): one
//! variant per code, one string form each, so a typo is a compile error
//! and the OpenAPI document lists every code a client can meet.

use serde::Serialize;

/// A machine-readable error code (snake_case on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MissingSignature,
    InvalidSignature,
    TimestampOutOfTolerance,
    AttemptInFlight,
    BatchTooLarge,
    BodyTimeout,
    ConflictingFieldDefinitions,
    DatabaseBusy,
    DuplicateField,
    DuplicateKey,
    EmailTaken,
    EmptyBatch,
    FieldExists,
    FilterTooWide,
    FlowMisconfigured,
    FlowNameTaken,
    FlowNotActive,
    Forbidden,
    IdempotencyKeyReused,
    InternalError,
    InvalidBody,
    InvalidCursor,
    InvalidEmail,
    InvalidEventName,
    InvalidFieldDefinition,
    InvalidFieldValue,
    InvalidFilter,
    InvalidFlow,
    InvalidId,
    InvalidIdempotencyKey,
    InvalidLimit,
    InvalidName,
    InvalidPath,
    InvalidPhone,
    InvalidProperties,
    InvalidQuery,
    InvalidSubscription,
    InvalidTestData,
    InvalidTime,
    InvalidValue,
    InvalidWebhook,
    IpNotAllowed,
    ListNameTaken,
    MalformedJson,
    MethodNotAllowed,
    MetricsDisabled,
    MissingField,
    NotFound,
    NotInbound,
    NulCharacter,
    PayloadTooLarge,
    RateLimited,
    RouteNotFound,
    RunFinished,
    RunStarted,
    ServerBusy,
    StoreUnavailable,
    Unauthorized,
    UnknownField,
    UnknownList,
    UnreadableBody,
    UnsupportedMediaType,
    WorkspaceNameTaken,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: &[ErrorCode] = &[
        Self::MissingSignature,
        Self::InvalidSignature,
        Self::TimestampOutOfTolerance,
        Self::AttemptInFlight,
        Self::BatchTooLarge,
        Self::BodyTimeout,
        Self::ConflictingFieldDefinitions,
        Self::DatabaseBusy,
        Self::DuplicateField,
        Self::DuplicateKey,
        Self::EmailTaken,
        Self::EmptyBatch,
        Self::FieldExists,
        Self::FilterTooWide,
        Self::FlowMisconfigured,
        Self::FlowNameTaken,
        Self::FlowNotActive,
        Self::Forbidden,
        Self::IdempotencyKeyReused,
        Self::InternalError,
        Self::InvalidBody,
        Self::InvalidCursor,
        Self::InvalidEmail,
        Self::InvalidEventName,
        Self::InvalidFieldDefinition,
        Self::InvalidFieldValue,
        Self::InvalidFilter,
        Self::InvalidFlow,
        Self::InvalidId,
        Self::InvalidIdempotencyKey,
        Self::InvalidLimit,
        Self::InvalidName,
        Self::InvalidPath,
        Self::InvalidPhone,
        Self::InvalidProperties,
        Self::InvalidQuery,
        Self::InvalidSubscription,
        Self::InvalidTestData,
        Self::InvalidTime,
        Self::InvalidValue,
        Self::InvalidWebhook,
        Self::IpNotAllowed,
        Self::ListNameTaken,
        Self::MalformedJson,
        Self::MethodNotAllowed,
        Self::MetricsDisabled,
        Self::MissingField,
        Self::NotFound,
        Self::NotInbound,
        Self::NulCharacter,
        Self::PayloadTooLarge,
        Self::RateLimited,
        Self::RouteNotFound,
        Self::RunFinished,
        Self::RunStarted,
        Self::ServerBusy,
        Self::StoreUnavailable,
        Self::Unauthorized,
        Self::UnknownField,
        Self::UnknownList,
        Self::UnreadableBody,
        Self::UnsupportedMediaType,
        Self::WorkspaceNameTaken,
    ];

    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::InvalidSignature => "invalid_signature",
            Self::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
            Self::AttemptInFlight => "attempt_in_flight",
            Self::BatchTooLarge => "batch_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::ConflictingFieldDefinitions => "conflicting_field_definitions",
            Self::DatabaseBusy => "database_busy",
            Self::DuplicateField => "duplicate_field",
            Self::DuplicateKey => "duplicate_key",
            Self::EmailTaken => "email_taken",
            Self::EmptyBatch => "empty_batch",
            Self::FieldExists => "field_exists",
            Self::FilterTooWide => "filter_too_wide",
            Self::FlowMisconfigured => "flow_misconfigured",
            Self::FlowNameTaken => "flow_name_taken",
            Self::FlowNotActive => "flow_not_active",
            Self::Forbidden => "forbidden",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::InternalError => "internal_error",
            Self::InvalidBody => "invalid_body",
            Self::InvalidCursor => "invalid_cursor",
            Self::InvalidEmail => "invalid_email",
            Self::InvalidEventName => "invalid_event_name",
            Self::InvalidFieldDefinition => "invalid_field_definition",
            Self::InvalidFieldValue => "invalid_field_value",
            Self::InvalidFilter => "invalid_filter",
            Self::InvalidFlow => "invalid_flow",
            Self::InvalidId => "invalid_id",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::InvalidLimit => "invalid_limit",
            Self::InvalidName => "invalid_name",
            Self::InvalidPath => "invalid_path",
            Self::InvalidPhone => "invalid_phone",
            Self::InvalidProperties => "invalid_properties",
            Self::InvalidQuery => "invalid_query",
            Self::InvalidSubscription => "invalid_subscription",
            Self::InvalidTestData => "invalid_test_data",
            Self::InvalidTime => "invalid_time",
            Self::InvalidValue => "invalid_value",
            Self::InvalidWebhook => "invalid_webhook",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::ListNameTaken => "list_name_taken",
            Self::MalformedJson => "malformed_json",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::MetricsDisabled => "metrics_disabled",
            Self::MissingField => "missing_field",
            Self::NotFound => "not_found",
            Self::NotInbound => "not_inbound",
            Self::NulCharacter => "nul_character",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::RouteNotFound => "route_not_found",
            Self::RunFinished => "run_finished",
            Self::RunStarted => "run_started",
            Self::ServerBusy => "server_busy",
            Self::StoreUnavailable => "store_unavailable",
            Self::Unauthorized => "unauthorized",
            Self::UnknownField => "unknown_field",
            Self::UnknownList => "unknown_list",
            Self::UnreadableBody => "unreadable_body",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::WorkspaceNameTaken => "workspace_name_taken",
        }
    }
}

/// Compares with the wire form (tests read codes back as text).
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_one_stable_string_form() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str(), "{c:?}");
            assert!(seen.insert(c.as_str()), "{c:?} twice");
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
        }
        // Pinned: clients match on these strings.
        assert_eq!(ErrorCode::ALL.len(), 63);
        assert_eq!(ErrorCode::InvalidFlow.as_str(), "invalid_flow");
        assert_eq!(
            ErrorCode::IdempotencyKeyReused.as_str(),
            "idempotency_key_reused"
        );
        assert_eq!(ErrorCode::NotFound.as_str(), "not_found");
    }
}
