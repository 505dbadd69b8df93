//! The memory that request bodies may take at once (`max_body_memory_bytes`).
//!
//! A body is held twice while its request runs: as the bytes received and as
//! the parsed JSON, which takes several times the text. Without a bound, 100
//! concurrent 1 MB inbound calls took the server to 510 MB. Each request
//! with a body is charged [`PARSE_FACTOR`] (bulk: [`BULK_FACTOR`]) × its length (its declared
//! `Content-Length`, or the route's limit when the length is not declared)
//! from one budget before it is read, and gives it back when its answer is
//! made; a request that does not find room waits (up to
//! [`BodyBudget::WAIT`], 10 s) and is then answered 503 with `Retry-After`.
//! Requests without a body, and bodies over the route's limit (413 at once),
//! are not charged.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::error::ApiError;

/// How much memory a body takes while it is handled, per byte of text: the
/// bytes themselves and a `serde_json::Value` of them, which for arrays of
/// small objects takes about 15× the text (a `BTreeMap` node and a `String`
/// per key), measured with `tools/body_memory.py`.
pub const PARSE_FACTOR: usize = 16;
/// The bulk events route parses one event at a time into a raw slice, so
/// its bodies cost little more than their bytes.
pub const BULK_FACTOR: usize = 3;

pub struct BodyBudget {
    /// In KiB (a semaphore counts in `u32`).
    permits: Arc<Semaphore>,
    total_kib: u32,
    /// The server-wide body limit, and the bulk route's own.
    max_body_bytes: usize,
    /// Longest a request waits for room before 503.
    wait: Duration,
}

impl BodyBudget {
    /// How long a request waits for room by default.
    pub const WAIT: Duration = Duration::from_secs(10);

    pub fn new(total_bytes: usize, max_body_bytes: usize, wait: Duration) -> Self {
        let total_kib = u32::try_from(total_bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            max_body_bytes,
            wait,
        }
    }

    /// What a request is charged, in KiB, or `None` for none.
    fn charge(&self, req: &Request) -> Option<u32> {
        let (limit, factor) = if req.uri().path() == "/v1/events/bulk" {
            (super::events::MAX_BULK_BYTES, BULK_FACTOR)
        } else {
            (self.max_body_bytes, PARSE_FACTOR)
        };
        let headers = req.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = match declared {
            Some(0) => return None,
            Some(n) if n > limit => return None, // refused with 413 when read
            Some(n) => n,
            None if headers.contains_key(header::TRANSFER_ENCODING) => limit,
            None => return None,
        };
        let kib = (bytes.saturating_mul(factor) / 1024).max(1);
        Some(u32::try_from(kib).unwrap_or(u32::MAX).min(self.total_kib))
    }
}

/// Charges a request's body to the budget for as long as it is handled.
pub async fn charge_body(
    State(budget): State<Arc<BodyBudget>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(kib) = budget.charge(&req) else {
        return next.run(req).await;
    };
    let room =
        tokio::time::timeout(budget.wait, budget.permits.clone().acquire_many_owned(kib)).await;
    match room {
        Ok(Ok(permit)) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        _ => {
            metrics::counter!("hookflow_body_budget_refusals_total").increment(1);
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the server is handling as much request data as `max_body_memory_bytes` allows; retry shortly",
            );
            e.retry_after = Some(1);
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().method("POST").uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn bodies_are_charged_by_length_or_by_their_routes_limit() {
        let b = BodyBudget::new(64 << 20, 1 << 20, BodyBudget::WAIT);
        assert_eq!(b.charge(&req("/v1/contacts", &[])), None, "no body");
        assert_eq!(
            b.charge(&req("/v1/contacts", &[("content-length", "0")])),
            None
        );
        assert_eq!(
            b.charge(&req("/v1/contacts", &[("content-length", "1024")])),
            Some(16)
        );
        assert_eq!(
            b.charge(&req("/v1/contacts", &[("content-length", "2000000")])),
            None,
            "over the limit: 413, not charged"
        );
        assert_eq!(
            b.charge(&req("/v1/contacts", &[("transfer-encoding", "chunked")])),
            Some(16 * 1024),
            "unknown length: the route's limit"
        );
        assert_eq!(
            b.charge(&req("/v1/events/bulk", &[("transfer-encoding", "chunked")])),
            Some(48 * 1024),
            "the bulk route's own limit"
        );
        let small = BodyBudget::new(1 << 20, 1 << 20, BodyBudget::WAIT);
        assert_eq!(
            small.charge(&req("/v1/contacts", &[("content-length", "1000000")])),
            Some(1024),
            "never more than the whole budget"
        );
    }
}
