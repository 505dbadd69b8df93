//! The memory that request bodies may take at once (`max_body_memory_bytes`).
//!
//! A body is held twice while its request runs: as the bytes received and as
//! the parsed JSON, which takes several times the text. Without a bound, 100
//! concurrent 1 MB inbound calls took the server to 860 MB. Each body is
//! charged [`PARSE_FACTOR`] (bulk: [`BULK_FACTOR`]) × its length from one
//! budget once it has arrived, before it is parsed, and the charge is given
//! back when the answer is made; a body that does not find room waits (up
//! to [`BodyBudget::WAIT`], 10 s) and is then answered 503 with
//! `Retry-After`. Charging on arrival, not on the declared length, means a
//! client trickling a body in (up to the body timer) holds no budget that
//! others need: only its own bytes.

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

/// A request's claim on the budget: charged by `read_body` once the whole
/// body has arrived (so a client trickling its body in holds nothing but
/// its own bytes), held until the answer is made.
#[derive(Clone)]
pub struct Charge {
    budget: Arc<BodyBudget>,
    bulk: bool,
    held: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
}

impl Charge {
    /// Charges a body of `len` bytes that has arrived: waits for room, up to
    /// the budget's wait, else 503 `server_busy`.
    pub async fn body(&self, len: usize) -> Result<(), ApiError> {
        let factor = if self.bulk { BULK_FACTOR } else { PARSE_FACTOR };
        let kib = u32::try_from((len.saturating_mul(factor) / 1024).max(1))
            .unwrap_or(u32::MAX)
            .min(self.budget.total_kib);
        let room = tokio::time::timeout(
            self.budget.wait,
            self.budget.permits.clone().acquire_many_owned(kib),
        )
        .await;
        match room {
            Ok(Ok(permit)) => {
                if let Ok(mut held) = self.held.lock() {
                    *held = Some(permit);
                }
                Ok(())
            }
            _ => {
                metrics::counter!("hookflow_body_budget_refusals_total").increment(1);
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    "the server is handling as much request data as `max_body_memory_bytes` allows; retry shortly",
                );
                e.retry_after = Some(1);
                Err(e)
            }
        }
    }
}

/// Gives each request a [`Charge`]; whatever `read_body` charged to it is
/// given back once the answer is made.
pub async fn charge_body(
    State(budget): State<Arc<BodyBudget>>,
    mut req: Request,
    next: Next,
) -> Response {
    let charge = Charge {
        bulk: req.uri().path() == "/v1/events/bulk",
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

    fn charge(budget: &Arc<BodyBudget>, bulk: bool) -> Charge {
        Charge {
            budget: budget.clone(),
            bulk,
            held: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_body_waits_for_room_then_gets_503_and_room_comes_back() {
        // Room for one 40 KB body (16 × 40 KB = 640 KiB of 1 MiB).
        let budget = Arc::new(BodyBudget::new(1 << 20, Duration::from_millis(50)));
        let first = charge(&budget, false);
        first.body(40_000).await.unwrap();
        let second = charge(&budget, false);
        let refused = second.body(40_000).await.unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (503, "server_busy")
        );
        assert_eq!(refused.retry_after, Some(1));
        drop(first); // the first request's answer is made
        second.body(40_000).await.unwrap();
        // A body larger than the whole budget is charged the whole budget.
        drop(second);
        charge(&budget, false).body(10 << 20).await.unwrap();
    }

    #[tokio::test]
    async fn bulk_bodies_are_charged_less_per_byte() {
        let budget = Arc::new(BodyBudget::new(1 << 20, Duration::from_millis(50)));
        // 200 KB: 3 × = 600 KiB fits twice in no budget, once here…
        let bulk = charge(&budget, true);
        bulk.body(200_000).await.unwrap();
        // …and leaves room for a 20 KB ordinary body (16 × = 320 KiB).
        charge(&budget, false).body(20_000).await.unwrap();
    }
}
