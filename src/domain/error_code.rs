//! The stable codes of API errors (`{"error": {"code": …}}`): one
//! variant per code, one string form each, so a typo is a compile error
//! and the OpenAPI document lists every code a client can meet.

use serde::Serialize;

/// The enum, the list of every code and the wire forms, from one table:
/// a code cannot be left out of one of them.
macro_rules! error_codes {
    ($($variant:ident => $text:literal,)*) => {
        /// A machine-readable error code (snake_case on the wire).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &[ErrorCode] = &[$(Self::$variant,)*];

            /// The wire form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }
    };
}

error_codes! {
    MissingSignature => "missing_signature",
    InvalidSignature => "invalid_signature",
    TimestampOutOfTolerance => "timestamp_out_of_tolerance",
    AttemptInFlight => "attempt_in_flight",
    BatchTooLarge => "batch_too_large",
    BodyTimeout => "body_timeout",
    ConflictingFieldDefinitions => "conflicting_field_definitions",
    DatabaseBusy => "database_busy",
    DuplicateField => "duplicate_field",
    DuplicateKey => "duplicate_key",
    EmailTaken => "email_taken",
    EmptyBatch => "empty_batch",
    FieldExists => "field_exists",
    FilterTooWide => "filter_too_wide",
    FlowMisconfigured => "flow_misconfigured",
    FlowNameTaken => "flow_name_taken",
    FlowNotActive => "flow_not_active",
    Forbidden => "forbidden",
    IdempotencyKeyReused => "idempotency_key_reused",
    InternalError => "internal_error",
    InvalidBody => "invalid_body",
    InvalidCursor => "invalid_cursor",
    InvalidEmail => "invalid_email",
    InvalidEventName => "invalid_event_name",
    InvalidFieldDefinition => "invalid_field_definition",
    InvalidFieldValue => "invalid_field_value",
    InvalidFilter => "invalid_filter",
    InvalidFlow => "invalid_flow",
    InvalidId => "invalid_id",
    InvalidIdempotencyKey => "invalid_idempotency_key",
    InvalidLimit => "invalid_limit",
    InvalidName => "invalid_name",
    InvalidPath => "invalid_path",
    InvalidPhone => "invalid_phone",
    InvalidProperties => "invalid_properties",
    InvalidQuery => "invalid_query",
    InvalidSubscription => "invalid_subscription",
    InvalidTestData => "invalid_test_data",
    InvalidTime => "invalid_time",
    InvalidValue => "invalid_value",
    InvalidWebhook => "invalid_webhook",
    IpNotAllowed => "ip_not_allowed",
    ListNameTaken => "list_name_taken",
    MalformedJson => "malformed_json",
    MethodNotAllowed => "method_not_allowed",
    MetricsDisabled => "metrics_disabled",
    MissingField => "missing_field",
    NotFound => "not_found",
    NotInbound => "not_inbound",
    NulCharacter => "nul_character",
    PayloadTooLarge => "payload_too_large",
    RateLimited => "rate_limited",
    RouteNotFound => "route_not_found",
    RunFinished => "run_finished",
    RunStarted => "run_started",
    ServerBusy => "server_busy",
    StoreUnavailable => "store_unavailable",
    Unauthorized => "unauthorized",
    UnknownField => "unknown_field",
    UnknownList => "unknown_list",
    UnreadableBody => "unreadable_body",
    UnsupportedMediaType => "unsupported_media_type",
    WorkspaceNameTaken => "workspace_name_taken",
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
