//! The engine's only source of time. Production uses the system clock;
//! tests use [`TestClock`] and move time forward instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::Millis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// Wall-clock time.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        crate::store::now_millis()
    }
}

/// The system time plus an offset that tests move forward: a week passes
/// in one call. It never runs behind the system time, so work the store
/// stamps with the real time (a run entered "now") is due for the engine.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn new() -> Self {
        Self(Arc::new(AtomicI64::new(0)))
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(
            Millis::try_from(by.as_millis()).unwrap_or(0),
            Ordering::SeqCst,
        );
    }
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TestClock {
    fn now(&self) -> Millis {
        crate::store::now_millis() + self.0.load(Ordering::SeqCst)
    }
}
