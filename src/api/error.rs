//! The one error shape of the API:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.
//!
//! `code` is stable snake_case for programs, `message` a sentence for people,
//! `field` the JSON path at fault when there is one. A 500 says nothing about
//! its cause; the cause is logged once, here.

use crate::domain::ErrorCode;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429 and retryable 503s).
    pub retry_after: Option<u64>,
    /// Every problem, when there are several (a flow document).
    pub details: Option<Vec<serde_json::Value>>,
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_email`.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// JSON path of the value at fault, when one value is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem found, when there are several (e.g. a flow document):
    /// objects with `step`, `setting` and `message`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub details: Option<Vec<serde_json::Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: (status == StatusCode::TOO_MANY_REQUESTS).then_some(1),
            details: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 422: a value that parsed as JSON but breaks a rule.
    pub fn invalid(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
    }

    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    /// 429 `rate_limited`, with `Retry-After` for `wait` in whole seconds
    /// (rounded up, at least 1).
    pub fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            message,
        );
        e.retry_after = Some(super::limits::retry_after_secs(wait));
        e
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "the server failed to handle this request; it has been logged",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            StoreError::Conflict { code, message } => {
                Self::new(StatusCode::CONFLICT, code, message)
            }
            StoreError::Invalid {
                code,
                field,
                message,
            } => Self::invalid(code, field, message),
            StoreError::Busy(cause) => {
                tracing::warn!(%cause, "transaction aborted by the database; the client may retry");
                let mut e = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::DatabaseBusy,
                    "the request collided with a concurrent one and was not applied; retry it",
                );
                e.retry_after = Some(1);
                e
            }
            StoreError::Internal(cause) | StoreError::NoDatabase(cause) => {
                tracing::error!(%cause, "store failure");
                Self::internal()
            }
        }
    }
}

impl ApiError {
    /// The error as it appears in a body, for answers that carry one error
    /// per item (bulk events).
    pub fn detail(self) -> ErrorDetail {
        ErrorDetail {
            code: self.code,
            message: self.message,
            field: self.field,
            details: self.details,
        }
    }
}

impl From<crate::domain::IdError> for ApiError {
    fn from(e: crate::domain::IdError) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.retry_after;
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
                details: self.details,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
