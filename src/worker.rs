//! The loop every leased worker runs, written once: claim a batch with a
//! lease, work on it outside any transaction, finish what is still held;
//! then sleep until the next item is due, a wake-up or the poll interval,
//! and stop when the `CancellationToken` is cancelled (after the batch in
//! hand). The flow engine runs it over runs; [`JobWorker`] runs it over the
//! leased job queue (`store::queue`) for any [`JobHandler`]: outbound
//! webhook deliveries, emails and purges are handlers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::Millis;
use crate::flows::Clock;
use crate::store::queue::{Job, JobClaim, JobOutcome};
use crate::store::{Store, StoreError};

/// One kind of leased work.
#[async_trait]
pub trait LeasedWork: Send + Sync + 'static {
    /// For logs ("engine", "webhook_delivery").
    fn name(&self) -> &str;
    /// Claims, works on and finishes one batch; how many items it claimed.
    async fn tick(&self) -> Result<usize, StoreError>;
    /// When the next item is due, if that is known.
    async fn next_due(&self) -> Result<Option<Millis>, StoreError>;
    fn now(&self) -> Millis;
}

/// How a worker's loops run.
#[derive(Clone, Debug)]
pub struct Loops {
    /// Loops at once in this process.
    pub workers: usize,
    /// Longest sleep between looks for work (other processes' work waits
    /// this long; this process's own wakes the loops at once).
    pub poll: Duration,
}

/// Runs `loops.workers` loops of `work` until `stop` is cancelled; each
/// finishes the batch in hand first. `wake` ends their sleep.
pub async fn run<W: LeasedWork + ?Sized>(
    work: Arc<W>,
    loops: Loops,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..loops.workers.max(1) {
        set.spawn(one_loop(
            work.clone(),
            loops.poll,
            wake.clone(),
            stop.clone(),
        ));
    }
    while set.join_next().await.is_some() {}
}

/// One loop. Store errors are logged and retried after a pause; one bad item
/// never stops the loop.
async fn one_loop<W: LeasedWork + ?Sized>(
    work: Arc<W>,
    poll: Duration,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let pause = match work.tick().await {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => idle_pause(&*work, poll).await,
            Err(e) => {
                tracing::error!(worker = work.name(), error = %e, "claiming or finishing work failed");
                Duration::from_secs(1)
            }
        };
        if pause.is_zero() {
            // Let the rest of the runtime in between two batches.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long to sleep when nothing was claimed: until the next due item, at
/// most `poll`.
async fn idle_pause<W: LeasedWork + ?Sized>(work: &W, poll: Duration) -> Duration {
    match work.next_due().await {
        Ok(Some(at)) => {
            let wait = at.saturating_sub(work.now()).max(1);
            poll.min(Duration::from_millis(u64::try_from(wait).unwrap_or(1)))
        }
        _ => poll,
    }
}

/// What is done with one job of a kind. Runs outside any transaction (it
/// may call the network); the outcome is recorded only if the lease is
/// still held when it returns.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn handle(&self, job: &Job) -> JobOutcome;
}

/// The leased queue's worker for one kind of job.
pub struct JobWorker<H> {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub handler: H,
    pub kind: String,
    /// This process's lease owner id.
    pub owner: String,
    pub lease: Duration,
    /// Jobs claimed per batch.
    pub batch: usize,
    /// Most jobs of one key in progress at once, across every process.
    pub per_key: Option<u32>,
}

#[async_trait]
impl<H: JobHandler> LeasedWork for JobWorker<H> {
    fn name(&self) -> &str {
        &self.kind
    }

    async fn tick(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let jobs = self
            .store
            .claim_jobs(JobClaim {
                kind: self.kind.clone(),
                owner: self.owner.clone(),
                now,
                lease_until: now + i64::try_from(self.lease.as_millis()).unwrap_or(30_000),
                limit: self.batch,
                per_key: self.per_key,
            })
            .await?;
        // The batch's jobs run at once (each is I/O-bound), each finished as
        // soon as it is done.
        let finishing = jobs.iter().map(|job| async move {
            let outcome = self.handler.handle(job).await;
            let held = self
                .store
                .finish_job(&job.id, &self.owner, self.clock.now(), outcome)
                .await?;
            if !held {
                tracing::warn!(job = %job.id, kind = %self.kind, "a job's lease ended before it finished; its outcome was not recorded");
            }
            Ok::<_, StoreError>(())
        });
        for r in futures_util::future::join_all(finishing).await {
            r?;
        }
        Ok(jobs.len())
    }

    async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        // Jobs are mostly made by this process, which wakes the loop; other
        // processes' jobs wait at most `poll`.
        Ok(None)
    }

    fn now(&self) -> Millis {
        self.clock.now()
    }
}
