//! The delivery engine (WH-3 to WH-8, WH-12): [`Outbound`] holds what every
//! outbound request shares (the target policy and the guarded clients);
//! [`DeliveryHandler`] is the leased queue's handler for kind
//! `webhook_delivery`: load the delivery and its webhook, apply the
//! webhook's state (disabled, verification throttle, rate limit), render
//! the body, send one signed attempt outside any transaction, and record
//! the attempt, the delivery's new state, the webhook's and the job's
//! outcome in one transaction under the lease (`store::outbound`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::config::{Problem, WebhookConfig, WebhookSpec};
use super::guard::{SystemResolver, TargetPolicy};
use super::schedule::{self, Verdict};
use super::send::{Attempt, Outgoing, send};
use super::template::{ContactVars, FlowVars, IdVars, Limits, RenderContext, default_body};
use crate::domain::signature::SigningSecret;
use crate::domain::{DeliveryId, Millis};
use crate::flows::Clock;
use std::collections::HashMap;

use crate::domain::WebhookId;
use crate::store::outbound::{
    AttemptWrite, DeliveryRecord, DeliveryStatus, NewAttempt, WebhookChange, WebhookRecord,
    delivered_held, load_many, plain_success, record_attempt, record_delivered,
    record_delivered_script, take_slot,
};
use crate::store::queue::{Job, JobOutcome};
use crate::store::{Store, StoreError};
use crate::worker::FinishThenClaim;

/// Operator settings for outbound requests.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// Address ranges opened although private or loopback (WH-7).
    pub allow: Vec<ipnet::IpNet>,
    /// The one-per-hour rule until a webhook's receiver answers with its
    /// verification key (WH-8).
    pub verification: bool,
    /// Longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// A webhook failing this long without a success is disabled (WH-12).
    pub disable_after: Duration,
    /// Attempts (request and response bodies) are kept this long.
    pub attempt_retention: Duration,
    /// Deliveries in progress at once in this process.
    pub max_in_flight: usize,
    /// Deliveries to one webhook in progress at once, across processes.
    pub per_endpoint: u32,
    pub connect_timeout: Duration,
    /// How long a claimed delivery is held (over the longest timeout).
    pub lease: Duration,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            verification: true,
            retry_after_cap: Duration::from_secs(6 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            attempt_retention: Duration::from_secs(30 * 24 * 3600),
            max_in_flight: 1024,
            per_endpoint: 8,
            connect_timeout: Duration::from_secs(5),
            lease: super::config::MAX_TIMEOUT * 2,
        }
    }
}

/// What every outbound request shares.
pub struct Outbound {
    pub settings: OutboundSettings,
    pub policy: Arc<TargetPolicy>,
    /// Redirects not followed.
    client: reqwest::Client,
    /// Redirects followed (at most 5 hops), each hop checked.
    following: reqwest::Client,
}

/// Redirect hops a webhook that opts in may follow.
pub const MAX_REDIRECTS: usize = 5;

impl Outbound {
    pub fn new(settings: OutboundSettings) -> Result<Arc<Self>, String> {
        Self::with_resolver(settings, Arc::new(SystemResolver))
    }

    /// With a resolver of the caller's (tests map names to 127.0.0.1).
    pub fn with_resolver(
        settings: OutboundSettings,
        resolver: Arc<dyn reqwest::dns::Resolve>,
    ) -> Result<Arc<Self>, String> {
        let policy = Arc::new(TargetPolicy {
            allow: settings.allow.clone(),
        });
        let build = |follow| {
            super::guard::client(
                policy.clone(),
                resolver.clone(),
                follow,
                settings.connect_timeout,
            )
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        Ok(Arc::new(Self {
            client: build(0)?,
            following: build(MAX_REDIRECTS)?,
            policy,
            settings,
        }))
    }

    /// A stored or given spec, checked.
    pub fn config(&self, spec: &Value) -> Result<WebhookConfig, Vec<Problem>> {
        let spec: WebhookSpec = serde_json::from_value(spec.clone()).map_err(|e| {
            vec![Problem {
                field: String::new(),
                message: e.to_string(),
            }]
        })?;
        spec.check(&self.policy)
    }

    /// One signed attempt.
    pub async fn attempt(
        &self,
        config: &WebhookConfig,
        message_id: &str,
        body: &[u8],
        secrets: &[SigningSecret],
        now: Millis,
    ) -> Attempt {
        let client = if config.follow_redirects {
            &self.following
        } else {
            &self.client
        };
        let out = Outgoing {
            config,
            message_id,
            body,
            secrets,
            timestamp: now.div_euclid(1000),
        };
        send(
            client,
            &self.policy,
            &out,
            now,
            self.settings.retry_after_cap,
        )
        .await
    }
}

/// The body of a message: the template's output, or the default body.
pub fn render(config: &WebhookConfig, ctx: &RenderContext) -> Result<Vec<u8>, String> {
    match &config.template {
        None => Ok(default_body(ctx)),
        Some(t) => t
            .render(ctx, &Limits::default())
            .map(String::into_bytes)
            .map_err(|e| format!("the body template failed: {e}")),
    }
}

/// The template variables of a delivery (`context` is what its cause
/// stored: `contact` and `event`).
pub fn render_context(d: &DeliveryRecord, now: Millis) -> RenderContext {
    let c = &d.context["contact"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    RenderContext {
        contact: ContactVars {
            id: d.contact_id.clone().unwrap_or_else(|| text(&c["id"])),
            email: text(&c["email"]),
            phone: c["phone"].as_str().map(str::to_owned),
            status: text(&c["status"]),
            fields: c["fields"].as_object().cloned().unwrap_or_default(),
        },
        event: d.context.get("event").cloned().unwrap_or(Value::Null),
        flow: FlowVars {
            id: d.flow_id.clone().unwrap_or_default(),
            name: d.flow_name.clone().unwrap_or_default(),
        },
        run: IdVars {
            id: d.run_id.clone().unwrap_or_default(),
        },
        step: IdVars {
            id: d.step.clone().unwrap_or_default(),
        },
        now: DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default(),
    }
}

/// The signing secrets at `now`: the current one, and the one it replaced
/// while that still signs.
pub fn secrets(w: &WebhookRecord, now: Millis) -> Vec<SigningSecret> {
    let mut out = vec![SigningSecret::from_trusted(w.secret.clone())];
    if let (Some(old), Some(until)) = (&w.old_secret, w.old_secret_until)
        && until > now
    {
        out.push(SigningSecret::from_trusted(old.clone()));
    }
    out
}

/// An attempt as the activity log stores it.
pub fn attempt_record(a: Attempt, started_at: Millis, outcome: &'static str) -> NewAttempt {
    // Straight to JSON text, no `Value` tree in between.
    let request = serde_json::to_string(&a.request).expect("strings serialise");
    let (response_status, response_headers, response_body, truncated) = match a.response {
        Some(r) => (
            Some(i64::from(r.status)),
            Some(serde_json::to_string(&r.headers).expect("strings serialise")),
            Some(r.body),
            r.truncated,
        ),
        None => (None, None, None, false),
    };
    NewAttempt {
        started_at,
        request,
        response_status,
        response_headers,
        response_body,
        truncated,
        duration_ms: i64::try_from(a.duration.as_millis()).unwrap_or(i64::MAX),
        error: a.error,
        outcome,
    }
}

/// The queue handler for webhook deliveries.
pub struct DeliveryHandler {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub outbound: Arc<Outbound>,
    /// The worker's lease owner id (the attempt is recorded under it).
    pub owner: String,
    loads: Coalesce<(DeliveryId, WebhookId), Option<Delivery>>,
    records: Coalesce<AttemptWrite, bool>,
    /// Wakes the flow engine when an outcome resumed a run.
    pub engine_wake: Option<Arc<tokio::sync::Notify>>,
    /// The worker running this handler: delivered attempts are recorded
    /// with its next claim behind them.
    claims: std::sync::Weak<dyn FinishThenClaim>,
    /// Checked configurations by webhook, while its `updated_at` holds.
    configs: std::sync::Mutex<HashMap<WebhookId, (Millis, Arc<WebhookConfig>)>>,
}

/// A claimed delivery and its webhook.
type Delivery = (DeliveryRecord, Arc<WebhookRecord>);
type Loaded = Result<Option<Delivery>, StoreError>;

/// Requests that arrive together, served by one store call: the first to
/// queue yields once, so that those arriving with it (the jobs of one
/// claim, attempts ending about now) join, then serves every one queued.
struct Coalesce<I, O>(std::sync::Mutex<Vec<(I, Waiter<O>)>>);

/// Where a coalesced request's answer goes.
type Waiter<O> = tokio::sync::oneshot::Sender<Result<O, StoreError>>;

impl<I, O> Default for Coalesce<I, O> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(Vec::new()))
    }
}

impl<I, O> Coalesce<I, O> {
    /// `serve` answers every item, in order.
    async fn join<F, Fut>(&self, item: I, serve: F) -> Result<O, StoreError>
    where
        F: FnOnce(Vec<I>) -> Fut,
        Fut: std::future::Future<Output = Vec<Result<O, StoreError>>>,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let first = {
            let mut q = self.0.lock().expect("coalesce");
            q.push((item, tx));
            q.len() == 1
        };
        if first {
            // Dropped while it yields (its task cancelled), the first caller
            // must not leave those queued behind it waiting for a batch
            // nobody will take: the guard empties the queue, and they are
            // answered with an error.
            let guard = Unserved(&self.0);
            tokio::task::yield_now().await;
            std::mem::forget(guard);
            let batch = std::mem::take(&mut *self.0.lock().expect("coalesce"));
            let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
            for (answer, reply) in serve(items).await.into_iter().zip(replies) {
                let _ = reply.send(answer);
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "a coalesced request was dropped".into(),
            ))
        })
    }
}

/// Empties a [`Coalesce`] queue whose first caller went away before taking
/// it (dropping the waiters' senders answers them with an error).
struct Unserved<'a, T>(&'a std::sync::Mutex<Vec<T>>);

impl<T> Drop for Unserved<'_, T> {
    fn drop(&mut self) {
        let pending = self.0.lock().map(|mut q| std::mem::take(&mut *q));
        drop(pending);
    }
}

/// Loads of claimed deliveries, coalesced: one read for the jobs of a claim
/// instead of one per delivery (measured in `hookflow-bench deliveries`).
async fn load_all(store: &dyn Store, jobs: Vec<(DeliveryId, WebhookId)>) -> Vec<Loaded> {
    let (ids, webhooks): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
    match load_many(store, &ids, &webhooks).await {
        // The ids are distinct: each is a job this worker holds the lease of.
        Ok(mut map) => ids.iter().map(|id| Ok(map.remove(id))).collect(),
        Err(e) => ids
            .iter()
            .map(|_| Err(StoreError::Internal(e.to_string())))
            .collect(),
    }
}

/// Delivered attempts, recorded together ([`record_delivered`]: three
/// statements for up to 64 deliveries, not three each), with the worker's
/// next claim in the same commit when there is a worker; each answer says
/// whether the lease was still held.
async fn record_all(
    h: &DeliveryHandler,
    writes: Vec<AttemptWrite>,
) -> Vec<Result<bool, StoreError>> {
    match record_with_claim(h, &writes).await {
        Ok(held) => held.into_iter().map(Ok).collect(),
        Err(e) => writes
            .iter()
            .map(|_| Err(StoreError::Internal(e.to_string())))
            .collect(),
    }
}

/// [`record_all`]'s write: through the worker, which claims behind it,
/// unless the worker is gone (shutting down).
async fn record_with_claim(
    h: &DeliveryHandler,
    writes: &[AttemptWrite],
) -> Result<Vec<bool>, StoreError> {
    let now = h.clock.now();
    let Some(worker) = h.claims.upgrade() else {
        return record_delivered(&*h.store, writes, &h.owner, now).await;
    };
    let script = record_delivered_script(writes, &h.owner, now)?;
    delivered_held(writes, &worker.finish_then_claim(script).await?)
}

impl DeliveryHandler {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        outbound: Arc<Outbound>,
        owner: String,
        claims: std::sync::Weak<dyn FinishThenClaim>,
    ) -> Self {
        Self {
            store,
            clock,
            outbound,
            owner,
            loads: Coalesce::default(),
            records: Coalesce::default(),
            engine_wake: None,
            claims,
            configs: Default::default(),
        }
    }

    /// The webhook's checked configuration, from the cache while the row is
    /// unchanged.
    fn config(&self, w: &WebhookRecord) -> Result<Arc<WebhookConfig>, Vec<Problem>> {
        if let Some((at, c)) = self.configs.lock().expect("configs").get(&w.id)
            && *at == w.updated_at
        {
            return Ok(c.clone());
        }
        let c = Arc::new(self.outbound.config(&w.spec)?);
        let mut cache = self.configs.lock().expect("configs");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(w.id.clone(), (w.updated_at, c.clone()));
        Ok(c)
    }
}

#[async_trait]
impl crate::worker::JobHandler for DeliveryHandler {
    async fn handle(&self, job: &Job) -> Option<JobOutcome> {
        match self.deliver(job).await {
            Ok(outcome) => outcome,
            Err(e) => {
                // The store failed: try again shortly (the lease check keeps
                // the outcome single).
                tracing::error!(delivery = %job.id, error = %e, "a delivery could not be processed");
                Some(JobOutcome::Retry {
                    due_at: self.clock.now() + 5_000,
                    error: e.to_string(),
                })
            }
        }
    }
}

impl DeliveryHandler {
    /// Sends one attempt of the job's delivery and records it with the
    /// job's outcome (None); Some when only the job is left to finish.
    async fn deliver(&self, job: &Job) -> Result<Option<JobOutcome>, StoreError> {
        let id = DeliveryId::from_trusted(job.id.as_str().to_owned());
        let store = &*self.store;
        // The job's key is the delivery's webhook.
        let webhook = WebhookId::from_trusted(job.key.clone());
        let loaded = self
            .loads
            .join((id, webhook), |jobs| load_all(store, jobs))
            .await?;
        let Some((d, w)) = loaded else {
            // Deleted with its webhook: nothing to send or record.
            return Ok(Some(JobOutcome::Done));
        };
        let now = self.clock.now();
        let base = |status, next, job| AttemptWrite {
            delivery: d.id.clone(),
            workspace_id: d.workspace_id.clone(),
            webhook: w.id.clone(),
            attempt: None,
            status,
            next_attempt_at: next,
            error: None,
            webhook_change: None,
            job,
            also: Vec::new(),
            resume: None,
        };
        if !w.enabled {
            let mut write = base(
                DeliveryStatus::Disabled,
                None,
                JobOutcome::Failed {
                    error: "the webhook is disabled".into(),
                },
            );
            write.error = Some(format!(
                "held: the webhook is disabled ({})",
                w.disabled_reason.as_deref().unwrap_or("by a user")
            ));
            return self.write(&d, write).await.map(|()| None);
        }
        let config = match self.config(&w) {
            Ok(c) => c,
            Err(problems) => {
                let error = problems
                    .iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut write = base(
                    DeliveryStatus::Failed,
                    None,
                    JobOutcome::Failed {
                        error: error.clone(),
                    },
                );
                write.error = Some(format!("the webhook's configuration is not valid: {error}"));
                return self.write(&d, write).await.map(|()| None);
            }
        };
        // The verification throttle and the rate limit: one slot at a time,
        // taken atomically on the webhook row (across processes).
        let unverified = self.outbound.settings.verification && !w.verified;
        let spacing = if unverified {
            Some(schedule::UNVERIFIED_INTERVAL.as_millis() as Millis)
        } else {
            config
                .rate_per_second
                .map(|r| (1000 / i64::from(r.max(1))).max(1))
        };
        if let Some(spacing) = spacing
            && let Err(at) = take_slot(&*self.store, &w.id, now, now + spacing).await?
        {
            let mut write = base(
                DeliveryStatus::Throttled,
                Some(at),
                JobOutcome::Retry {
                    due_at: at,
                    error: "throttled".into(),
                },
            );
            write.error = Some(if unverified {
                "held: until the receiver answers with the verification key, one delivery per hour"
                    .into()
            } else {
                "held: the webhook's rate limit".into()
            });
            return self.write(&d, write).await.map(|()| None);
        }
        let body = if d.event_type == "flow.step" {
            render(&config, &render_context(&d, now))
        } else {
            Ok(event_body(&d))
        };
        let body = match body {
            Ok(b) => b,
            Err(error) => {
                let mut write = base(
                    DeliveryStatus::Failed,
                    None,
                    JobOutcome::Failed {
                        error: error.clone(),
                    },
                );
                write.attempt = Some(NewAttempt {
                    started_at: now,
                    request:
                        json!({ "method": config.method.as_str(), "url": config.url.as_str() })
                            .to_string(),
                    response_status: None,
                    response_headers: None,
                    response_body: None,
                    truncated: false,
                    duration_ms: 0,
                    error: Some(error.clone()),
                    outcome: "failed",
                });
                write.error = Some(error);
                return self.write(&d, write).await.map(|()| None);
            }
        };
        let attempt = self
            .outbound
            .attempt(&config, d.id.as_str(), &body, &secrets(&w, now), now)
            .await;
        let after = self.clock.now();
        let failing_since = w.failing_since.unwrap_or(now);
        let should_disable = schedule::should_disable(
            Some(failing_since),
            after,
            self.outbound.settings.disable_after,
        );
        let made = d.attempts + 1;
        let (status, next, job_outcome, outcome, change) = match &attempt.verdict {
            Verdict::Delivered => {
                let verified = !w.verified
                    && attempt.response.as_ref().is_some_and(|r| {
                        schedule::verification_matches(&r.body, &w.verification_key)
                    });
                let change = (verified || w.failing_since.is_some()).then_some(WebhookChange {
                    succeeded: true,
                    verified,
                    disable: None,
                });
                (
                    DeliveryStatus::Succeeded,
                    None,
                    JobOutcome::Done,
                    "succeeded",
                    change,
                )
            }
            Verdict::Retry {
                reason,
                after: wait,
            } => {
                let delay = schedule::retry_delay(
                    u32::try_from(made).unwrap_or(u32::MAX),
                    config.retries,
                    &mut rand::rng(),
                )
                .map(|d| wait.unwrap_or(d));
                let change = WebhookChange {
                    succeeded: false,
                    verified: false,
                    disable: should_disable.then(|| {
                        format!(
                            "every delivery failed for {} hours without a success",
                            self.outbound.settings.disable_after.as_secs() / 3600
                        )
                    }),
                };
                match delay {
                    Some(delay) => {
                        let due = after + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                        (
                            DeliveryStatus::Pending,
                            Some(due),
                            JobOutcome::Retry {
                                due_at: due,
                                error: reason.clone(),
                            },
                            "retry",
                            Some(change),
                        )
                    }
                    None => (
                        DeliveryStatus::Failed,
                        None,
                        JobOutcome::Failed {
                            error: format!("{reason}; no retries left"),
                        },
                        "failed",
                        Some(change),
                    ),
                }
            }
            Verdict::Final { reason, disable } => (
                DeliveryStatus::Failed,
                None,
                JobOutcome::Failed {
                    error: reason.clone(),
                },
                "failed",
                Some(WebhookChange {
                    succeeded: false,
                    verified: false,
                    disable: (*disable || should_disable).then(|| reason.clone()),
                }),
            ),
        };
        let mut write = base(status, next, job_outcome);
        write.error = match &attempt.verdict {
            Verdict::Delivered => None,
            Verdict::Retry { reason, .. } | Verdict::Final { reason, .. } => Some(
                attempt
                    .error
                    .clone()
                    .map_or_else(|| reason.clone(), |e| format!("{reason}: {e}")),
            ),
        };
        write.attempt = Some(attempt_record(attempt, now, outcome));
        if let Some(reason) = change.as_ref().and_then(|c| c.disable.clone()) {
            write.also = self.disabled_event(&w, &reason, after).await?;
        }
        write.webhook_change = change;
        self.write(&d, write).await.map(|()| None)
    }

    /// The deliveries announcing that `w` is disabled, to the workspace's
    /// subscriptions that want `webhook.disabled` (not to `w` itself).
    async fn disabled_event(
        &self,
        w: &WebhookRecord,
        reason: &str,
        now: Millis,
    ) -> Result<Vec<crate::store::sql::Stmt>, StoreError> {
        use crate::store::outbound::{
            event_delivery, insert_delivery, subscriptions_stmt, wanting,
        };
        let subs = self.store.read_sql(vec![subscriptions_stmt()]).await?;
        let rows = subs.first().map(|d| d.rows.as_slice()).unwrap_or_default();
        let payload = json!({
            "event": "webhook.disabled",
            "timestamp": now.div_euclid(1000),
            "webhook_id": w.id.as_str(),
            "name": w.name,
            "reason": reason,
        });
        let mut out = Vec::new();
        for sub in wanting(rows, &w.workspace_id, "webhook.disabled")? {
            if sub != w.id {
                let d = event_delivery(
                    &sub,
                    &w.workspace_id,
                    "webhook.disabled",
                    &payload,
                    None,
                    None,
                );
                out.extend(insert_delivery(&d, now));
            }
        }
        Ok(out)
    }

    /// Records `w`; a final outcome of a delivery whose run waits for it
    /// (`wait_for_result`) resumes the run in the same transaction.
    async fn write(&self, d: &DeliveryRecord, mut w: AttemptWrite) -> Result<(), StoreError> {
        let final_outcome = matches!(w.status, DeliveryStatus::Succeeded | DeliveryStatus::Failed);
        if final_outcome
            && d.context["wait"] == true
            && let (Some(run), Some(step)) = (&d.run_id, &d.step)
        {
            let response = w.attempt.as_ref().and_then(|a| {
                a.response_body
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            });
            w.resume = Some((
                run.clone(),
                crate::flows::steps::result_event(step),
                json!({
                    "delivery_id": d.id.as_str(),
                    "status": w.status.as_str(),
                    "response_status": w.attempt.as_ref().and_then(|a| a.response_status),
                    "response": response,
                }),
            ));
        }
        let resumes = w.resume.is_some();
        self.record(w).await?;
        if resumes && let Some(wake) = &self.engine_wake {
            wake.notify_one();
        }
        Ok(())
    }

    async fn record(&self, w: AttemptWrite) -> Result<(), StoreError> {
        let delivery = w.delivery.clone();
        let held = if plain_success(&w) {
            self.records.join(w, |ws| record_all(self, ws)).await?
        } else {
            record_attempt(&*self.store, w, &self.owner, self.clock.now()).await?
        };
        if !held {
            tracing::warn!(%delivery, "a delivery's lease ended before its attempt was recorded; another worker has it");
        }
        Ok(())
    }
}

/// Runs the delivery worker and the attempt purge until `stop`.
pub async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    outbound: Arc<Outbound>,
    wake: Arc<tokio::sync::Notify>,
    engine_wake: Arc<tokio::sync::Notify>,
    stop: tokio_util::sync::CancellationToken,
) {
    let owner = format!("outbound-{}", uuid::Uuid::new_v4());
    let settings = outbound.settings.clone();
    // The worker and its handler point at each other: the handler records
    // with the worker's next claim behind (a `Weak`, no cycle of owners).
    let worker = Arc::new_cyclic(
        |me: &std::sync::Weak<crate::worker::JobWorker<DeliveryHandler>>| {
            let claims: std::sync::Weak<dyn FinishThenClaim> = me.clone();
            let mut handler = DeliveryHandler::new(
                store.clone(),
                clock.clone(),
                outbound,
                owner.clone(),
                claims,
            );
            handler.engine_wake = Some(engine_wake);
            crate::worker::JobWorker::new(
                store.clone(),
                clock.clone(),
                Arc::new(handler),
                crate::worker::JobWorkerConfig {
                    kind: crate::store::outbound::DELIVERY_JOB.into(),
                    owner,
                    lease: settings.lease,
                    batch: 128,
                    per_key: Some(settings.per_endpoint),
                    max_in_flight: settings.max_in_flight,
                },
                wake.clone(),
            )
        },
    );
    let loops = crate::worker::Loops {
        // Two claim loops: a claim waits for its commit and fsync, and an
        // endpoint's place freed meanwhile stays empty until the next claim
        // runs; with two, one claims while the other waits (claims still
        // run one at a time on the store, so per-key limits hold).
        // `hookflow-bench deliveries`, 100k at 64 per endpoint: 14,377-
        // 15,550/s with one loop, 15,190-16,434 with two, three no better.
        workers: 2,
        poll: Duration::from_millis(250),
    };
    let purge = purge_loop(store, clock, settings.attempt_retention, stop.clone());
    tokio::join!(crate::worker::run(worker, loops, wake, stop), purge);
}

/// Deletes attempts older than the retention, in batches of 1,000 with a
/// pause between, every ten minutes.
async fn purge_loop(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let before = clock.now() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        loop {
            match crate::store::outbound::purge_attempts(&*store, before, 1000).await {
                Ok(1000) => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "purging old delivery attempts failed");
                    break;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
}

/// The body of an event delivery (a subscription's): a JSON array of one
/// object, keys in the order of SendPulse's examples (seed 002) for the
/// contact events; the flow's id filled in for flow events.
pub fn event_body(d: &DeliveryRecord) -> Vec<u8> {
    let mut payload = d.context["payload"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if d.event_type.starts_with("flow.") {
        payload
            .entry("automation_id")
            .or_insert_with(|| json!(d.flow_id));
        payload.entry("title").or_insert_with(|| json!(d.flow_name));
    }
    let order: &[&str] = match d.event_type.as_str() {
        "contact.unsubscribed" => {
            // The seed's unsubscribe example has its timestamp as text.
            if let Some(t) = payload.get_mut("timestamp")
                && let Some(n) = t.as_i64()
            {
                *t = json!(n.to_string());
            }
            &[
                "task_id",
                "timestamp",
                "from_all",
                "email",
                "reason",
                "book_id",
                "event",
                "categories",
                "source",
                "automation_id",
            ]
        }
        "contact.spam_complaint" | "contact.bounced" => &[
            "timestamp",
            "event",
            "task_id",
            "email",
            "source",
            "automation_id",
        ],
        "webhook.disabled" => &["event", "timestamp", "webhook_id", "name", "reason"],
        _ => &[
            "event",
            "timestamp",
            "automation_id",
            "title",
            "run_id",
            "contact_id",
            "email",
            "goal",
            "reason",
        ],
    };
    let mut parts = Vec::with_capacity(payload.len());
    for key in order {
        if let Some(v) = payload.remove(*key) {
            parts.push(format!("{}:{}", json!(key), v));
        }
    }
    for (k, v) in payload {
        parts.push(format!("{}:{}", json!(k), v));
    }
    format!("[{{{}}}]", parts.join(",")).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo(items: Vec<u32>) -> Vec<Result<u32, StoreError>> {
        items.into_iter().map(Ok).collect()
    }

    #[tokio::test]
    async fn coalesced_callers_are_answered_together() {
        let c = Coalesce::<u32, u32>::default();
        let (a, b) = tokio::join!(c.join(1, echo), c.join(2, echo));
        assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
    }

    #[tokio::test]
    async fn a_first_caller_dropped_before_serving_leaves_no_one_hanging() {
        let c = Coalesce::<u32, u32>::default();
        let mut first = Box::pin(c.join(1, echo));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Queued, then yielding: the batch is not taken yet.
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let mut second = Box::pin(c.join(2, echo));
        assert!(second.as_mut().poll(&mut cx).is_pending());
        drop(first);
        let waited = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert!(
            matches!(waited, Ok(Err(StoreError::Internal(_)))),
            "the caller queued behind the dropped one is answered: {waited:?}"
        );
        // And the next caller is served as a first one.
        let next = tokio::time::timeout(Duration::from_secs(5), c.join(3, echo)).await;
        assert_eq!(next.unwrap().unwrap(), 3);
    }
}
