//! The engine loop: claim due runs with a lease, advance each in memory
//! ([`super::exec`]), store the advances (each checked against the lease, in
//! the transaction that applies its effects), repeat. Sleeps until the next
//! due run, the poll interval (work from other processes) or a wake-up
//! (work this process just accepted), whichever comes first.
//!
//! Durability (FL-5): a process killed between claim and completion wrote
//! nothing for those runs; once the lease expires another claim picks them
//! up, and the lease check on completion means a step's effects are stored
//! once. Time comes from the injected [`Clock`] only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::exec;
use super::records::{
    AdvanceOutcome, ClaimedRun, EndReason, RunAdvance, RunEnd, RunStatus, StepOutcome, StepRecord,
};
use crate::domain::flow::FlowDoc;
use crate::domain::{FlowId, Millis};
use crate::store::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Runs claimed per transaction.
    pub batch: usize,
    /// A claim stops taking runs once their event data passes this many
    /// bytes: parsed, a large body takes many times its size in memory.
    pub claim_bytes: u64,
    /// How long a claim is held before another process may take the runs.
    pub lease: Duration,
    /// Longest sleep between looks for due work.
    pub poll: Duration,
    /// Claim-advance-complete loops run at once; 0 picks by store: one on
    /// SQLite (its single writer is the limit; a second loop measured
    /// slower), two on PostgreSQL (each loop works on its own connection,
    /// and claims with SKIP LOCKED never overlap; one works while the other
    /// waits for the database. More loops take smaller batches, and
    /// PostgreSQL's cost is mostly per statement: `hookflow-bench inbound`
    /// measured +13 to +22 % calls/s with two loops instead of four, runs
    /// still finishing 1.1 s after the last call; one loop fell behind).
    pub workers: usize,
}

impl EngineConfig {
    pub fn claim_limit(&self) -> crate::store::ClaimLimit {
        crate::store::ClaimLimit {
            runs: self.batch,
            event_bytes: self.claim_bytes,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            batch: 512,
            claim_bytes: 1 << 20,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(250),
            workers: 0,
        }
    }
}

pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    /// This process's lease owner id.
    owner: String,
    /// Parsed flow versions; versions are immutable, so entries never go stale.
    docs: Mutex<HashMap<(FlowId, i64), Arc<FlowDoc>>>,
    wake: Arc<Notify>,
    /// Wakes the delivery worker when a batch queued deliveries.
    deliveries: Arc<Notify>,
}

/// Most parsed flow versions kept; the cache is cleared when it grows past.
const DOC_CACHE: usize = 4096;

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            config,
            owner: format!("engine-{}", uuid::Uuid::new_v4()),
            docs: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            deliveries: Arc::new(Notify::new()),
        })
    }

    /// The engine's own wake-up, for work made elsewhere (a delivery's
    /// outcome resuming a run).
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The wake-up of the outbound delivery worker.
    pub fn deliveries_wake(&self) -> Arc<Notify> {
        self.deliveries.clone()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Ends the loop's sleep: called by whoever just created due work.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Claims and advances one batch of due runs; how many were claimed.
    pub async fn tick(&self) -> crate::store::Result<usize> {
        let now = self.clock.now();
        let lease_until = now + i64::try_from(self.config.lease.as_millis()).unwrap_or(30_000);
        let claimed = self
            .store
            .claim_runs(&self.owner, now, lease_until, self.config.claim_limit())
            .await?;
        let n = claimed.len();
        if n == 0 {
            return Ok(0);
        }
        let mut advances = Vec::with_capacity(n);
        for run in claimed {
            let advance = match self.doc(&run).await {
                Ok(Ok(doc)) => exec::advance(&doc, run, now),
                // The version is gone or unreadable: the run can never go on.
                Ok(Err(why)) => broken(run, now, why),
                // The store failed for now: the batch stays leased and is
                // claimed again when the lease ends; no run is failed for it.
                Err(e) => return Err(e),
            };
            advances.push(advance);
        }
        let sends = advances.iter().any(|a| {
            a.effects
                .iter()
                .any(|(_, e)| matches!(e, super::records::Effect::SendWebhook { .. }))
        });
        let outcomes = self
            .store
            .complete_runs(&self.owner, self.clock.now(), advances)
            .await?;
        if sends {
            self.deliveries.notify_one();
        }
        for o in &outcomes {
            let label = match o {
                AdvanceOutcome::Applied => "applied",
                AdvanceOutcome::LeaseLost => "lease_lost",
                AdvanceOutcome::Failed { step, error } => {
                    tracing::info!(%step, %error, "a run failed at a step");
                    "failed"
                }
            };
            metrics::counter!("hookflow_engine_runs_advanced_total", "outcome" => label)
                .increment(1);
        }
        Ok(n)
    }

    /// The run's flow version, parsed; `Ok(Err(why))` when it cannot be had
    /// at all (the run must fail), `Err` when the store failed for now.
    async fn doc(&self, run: &ClaimedRun) -> crate::store::Result<Result<Arc<FlowDoc>, String>> {
        let key = (run.flow_id.clone(), run.flow_version);
        if let Some(d) = self.docs.lock().expect("doc cache").get(&key) {
            return Ok(Ok(d.clone()));
        }
        let raw: Value = match self
            .store
            .flow_version(&run.workspace_id, &run.flow_id, run.flow_version)
            .await
        {
            Ok(raw) => raw,
            Err(e @ StoreError::NotFound { .. }) => return Ok(Err(e.to_string())),
            Err(e) => return Err(e),
        };
        let doc: Arc<FlowDoc> = match serde_json::from_value(raw) {
            Ok(doc) => Arc::new(doc),
            Err(e) => return Ok(Err(format!("the flow version is unreadable: {e}"))),
        };
        let mut cache = self.docs.lock().expect("doc cache");
        if cache.len() >= DOC_CACHE {
            cache.clear();
        }
        cache.insert(key, doc.clone());
        Ok(Ok(doc))
    }

    /// Runs the engine's loops (`worker::run`) until `stop` is cancelled;
    /// each finishes its batch first.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let workers = match (self.config.workers, self.store.kind()) {
            (0, "postgres") => 2,
            (0, _) => 1,
            (n, _) => n,
        };
        let loops = crate::worker::Loops {
            workers,
            poll: self.config.poll,
        };
        let wake = self.wake.clone();
        crate::worker::run(self, loops, wake, stop).await;
    }
}

#[async_trait::async_trait]
impl crate::worker::LeasedWork for Engine {
    fn name(&self) -> &str {
        "engine"
    }

    async fn tick(&self) -> crate::store::Result<usize> {
        Engine::tick(self).await
    }

    async fn next_due(&self) -> crate::store::Result<Option<Millis>> {
        // Nothing later than one poll interval is needed: the loop never
        // sleeps longer.
        let now = self.clock.now();
        let poll = i64::try_from(self.config.poll.as_millis()).unwrap_or(i64::MAX);
        self.store.next_due(now, now.saturating_add(poll)).await
    }

    fn now(&self) -> Millis {
        self.clock.now()
    }
}

/// The advance of a run whose flow version cannot be read: it fails with
/// the reason, instead of being retried for ever.
fn broken(run: ClaimedRun, now: Millis, error: String) -> RunAdvance {
    let step = run.step.clone().unwrap_or_default();
    RunAdvance {
        run_id: run.id,
        workspace_id: run.workspace_id,
        contact_id: run.contact.id,
        first_seq: run.step_count,
        history: vec![StepRecord {
            step: step.clone(),
            kind: "unknown".into(),
            at: now,
            input: Value::Null,
            outcome: StepOutcome::Failed,
            detail: Value::Null,
            error: Some(error),
        }],
        effects: Vec::new(),
        end: RunEnd::Finished {
            status: RunStatus::Failed,
            reason: EndReason::Failed,
            step: Some(step),
        },
        event_data: None,
        consumed_event: false,
        claimed_due: run.claimed_due,
    }
}
