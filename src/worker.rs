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
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::domain::Millis;
use crate::flows::Clock;
use crate::store::queue::{Job, JobClaim, JobOutcome};
use crate::store::sql::{Done, Stmt};
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
    /// Waits for work this worker started and has not finished (after the
    /// loops stopped).
    async fn drain(&self) {}
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
    work.drain().await;
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
/// may call the network). Its outcome is recorded only if the lease is
/// still held; `None` means the handler recorded it itself, in one
/// transaction with its own writes and under the same lease check (see
/// `store::outbound::record_attempt`).
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn handle(&self, job: &Job) -> Option<JobOutcome>;
}

/// How a [`JobWorker`] claims.
#[derive(Clone, Debug)]
pub struct JobWorkerConfig {
    pub kind: String,
    /// This process's lease owner id.
    pub owner: String,
    /// Longer than a job can take (a webhook's longest timeout and more).
    pub lease: Duration,
    /// Jobs claimed per claim.
    pub batch: usize,
    /// Most jobs of one key in progress at once, across every process.
    pub per_key: Option<u32>,
    /// Most jobs in progress at once in this process. A loop does not wait
    /// for its jobs: it claims again while there is room, so one slow job
    /// (an endpoint that hangs) holds one place, never the loop.
    pub max_in_flight: usize,
}

/// The leased queue's worker for one kind of job.
pub struct JobWorker<H> {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    handler: Arc<H>,
    config: JobWorkerConfig,
    room: Arc<tokio::sync::Semaphore>,
    /// The loops' wake-up: a finished job frees a place (and a key's slot),
    /// so the loops claim again at once instead of at the next poll.
    wake: Arc<Notify>,
    /// Set once the loops have stopped: finishing jobs claim no more.
    draining: std::sync::atomic::AtomicBool,
}

impl<H: JobHandler> JobWorker<H> {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        handler: Arc<H>,
        config: JobWorkerConfig,
        wake: Arc<Notify>,
    ) -> Self {
        let room = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
        Self {
            store,
            clock,
            handler,
            config,
            room,
            wake,
            draining: Default::default(),
        }
    }
}

#[async_trait]
impl<H: JobHandler> LeasedWork for JobWorker<H> {
    fn name(&self) -> &str {
        &self.config.kind
    }

    async fn tick(&self) -> Result<usize, StoreError> {
        // Room for at least one job (waiting here is waiting for a job in
        // progress to end), then for as many more as there is.
        let Ok(mut permits) = self.room.clone().acquire_owned().await else {
            return Ok(0);
        };
        if let Some(more) = self.room_now(self.config.batch.max(1) - 1) {
            permits.merge(more);
        }
        let jobs = self.store.claim_jobs(self.claim(&permits)).await?;
        let claimed = jobs.len();
        self.start(jobs, permits);
        Ok(claimed)
    }

    async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        // Jobs are mostly made by this process, which wakes the loop; other
        // processes' jobs wait at most `poll`.
        Ok(None)
    }

    fn now(&self) -> Millis {
        self.clock.now()
    }

    async fn drain(&self) {
        // No claim behind a finish from now on, or draining would not end.
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Every job in progress gives its place back when it ends.
        let all = u32::try_from(self.config.max_in_flight.max(1)).unwrap_or(u32::MAX);
        let _ = self.room.acquire_many(all).await;
    }
}

impl<H: JobHandler> JobWorker<H> {
    /// Places for up to `most` more jobs, as many as are free now (none:
    /// `None`); never waits. One at a time: a bulk take of the count just
    /// read would get nothing if another loop took one place in between.
    fn room_now(&self, most: usize) -> Option<OwnedSemaphorePermit> {
        let mut room: Option<OwnedSemaphorePermit> = None;
        while room.as_ref().map_or(0, OwnedSemaphorePermit::num_permits) < most {
            let Ok(one) = self.room.clone().try_acquire_owned() else {
                break;
            };
            match &mut room {
                Some(all) => all.merge(one),
                None => room = Some(one),
            }
        }
        room
    }

    /// A claim of as many jobs as `permits` has places for, now.
    fn claim(&self, permits: &OwnedSemaphorePermit) -> JobClaim {
        let c = &self.config;
        let now = self.clock.now();
        JobClaim {
            kind: c.kind.clone(),
            owner: c.owner.clone(),
            now,
            lease_until: now + i64::try_from(c.lease.as_millis()).unwrap_or(30_000),
            limit: permits.num_permits(),
            per_key: c.per_key,
        }
    }

    /// Starts a task per claimed job, each holding one of `permits`.
    fn start(&self, jobs: Vec<Job>, mut permits: OwnedSemaphorePermit) {
        let c = &self.config;
        for job in jobs {
            let Some(permit) = permits.split(1) else {
                break;
            };
            let (store, clock, handler) =
                (self.store.clone(), self.clock.clone(), self.handler.clone());
            let (owner, kind, wake) = (c.owner.clone(), c.kind.clone(), self.wake.clone());
            tokio::spawn(async move {
                // However the job ends, its place (and key slot) frees up and
                // the loops are woken to fill it: `_permit` drops first.
                let _wake = WakeOnDrop(wake);
                let _permit = permit;
                let Some(outcome) = handler.handle(&job).await else {
                    return;
                };
                match store
                    .finish_job(&job.id, &owner, clock.now(), outcome)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(job = %job.id, kind = %kind, "a job's lease ended before it finished; its outcome was not recorded")
                    }
                    // The lease runs out and the job is claimed again.
                    Err(e) => {
                        tracing::error!(job = %job.id, kind = %kind, error = %e, "recording a job's outcome failed")
                    }
                }
            });
        }
    }
}

/// A handler's way to finish its jobs with a claim in the same commit (see
/// [`Store::run_sql_then_claim`]): the writes that end jobs free their
/// keys' slots, and the claim behind them fills those slots at once, where
/// a separate claim would wait for a second durable commit. The jobs
/// claimed start as the loops' would.
#[async_trait]
pub trait FinishThenClaim: Send + Sync {
    /// Runs `script` (one transaction) and claims behind it if this process
    /// has room and the store claims behind finishes
    /// (`Store::run_sql_then_claim`); the script's results.
    async fn finish_then_claim(&self, script: Vec<Stmt>) -> Result<Vec<Done>, StoreError>;
}

#[async_trait]
impl<H: JobHandler> FinishThenClaim for JobWorker<H> {
    async fn finish_then_claim(&self, script: Vec<Stmt>) -> Result<Vec<Done>, StoreError> {
        // Only the room there is now: a finishing job never waits for a
        // place (the jobs finishing hold theirs until they return).
        let room = if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            None
        } else {
            self.room_now(self.config.batch.max(1))
        };
        let Some(permits) = room else {
            return self.store.run_sql(script).await;
        };
        let (done, jobs) = self
            .store
            .run_sql_then_claim(script, self.claim(&permits))
            .await?;
        self.start(jobs, permits);
        Ok(done)
    }
}

/// Wakes the loops when dropped.
struct WakeOnDrop(Arc<Notify>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}
