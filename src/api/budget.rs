//! The memory that request bodies may take at once (`max_body_memory_bytes`).
//!
//! A body is held twice while its request runs: as the bytes received and as
//! the parsed JSON, which takes several times the text. Without a bound, 100
//! concurrent 1 MB inbound calls took the server to 860 MB. A body's bytes
//! are charged to one budget frame by frame as they arrive, then topped up
//! to [`PARSE_FACTOR`] (bulk: [`BULK_FACTOR`]) × its length before it is
//! parsed, and the charge is given back when the answer is made; a body
//! that does not find room waits (up to [`BodyBudget::WAIT`], 10 s) and is
//! then answered 503 with `Retry-After`. Charging what has arrived, not
//! the declared length, means a client trickling a body in holds only the
//! bytes it has sent, never budget that others need.

use crate::domain::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use super::error::ApiError;

/// How much memory a body takes while it is handled, per byte of text: the
/// bytes themselves and a `serde_json::Value` of them, which for arrays of
/// small objects takes about 15× the text (a `BTreeMap` node and a `String`
/// per key), measured with `tools/body_memory.py`.
pub const PARSE_FACTOR: usize = 16;
/// Bodies declaring at most this length are charged once, before parsing,
/// not frame by frame: their raw bytes in flight are bounded by the
/// connection cap (1,024 connections × 16 KiB = 16 MiB), and skipping the
/// per-frame charge keeps small requests (almost all of them) cheap.
pub const SMALL_BODY: usize = 16 * 1024;
/// The bulk events route parses one event at a time into a raw slice, so
/// its bodies cost little more than their bytes.
pub const BULK_FACTOR: usize = 3;

pub struct BodyBudget {
    /// In KiB (a semaphore counts in `u32`).
    permits: Arc<Semaphore>,
    total_kib: u32,
    /// Longest a request waits for room before 503.
    wait: Duration,
}

impl BodyBudget {
    /// How long a request waits for room by default.
    pub const WAIT: Duration = Duration::from_secs(10);

    pub fn new(total_bytes: usize, wait: Duration) -> Self {
        let total_kib = u32::try_from(total_bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait,
        }
    }
}

/// A request's claim on the budget: its body's bytes are charged frame by
/// frame as they arrive (so a client trickling a body in holds only what it
/// has sent), topped up to the parse factor before parsing, and all of it is
/// given back once the answer is made.
#[derive(Clone)]
pub struct Charge {
    budget: Arc<BodyBudget>,
    held: Arc<std::sync::Mutex<Held>>,
}

#[derive(Default)]
struct Held {
    /// Body bytes seen so far.
    seen: usize,
    /// KiB charged so far (never more than the whole budget).
    kib: u32,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Charge {
    /// Charges the next `len` bytes of the body as they arrive (1×).
    pub async fn arrived(&self, len: usize) -> Result<(), ApiError> {
        let seen = self.held.lock().map_or(0, |h| h.seen) + len;
        let want = u32::try_from(seen.div_ceil(1024)).unwrap_or(u32::MAX);
        self.charge_up_to(want, seen).await
    }

    /// Tops the charge up to what the parsed body will take: `factor` ×
    /// its length (the route's, from its `BodyLimit`).
    pub async fn parsing(&self, len: usize, factor: usize) -> Result<(), ApiError> {
        let want = u32::try_from(len.saturating_mul(factor).div_ceil(1024)).unwrap_or(u32::MAX);
        self.charge_up_to(want, len).await
    }

    /// Holds at least `want` KiB (at most the whole budget): waits for the
    /// difference, up to the budget's wait, else 503 `server_busy`.
    async fn charge_up_to(&self, want: u32, seen: usize) -> Result<(), ApiError> {
        let want = want.min(self.budget.total_kib);
        let have = self.held.lock().map_or(0, |h| h.kib);
        if want > have {
            // Room now is the common case: no timer is set for it (a
            // `timeout` registers one with the runtime on every call).
            let permits = self.budget.permits.clone();
            let room = match permits.clone().try_acquire_many_owned(want - have) {
                Ok(permit) => Ok(Ok(permit)),
                Err(_) => {
                    tokio::time::timeout(self.budget.wait, permits.acquire_many_owned(want - have))
                        .await
                }
            };
            let Ok(Ok(permit)) = room else {
                metrics::counter!("hookflow_body_budget_refusals_total").increment(1);
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ServerBusy,
                    "the server is handling as much request data as `max_body_memory_bytes` allows; retry shortly",
                );
                e.retry_after = Some(1);
                return Err(e);
            };
            if let Ok(mut h) = self.held.lock() {
                h.kib += want - have;
                match &mut h.permit {
                    Some(p) => p.merge(permit),
                    None => h.permit = Some(permit),
                }
            }
        }
        if let Ok(mut h) = self.held.lock() {
            h.seen = seen;
        }
        Ok(())
    }
}

/// Gives each request with a body a [`Charge`]; whatever `read_body`
/// charged to it is given back once the answer is made. Requests without a
/// body (most reads) pass untouched.
pub async fn charge_body(
    State(budget): State<Arc<BodyBudget>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let charge = Charge {
        budget,
        held: Arc::default(),
    };
    req.extensions_mut().insert(charge.clone());
    let resp = next.run(req).await;
    drop(charge);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(budget: &Arc<BodyBudget>) -> Charge {
        Charge {
            budget: budget.clone(),
            held: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_body_waits_for_room_then_gets_503_and_room_comes_back() {
        // Room for one 40 KB body (16 × 40 KB = 640 KiB of 1 MiB).
        let budget = Arc::new(BodyBudget::new(1 << 20, Duration::from_millis(50)));
        let first = charge(&budget);
        first.arrived(40_000).await.unwrap();
        first.parsing(40_000, PARSE_FACTOR).await.unwrap();
        let second = charge(&budget);
        second.arrived(40_000).await.unwrap(); // its bytes still fit…
        let refused = second.parsing(40_000, PARSE_FACTOR).await.unwrap_err(); // …its parse does not
        assert_eq!(
            (refused.status.as_u16(), refused.code.as_str()),
            (503, "server_busy")
        );
        assert_eq!(refused.retry_after, Some(1));
        drop(first); // the first request's answer is made
        second.parsing(40_000, PARSE_FACTOR).await.unwrap();
        // A body larger than the whole budget is charged the whole budget.
        drop(second);
        let big = charge(&budget);
        big.arrived(10 << 20).await.unwrap();
        big.parsing(10 << 20, PARSE_FACTOR).await.unwrap();
        assert_eq!(budget.permits.available_permits(), 0);
    }

    #[tokio::test]
    async fn bytes_arriving_are_charged_once_each_in_whole_kib() {
        let budget = Arc::new(BodyBudget::new(1 << 20, Duration::from_millis(50)));
        let c = charge(&budget);
        for _ in 0..10 {
            c.arrived(100).await.unwrap(); // 1,000 bytes: 1 KiB
        }
        assert_eq!(budget.permits.available_permits(), 1023);
        c.arrived(2000).await.unwrap(); // 3,000 bytes: 3 KiB
        assert_eq!(budget.permits.available_permits(), 1021);
        drop(c);
        assert_eq!(budget.permits.available_permits(), 1024, "given back");
    }

    #[tokio::test]
    async fn bulk_bodies_are_charged_less_per_byte() {
        let budget = Arc::new(BodyBudget::new(1 << 20, Duration::from_millis(50)));
        // 200 KB of bulk: 3 × = 586 KiB…
        let bulk = charge(&budget);
        bulk.parsing(200_000, BULK_FACTOR).await.unwrap();
        // …which leaves room for a 20 KB ordinary body (16 × = 313 KiB).
        charge(&budget).parsing(20_000, PARSE_FACTOR).await.unwrap();
    }
}
