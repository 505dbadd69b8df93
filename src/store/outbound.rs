//! Webhooks, deliveries and attempts (issue 10), written once over the
//! shared statements of [`super::sql`]: both databases run this same SQL.
//!
//! A delivery is a message with a stable id (`msg_…`, the `webhook-id` of
//! every attempt). Its job in the leased queue has the same id (kind
//! [`DELIVERY_JOB`], key = the webhook id, so the queue's `per_key` limit
//! is the per-endpoint concurrency). An attempt is recorded, the delivery
//! and the webhook updated and the job finished in one transaction that
//! first checks the lease: a worker whose lease was taken over writes
//! nothing.

use serde_json::Value;

use super::queue::{JobOutcome, finish_columns};
use super::sql::{Arg, Done, RowExt, Stmt};
use super::{Result, Store, StoreError};
use crate::domain::{
    AttemptId, DeliveryId, Millis, Page, PageRequest, Stored, WebhookId, WorkspaceId,
};

/// The queue's kind for webhook deliveries.
pub const DELIVERY_JOB: &str = "webhook_delivery";

/// A stored webhook. `spec` is the configuration as the user wrote it
/// (secrets included: it never leaves the server unmasked).
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookRecord {
    pub id: WebhookId,
    pub workspace_id: WorkspaceId,
    pub name: String,
    pub spec: Value,
    pub secret: String,
    /// The secret before the last rotation, still signing until
    /// `old_secret_until`.
    pub old_secret: Option<String>,
    pub old_secret_until: Option<Millis>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub verification_key: String,
    pub verified: bool,
    /// The next delivery may not start before this time (the verification
    /// throttle and the rate limit, across processes).
    pub next_allowed_at: Millis,
    /// Deliveries have failed since this time without a success.
    pub failing_since: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// A subscription's event types; None for a webhook.
    pub event_types: Option<Vec<String>>,
    /// Made by a flow save for a step's inline configuration: only a flow
    /// save overwrites it.
    pub inline: bool,
}

macro_rules! webhook_cols {
    ($p:literal) => {
        crate::prefixed!($p;
            "id", "workspace_id", "name", "spec", "secret", "old_secret", "old_secret_until",
            "enabled", "disabled_reason", "verification_key", "verified", "next_allowed_at",
            "failing_since", "created_at", "updated_at", "event_types", "inline"
        )
    };
}

fn webhook(r: &[crate::store::sql::Val]) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: WebhookId::from_trusted(r.text(0)?),
        workspace_id: WorkspaceId::from_trusted(r.text(1)?),
        name: r.text(2)?,
        spec: r.json(3)?,
        secret: r.text(4)?,
        old_secret: r.opt_text(5)?,
        old_secret_until: r.opt_int(6)?,
        enabled: r.flag(7)?,
        disabled_reason: r.opt_text(8)?,
        verification_key: r.text(9)?,
        verified: r.flag(10)?,
        next_allowed_at: r.int(11)?,
        failing_since: r.opt_int(12)?,
        created_at: r.int(13)?,
        updated_at: r.int(14)?,
        event_types: r.opt_text(15)?.map(|t| event_list(&t)).transpose()?,
        inline: r.flag(16)?,
    })
}

fn events_text(events: &[String]) -> String {
    Value::from(events.to_vec()).to_string()
}

fn event_list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Internal(format!("a subscription's event types do not parse: {e}"))
    })
}

/// The events subscriptions can ask for (WH-13).
pub const EVENT_TYPES: &[&str] = &[
    "flow.goal_reached",
    "flow.completed",
    "flow.exited",
    "webhook.disabled",
    "contact.unsubscribed",
    "contact.spam_complaint",
    "contact.bounced",
];

/// Every subscription, with its workspace and event types (read once per
/// batch that has events to give out).
pub fn subscriptions_stmt() -> Stmt {
    Stmt::new(
        "SELECT id, workspace_id, event_types FROM webhooks WHERE event_types IS NOT NULL",
        vec![],
    )
}

/// The subscriptions of `ws` that want `event`, from rows of
/// [`subscriptions_stmt`].
pub fn wanting(rows: &[super::sql::Row], ws: &WorkspaceId, event: &str) -> Result<Vec<WebhookId>> {
    let mut out = Vec::new();
    for r in rows {
        if r.text(1)? == ws.as_str() && event_list(&r.text(2)?)?.iter().any(|e| e == event) {
            out.push(WebhookId::from_trusted(r.text(0)?));
        }
    }
    Ok(out)
}

/// The delivery of an event to a subscription: its body is `[payload]`.
pub fn event_delivery(
    sub: &WebhookId,
    ws: &WorkspaceId,
    event: &str,
    payload: &Value,
    run: Option<&str>,
    contact: Option<&str>,
) -> NewDelivery {
    NewDelivery {
        id: DeliveryId::generate(),
        workspace_id: ws.clone(),
        webhook_id: sub.clone(),
        event_type: event.to_owned(),
        flow_id: None,
        run_id: run.map(str::to_owned),
        contact_id: contact.map(str::to_owned),
        step: None,
        context: serde_json::json!({ "payload": payload }),
    }
}

fn one<T>(
    done: Vec<Done>,
    at: usize,
    f: impl Fn(&[crate::store::sql::Val]) -> Result<T>,
) -> Result<T> {
    done.get(at)
        .and_then(|d| d.rows.first())
        .ok_or_else(|| StoreError::Internal("a statement returned no row".into()))
        .and_then(|r| f(r))
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

/// A verification key (WH-8): 24 random letters and digits.
fn verification_key() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// A new webhook's stored parts; its signing secret (`whsec_…`) and its
/// verification key are made here, for every kind of webhook alike.
pub struct NewWebhook<'a> {
    pub name: &'a str,
    /// Deliveries in progress at once to it, across processes.
    pub max_concurrency: u16,
    pub spec: &'a Value,
    /// False when the verification throttle applies until the receiver
    /// answers with the key.
    pub verified: bool,
    /// Some: a subscription (its id is `sub_…`).
    pub event_types: Option<&'a [String]>,
    /// A step's inline webhook (see [`WebhookRecord::inline`]).
    pub inline: bool,
}

pub async fn create_webhook(
    store: &dyn Store,
    ws: &WorkspaceId,
    new: NewWebhook<'_>,
    now: Millis,
) -> Result<WebhookRecord> {
    let secret = crate::domain::signature::SigningSecret::generate();
    let id = match new.event_types {
        Some(_) => WebhookId::from_trusted(crate::domain::SubscriptionId::generate().to_string()),
        None => WebhookId::generate(),
    };
    let done = store
        .run_sql(vec![Stmt::new(
            concat!(
                "INSERT INTO webhooks (id, workspace_id, name, spec, secret, verification_key, verified, max_concurrency,
                   created_at, updated_at, event_types, inline)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $8, $8, $10, $11) RETURNING ",
                webhook_cols!("")
            ),
            vec![
                id.as_str().into(),
                ws.as_str().into(),
                new.name.into(),
                json_text(new.spec).into(),
                secret.as_str().into(),
                verification_key().into(),
                new.verified.into(),
                now.into(),
                i64::from(new.max_concurrency).into(),
                new.event_types
                    .map(events_text)
                    .into(),
                new.inline.into(),
            ],
        )])
        .await?;
    one(done, 0, webhook)
}

pub async fn get_webhook(
    store: &dyn Store,
    ws: &WorkspaceId,
    id: &WebhookId,
) -> Result<WebhookRecord> {
    let done = store
        .read_sql(vec![
            Stmt::new(
                concat!(
                    "SELECT ",
                    webhook_cols!(""),
                    " FROM webhooks WHERE workspace_id = $1 AND id = $2"
                ),
                vec![ws.as_str().into(), id.as_str().into()],
            )
            .or_not_found("webhook", id),
        ])
        .await?;
    one(done, 0, webhook)
}

/// Webhooks (`subscriptions` false) or subscriptions, by id.
pub async fn list_webhooks(
    store: &dyn Store,
    ws: &WorkspaceId,
    page: &PageRequest,
    subscriptions: bool,
) -> Result<Page<WebhookRecord>> {
    let sql = if subscriptions {
        concat!(
            "SELECT ",
            webhook_cols!(""),
            " FROM webhooks WHERE workspace_id = $1 AND id > $2 AND event_types IS NOT NULL ORDER BY id LIMIT $3"
        )
    } else {
        concat!(
            "SELECT ",
            webhook_cols!(""),
            " FROM webhooks WHERE workspace_id = $1 AND id > $2 AND event_types IS NULL ORDER BY id LIMIT $3"
        )
    };
    let done = store
        .read_sql(vec![Stmt::new(
            sql,
            vec![
                ws.as_str().into(),
                page.after_id().into(),
                i64::from(page.limit + 1).into(),
            ],
        )])
        .await?;
    let rows = rows(&done, 0, webhook)?;
    Ok(Page::from_overfetch(rows, page.limit, |w| w.id.as_str()))
}

fn rows<T>(
    done: &[Done],
    at: usize,
    f: impl Fn(&[crate::store::sql::Val]) -> Result<T>,
) -> Result<Vec<T>> {
    done.get(at)
        .map(|d| d.rows.iter().map(|r| f(r)).collect())
        .unwrap_or_else(|| Ok(Vec::new()))
}

/// What an update replaces.
pub struct WebhookUpdate<'a> {
    pub name: &'a str,
    pub spec: &'a Value,
    pub max_concurrency: u16,
    /// Some: a subscription's new event types.
    pub event_types: Option<&'a [String]>,
}

/// Replaces the name and configuration (queued deliveries take the new
/// concurrency limit too).
pub async fn update_webhook(
    store: &dyn Store,
    ws: &WorkspaceId,
    id: &WebhookId,
    u: WebhookUpdate<'_>,
    now: Millis,
) -> Result<WebhookRecord> {
    let done = store
        .run_sql(vec![
            Stmt::new(
                concat!(
                    "UPDATE webhooks SET name = $3, spec = $4, max_concurrency = $6, updated_at = $5,
                       event_types = COALESCE($7, event_types)
                     WHERE workspace_id = $1 AND id = $2 RETURNING ",
                    webhook_cols!("")
                ),
                vec![
                    ws.as_str().into(),
                    id.as_str().into(),
                    u.name.into(),
                    json_text(u.spec).into(),
                    now.into(),
                    i64::from(u.max_concurrency).into(),
                    u.event_types
                        .map(events_text)
                        .into(),
                ],
            )
            .or_not_found("webhook", id),
            Stmt::new(
                "UPDATE jobs SET key_limit = $2 WHERE kind = 'webhook_delivery' AND key = $1 AND status = 'queued'",
                vec![id.as_str().into(), i64::from(u.max_concurrency).into()],
            ),
        ])
        .await?;
    one(done, 0, webhook)
}

/// Deletes the webhook, its deliveries and their queued jobs.
pub async fn delete_webhook(store: &dyn Store, ws: &WorkspaceId, id: &WebhookId) -> Result<()> {
    store
        .run_sql(vec![
            Stmt::new(
                "DELETE FROM jobs WHERE kind = 'webhook_delivery' AND key = $2
                   AND EXISTS (SELECT 1 FROM webhooks WHERE workspace_id = $1 AND id = $2)",
                vec![ws.as_str().into(), id.as_str().into()],
            ),
            Stmt::new(
                "DELETE FROM webhooks WHERE workspace_id = $1 AND id = $2",
                vec![ws.as_str().into(), id.as_str().into()],
            )
            .or_not_found("webhook", id),
        ])
        .await?;
    Ok(())
}

/// Queues a job, due at `$now`, for each delivery `$deliveries` selects
/// (`id, webhook_id, workspace_id`): a finished delivery has no job left
/// (its outcome is on the delivery) and gets a new one; a queued one
/// (waiting for a retry or the throttle) is made due, unless an attempt
/// holds its lease.
macro_rules! requeue_jobs {
    ($now:literal, $deliveries:expr) => {
        concat!(
            "INSERT INTO jobs (id, kind, key, workspace_id, payload, status, due_at, key_limit, created_at, updated_at)
             SELECT d.id, 'webhook_delivery', d.webhook_id, d.workspace_id, '{}', 'queued', ",
            $now,
            ", w.max_concurrency, ",
            $now,
            ", ",
            $now,
            " FROM (",
            $deliveries,
            ") d JOIN webhooks w ON w.id = d.webhook_id WHERE true
             ON CONFLICT (id) DO UPDATE SET status = 'queued', due_at = excluded.due_at, finished_at = NULL,
               updated_at = excluded.updated_at
             WHERE jobs.lease_until IS NULL OR jobs.lease_until <= excluded.due_at"
        )
    };
}

/// Enables or disables a webhook. Enabling puts every delivery that was
/// held while it was disabled back in the queue, due now, in order.
pub async fn set_enabled(
    store: &dyn Store,
    ws: &WorkspaceId,
    id: &WebhookId,
    enabled: bool,
    reason: Option<&str>,
    now: Millis,
) -> Result<WebhookRecord> {
    let mut script = vec![
        Stmt::new(
            concat!(
                "UPDATE webhooks SET enabled = $3, disabled_reason = $4, updated_at = $5,
                   failing_since = CASE WHEN $3 = 1 THEN NULL ELSE failing_since END
                 WHERE workspace_id = $1 AND id = $2 RETURNING ",
                webhook_cols!("")
            ),
            vec![
                ws.as_str().into(),
                id.as_str().into(),
                enabled.into(),
                reason.into(),
                now.into(),
            ],
        )
        .or_not_found("webhook", id),
    ];
    if enabled {
        script.push(requeue(
            requeue_jobs!(
                "$2",
                "SELECT id, webhook_id, workspace_id FROM deliveries WHERE webhook_id = $1 AND status = 'disabled'"
            ),
            id.as_str(),
            now,
        ));
        script.push(requeue(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2
             WHERE webhook_id = $1 AND status = 'disabled'",
            id.as_str(),
            now,
        ));
    }
    let done = store.run_sql(script).await?;
    one(done, 0, webhook)
}

fn requeue(sql: &'static str, id: &str, now: Millis) -> Stmt {
    Stmt::new(sql, vec![id.into(), now.into()])
}

/// A new signing secret; the old one goes on signing until `old_until`
/// (receivers switch without losing a message).
pub async fn rotate_secret(
    store: &dyn Store,
    ws: &WorkspaceId,
    id: &WebhookId,
    secret: &str,
    old_until: Millis,
    now: Millis,
) -> Result<WebhookRecord> {
    let done = store
        .run_sql(vec![
            Stmt::new(
                concat!(
                    "UPDATE webhooks SET old_secret = secret, old_secret_until = $4, secret = $3, updated_at = $5
                     WHERE workspace_id = $1 AND id = $2 RETURNING ",
                    webhook_cols!("")
                ),
                vec![
                    ws.as_str().into(),
                    id.as_str().into(),
                    secret.into(),
                    old_until.into(),
                    now.into(),
                ],
            )
            .or_not_found("webhook", id),
        ])
        .await?;
    one(done, 0, webhook)
}

// ---- deliveries ----------------------------------------------------------------------

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Queued: not yet sent, or waiting for its next retry.
    Pending,
    Succeeded,
    /// No more attempts (a final answer, or every retry spent).
    Failed,
    /// Held by the verification throttle or the rate limit; goes out when
    /// they allow.
    Throttled,
    /// Held while its webhook is disabled; goes out when it is enabled.
    Disabled,
    /// Pending, with an attempt in progress (its job is leased): never
    /// stored, seen when read.
    Delivering,
}

crate::stored_enum!(DeliveryStatus, "delivery status", {
    Pending => "pending",
    Succeeded => "succeeded",
    Failed => "failed",
    Throttled => "throttled",
    Disabled => "disabled",
    Delivering => "delivering",
});

/// A delivery to write in the transaction of its cause.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub workspace_id: WorkspaceId,
    pub webhook_id: WebhookId,
    /// `flow.step` for a `send_webhook` step.
    pub event_type: String,
    pub flow_id: Option<String>,
    pub run_id: Option<String>,
    pub contact_id: Option<String>,
    pub step: Option<String>,
    /// What the body is rendered from: `contact`, `event` (the template
    /// variables that are data, not time).
    pub context: Value,
}

/// The statements that store a delivery and queue its job, due now. The
/// first changes no row when the webhook does not exist in the workspace.
pub fn insert_delivery(d: &NewDelivery, now: Millis) -> [Stmt; 2] {
    [
        Stmt::new(
            "INSERT INTO deliveries (id, workspace_id, webhook_id, event_type, flow_id, flow_name, run_id,
               contact_id, step, context, status, next_attempt_at, created_at, updated_at)
             SELECT $1, $2, w.id, $4, COALESCE($5, r.flow_id), f.name, $6, $7, $8, $9, 'pending', $10, $10, $10
             FROM webhooks w
             LEFT JOIN runs r ON r.id = $6
             LEFT JOIN flows f ON f.id = COALESCE($5, r.flow_id)
             WHERE w.workspace_id = $2 AND w.id = $3",
            vec![
                d.id.as_str().into(),
                d.workspace_id.as_str().into(),
                d.webhook_id.as_str().into(),
                d.event_type.as_str().into(),
                d.flow_id.clone().into(),
                d.run_id.clone().into(),
                d.contact_id.clone().into(),
                d.step.clone().into(),
                json_text(&d.context).into(),
                now.into(),
            ],
        )
        .or_not_found("webhook", &d.webhook_id),
        Stmt::new(
            "INSERT INTO jobs (id, kind, key, workspace_id, payload, status, due_at, key_limit, created_at, updated_at)
             SELECT $1, 'webhook_delivery', w.id, $3, '{}', 'queued', $4, w.max_concurrency, $4, $4
             FROM webhooks w WHERE w.id = $2",
            vec![
                d.id.as_str().into(),
                d.webhook_id.as_str().into(),
                d.workspace_id.as_str().into(),
                now.into(),
            ],
        ),
    ]
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub workspace_id: WorkspaceId,
    pub webhook_id: WebhookId,
    pub event_type: String,
    pub flow_id: Option<String>,
    pub flow_name: Option<String>,
    pub run_id: Option<String>,
    pub contact_id: Option<String>,
    pub step: Option<String>,
    pub context: Value,
    pub status: DeliveryStatus,
    /// Attempts made toward the current retry budget.
    pub attempts: i64,
    pub next_attempt_at: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

macro_rules! delivery_cols {
    ($p:literal) => {
        crate::prefixed!($p;
            "id", "workspace_id", "webhook_id", "event_type", "flow_id", "flow_name", "run_id",
            "contact_id", "step", "context", "status", "attempts", "next_attempt_at",
            "last_error", "created_at", "updated_at"
        )
    };
}

fn delivery(r: &[crate::store::sql::Val]) -> Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: DeliveryId::from_trusted(r.text(0)?),
        workspace_id: WorkspaceId::from_trusted(r.text(1)?),
        webhook_id: WebhookId::from_trusted(r.text(2)?),
        event_type: r.text(3)?,
        flow_id: r.opt_text(4)?,
        flow_name: r.opt_text(5)?,
        run_id: r.opt_text(6)?,
        contact_id: r.opt_text(7)?,
        step: r.opt_text(8)?,
        context: r.json(9)?,
        status: DeliveryStatus::decode(r.str_at(10)?)?,
        attempts: r.int(11)?,
        next_attempt_at: r.opt_int(12)?,
        last_error: r.opt_text(13)?,
        created_at: r.int(14)?,
        updated_at: r.int(15)?,
    })
}

/// A delivery as shown: its columns, then its seen status.
fn seen_delivery(r: &[crate::store::sql::Val]) -> Result<DeliveryRecord> {
    let mut d = delivery(r)?;
    d.status = DeliveryStatus::decode(r.str_at(16)?)?;
    Ok(d)
}

/// What deliveries to list (every field narrows).
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    pub webhook_id: Option<WebhookId>,
    pub flow_id: Option<String>,
    pub run_id: Option<String>,
    pub contact_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    /// Created at or after.
    pub since: Option<Millis>,
    /// Created before.
    pub until: Option<Millis>,
}

/// The filter's arguments, `$1` … `$9` (`now`, which tells an attempt in
/// progress).
fn filter_args(ws: &WorkspaceId, f: &DeliveryFilter, now: Millis) -> Vec<Arg> {
    vec![
        ws.as_str().into(),
        f.webhook_id.as_ref().map(|w| w.as_str()).into(),
        f.flow_id.clone().into(),
        f.run_id.clone().into(),
        f.contact_id.clone().into(),
        f.status.map(|s| s.as_str()).into(),
        f.since.into(),
        f.until.into(),
        now.into(),
    ]
}

macro_rules! delivery_filter {
    () => {
        concat!(
            "workspace_id = $1 AND ($2 IS NULL OR webhook_id = $2) AND ($3 IS NULL OR flow_id = $3)
             AND ($4 IS NULL OR run_id = $4) AND ($5 IS NULL OR contact_id = $5)
             AND ($6 IS NULL OR ",
            seen_status!("$9"),
            " = $6) AND ($7 IS NULL OR created_at >= $7) AND ($8 IS NULL OR created_at < $8)"
        )
    };
}

/// A delivery's status as shown (`$now` names the parameter holding now):
/// `delivering` while a pending one's job is leased.
macro_rules! seen_status {
    ($now:literal) => {
        concat!(
            "(CASE WHEN status = 'pending' AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = deliveries.id
            AND j.lease_until > ",
            $now,
            ") THEN 'delivering' ELSE status END)"
        )
    };
}

/// Deliveries, newest first.
pub async fn list_deliveries(
    store: &dyn Store,
    ws: &WorkspaceId,
    filter: &DeliveryFilter,
    page: &PageRequest,
    now: Millis,
) -> Result<Page<DeliveryRecord>> {
    let mut args = filter_args(ws, filter, now);
    args.push(page.after.as_ref().map(|c| c.last_id()).into());
    args.push(i64::from(page.limit + 1).into());
    let done = store
        .read_sql(vec![Stmt::new(
            concat!(
                "SELECT ",
                delivery_cols!(""),
                ", ",
                seen_status!("$9"),
                " FROM deliveries WHERE ",
                delivery_filter!(),
                " AND ($10 IS NULL OR id < $10) ORDER BY id DESC LIMIT $11"
            ),
            args,
        )])
        .await?;
    let rows = rows(&done, 0, seen_delivery)?;
    Ok(Page::from_overfetch(rows, page.limit, |d| d.id.as_str()))
}

/// One attempt as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub started_at: Millis,
    /// The request as sent (method, url, headers with secrets masked, body).
    pub request: Value,
    pub response_status: Option<i64>,
    pub response_headers: Option<Value>,
    pub response_body: Option<Vec<u8>>,
    pub truncated: bool,
    pub duration_ms: i64,
    pub error: Option<String>,
    /// `succeeded`, `retry` or `failed`.
    pub outcome: String,
}

fn attempt(r: &[crate::store::sql::Val]) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        id: AttemptId::from_trusted(r.text(0)?),
        started_at: r.int(1)?,
        request: r.json(2)?,
        response_status: r.opt_int(3)?,
        response_headers: r
            .opt_text(4)?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| {
                StoreError::Internal(format!("stored response headers do not parse: {e}"))
            })?,
        response_body: r.opt_bytes(5)?,
        truncated: r.flag(6)?,
        duration_ms: r.int(7)?,
        error: r.opt_text(8)?,
        outcome: r.text(9)?,
    })
}

/// A delivery with every attempt, oldest first.
pub async fn get_delivery(
    store: &dyn Store,
    ws: &WorkspaceId,
    id: &DeliveryId,
    now: Millis,
) -> Result<(DeliveryRecord, Vec<AttemptRecord>)> {
    let done = store
        .read_sql(vec![
            Stmt::new(
                concat!(
                    "SELECT ",
                    delivery_cols!(""),
                    ", ",
                    seen_status!("$3"),
                    " FROM deliveries WHERE workspace_id = $1 AND id = $2"
                ),
                vec![ws.as_str().into(), id.as_str().into(), now.into()],
            )
            .or_not_found("delivery", id),
            Stmt::new(
                "SELECT id, started_at, request, response_status, response_headers, response_body, truncated,
                   duration_ms, error, outcome
                 FROM delivery_attempts WHERE workspace_id = $1 AND delivery_id = $2 ORDER BY id",
                vec![ws.as_str().into(), id.as_str().into()],
            ),
        ])
        .await?;
    let attempts = rows(&done, 1, attempt)?;
    Ok((one(done, 0, seen_delivery)?, attempts))
}

/// Sends deliveries again, now, under their own ids, with a fresh retry
/// budget: one by id, or every one a filter finds. A delivery whose
/// attempt is in flight is left to it. Returns the ids queued again.
pub async fn resend(
    store: &dyn Store,
    ws: &WorkspaceId,
    filter: &DeliveryFilter,
    only: Option<&DeliveryId>,
    now: Millis,
) -> Result<Vec<DeliveryId>> {
    let mut args = filter_args(ws, filter, now);
    args.push(only.map(|d| d.as_str()).into());
    let jobs = Stmt::new(
        requeue_jobs!(
            "$9",
            concat!(
                "SELECT id, webhook_id, workspace_id FROM deliveries WHERE ",
                delivery_filter!(),
                " AND ($10 IS NULL OR id = $10)"
            )
        ),
        args.clone(),
    );
    let deliveries = Stmt::new(
        concat!(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $9, updated_at = $9
             WHERE ",
            delivery_filter!(),
            " AND ($10 IS NULL OR id = $10)
               AND id IN (SELECT id FROM jobs WHERE kind = 'webhook_delivery' AND due_at = $9 AND status = 'queued')
             RETURNING id"
        ),
        args,
    );
    let mut script = Vec::new();
    if let Some(id) = only {
        script.push(
            Stmt::new(
                "SELECT id FROM deliveries WHERE workspace_id = $1 AND id = $2",
                vec![ws.as_str().into(), id.as_str().into()],
            )
            .or_not_found("delivery", id),
        );
    }
    script.push(jobs);
    script.push(deliveries);
    let at = script.len() - 1;
    let done = store.run_sql(script).await?;
    rows(&done, at, |r| Ok(DeliveryId::from_trusted(r.text(0)?)))
}

// ---- the delivery worker's statements ------------------------------------------------

/// Claimed deliveries with their webhooks, in one read (a delivery that
/// is gone, deleted with its webhook, is left out). Each webhook is read
/// and parsed once, however many of the deliveries go to it. `webhooks`
/// are the jobs' keys, which are the deliveries' webhooks: they are read
/// by id beside the deliveries (a few probes, not a second lookup of every
/// delivery); a webhook missing from them is read after.
pub async fn load_many(
    store: &dyn Store,
    ids: &[DeliveryId],
    webhooks: &[WebhookId],
) -> Result<std::collections::HashMap<DeliveryId, (DeliveryRecord, std::sync::Arc<WebhookRecord>)>>
{
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let mut hook_ids: Vec<&WebhookId> = webhooks.iter().collect();
    hook_ids.sort();
    hook_ids.dedup();
    let done = store
        .read_sql(vec![
            padded_in(
                concat!(
                    "SELECT ",
                    delivery_cols!(""),
                    " FROM deliveries WHERE id IN ("
                ),
                ids.iter().map(DeliveryId::as_str),
            ),
            padded_in(
                concat!("SELECT ", webhook_cols!(""), " FROM webhooks WHERE id IN ("),
                hook_ids.iter().map(|w| w.as_str()),
            ),
        ])
        .await?;
    let mut hooks: std::collections::HashMap<WebhookId, std::sync::Arc<WebhookRecord>> =
        rows(&done, 1, webhook)?
            .into_iter()
            .map(|w| (w.id.clone(), std::sync::Arc::new(w)))
            .collect();
    let found = rows(&done, 0, delivery)?;
    let mut missing: Vec<&str> = found
        .iter()
        .filter(|d| !hooks.contains_key(&d.webhook_id))
        .map(|d| d.webhook_id.as_str())
        .collect();
    if !missing.is_empty() {
        missing.sort_unstable();
        missing.dedup();
        let more = store
            .read_sql(vec![padded_in(
                concat!("SELECT ", webhook_cols!(""), " FROM webhooks WHERE id IN ("),
                missing.into_iter(),
            )])
            .await?;
        for w in rows(&more, 0, webhook)? {
            hooks.insert(w.id.clone(), std::sync::Arc::new(w));
        }
    }
    let mut out = std::collections::HashMap::with_capacity(found.len());
    for d in found {
        if let Some(w) = hooks.get(&d.webhook_id) {
            out.insert(d.id.clone(), (d, w.clone()));
        }
    }
    Ok(out)
}

/// `head` followed by a parameter list of `values` and `)`, the list
/// padded to a power of two (the last value repeated): a handful of
/// statement texts, so each connection's statement cache keeps them.
fn padded_in<'a>(head: &str, values: impl Iterator<Item = &'a str>) -> Stmt {
    let mut args: Vec<Arg> = values.map(Arg::from).collect();
    // `IN (NULL)` matches nothing.
    let last = args.last().cloned().unwrap_or(Arg::Text(None));
    args.resize(args.len().max(1).next_power_of_two(), last);
    Stmt::new(
        format!("{head}{})", super::sql::params(1, args.len())),
        args,
    )
}

/// Takes the webhook's next send slot if it is free at `now` (moving it to
/// `next`); else the time it frees. Atomic across processes: one statement.
pub async fn take_slot(
    store: &dyn Store,
    webhook: &WebhookId,
    now: Millis,
    next: Millis,
) -> Result<std::result::Result<(), Millis>> {
    let done = store
        .run_sql(vec![
            Stmt::new(
                "UPDATE webhooks SET next_allowed_at = $3 WHERE id = $1 AND next_allowed_at <= $2 RETURNING id",
                vec![webhook.as_str().into(), now.into(), next.into()],
            ),
            Stmt::new(
                "SELECT next_allowed_at FROM webhooks WHERE id = $1",
                vec![webhook.as_str().into()],
            ),
        ])
        .await?;
    if done.first().is_some_and(|d| !d.rows.is_empty()) {
        return Ok(Ok(()));
    }
    Ok(Err(one(done, 1, |r| r.int(0))?))
}

/// What an attempt (or a decision not to attempt) writes.
pub struct AttemptWrite {
    pub delivery: DeliveryId,
    pub workspace_id: WorkspaceId,
    pub webhook: WebhookId,
    /// None when no request was made (held by the throttle or a disabled
    /// webhook).
    pub attempt: Option<NewAttempt>,
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<Millis>,
    pub error: Option<String>,
    /// Webhook changes: a success (clears `failing_since`), a failure
    /// (sets it if unset), verification, disabling.
    pub webhook_change: Option<WebhookChange>,
    pub job: JobOutcome,
    /// More statements for the same transaction (the deliveries of a
    /// `webhook.disabled` event).
    pub also: Vec<Stmt>,
    /// The run waiting for this delivery's outcome (`wait_for_result`):
    /// its id, the event it waits for and the outcome to resume it with.
    pub resume: Option<(String, String, Value)>,
}

pub struct NewAttempt {
    pub started_at: Millis,
    /// JSON text (written as it is).
    pub request: String,
    pub response_status: Option<i64>,
    /// JSON text.
    pub response_headers: Option<String>,
    pub response_body: Option<Vec<u8>>,
    pub truncated: bool,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WebhookChange {
    pub succeeded: bool,
    pub verified: bool,
    pub disable: Option<String>,
}

/// Records an attempt's outcome, only if `owner` still holds the job's
/// lease at `now`: the job is finished, the attempt inserted and the
/// delivery and webhook updated in one transaction; false (nothing
/// written) if the lease was lost.
pub async fn record_attempt(
    store: &dyn Store,
    w: AttemptWrite,
    owner: &str,
    now: Millis,
) -> Result<bool> {
    let finish = match &w.job {
        // The delivery keeps the outcome; a finished job is only weight on
        // the queue's table and indexes (a resend queues a new one).
        JobOutcome::Done | JobOutcome::Failed { .. } => Stmt::new(
            "DELETE FROM jobs WHERE id = $1 AND lease_owner = $2 AND lease_until > $3 AND status = 'queued'",
            vec![w.delivery.as_str().into(), owner.into(), now.into()],
        ),
        JobOutcome::Retry { .. } => {
            let (status, due_at, error, finished) = finish_columns(&w.job, now);
            Stmt::new(
                "UPDATE jobs SET status = $4, due_at = COALESCE($5, due_at), last_error = COALESCE($6, last_error),
                   finished_at = $7, lease_owner = NULL, lease_until = NULL, updated_at = $3
                 WHERE id = $1 AND lease_owner = $2 AND lease_until > $3 AND status = 'queued'",
                vec![
                    w.delivery.as_str().into(),
                    owner.into(),
                    now.into(),
                    status.as_str().into(),
                    due_at.into(),
                    error.into(),
                    finished.into(),
                ],
            )
        }
    };
    let mut script = vec![finish.or_not_found("lease of job", &w.delivery)];
    let counted = w.attempt.is_some();
    if let Some(a) = &w.attempt {
        script.push(Stmt::new(
            "INSERT INTO delivery_attempts (id, delivery_id, workspace_id, started_at, request, response_status,
               response_headers, response_body, truncated, duration_ms, error, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            attempt_args(&w, a).to_vec(),
        ));
    }
    script.push(Stmt::new(
        "UPDATE deliveries SET status = $2, attempts = attempts + $3, next_attempt_at = $4,
           last_error = COALESCE($5, last_error), updated_at = $6
         WHERE id = $1",
        vec![
            w.delivery.as_str().into(),
            w.status.as_str().into(),
            i64::from(counted).into(),
            w.next_attempt_at.into(),
            w.error.into(),
            now.into(),
        ],
    ));
    if let Some(c) = w.webhook_change {
        if c.verified {
            // Verified: what the throttle held goes out now, in order.
            script.push(requeue(
                "UPDATE jobs SET due_at = $2, updated_at = $2
                 WHERE kind = 'webhook_delivery' AND key = $1 AND status = 'queued' AND due_at > $2
                   AND (lease_until IS NULL OR lease_until <= $2)",
                w.webhook.as_str(),
                now,
            ));
            script.push(requeue(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, updated_at = $2
                 WHERE webhook_id = $1 AND status = 'throttled'",
                w.webhook.as_str(),
                now,
            ));
        }
        script.push(Stmt::new(
            "UPDATE webhooks SET
               failing_since = CASE WHEN $2 = 1 THEN NULL ELSE COALESCE(failing_since, $5) END,
               verified = CASE WHEN $3 = 1 THEN 1 ELSE verified END,
               next_allowed_at = CASE WHEN $3 = 1 THEN 0 ELSE next_allowed_at END,
               enabled = CASE WHEN $4 IS NULL THEN enabled ELSE 0 END,
               disabled_reason = COALESCE($4, disabled_reason),
               updated_at = $5
             WHERE id = $1",
            vec![
                w.webhook.as_str().into(),
                c.succeeded.into(),
                c.verified.into(),
                c.disable.into(),
                now.into(),
            ],
        ));
    }
    script.extend(w.also);
    if let Some((run, event, payload)) = w.resume {
        script.push(Stmt::new(
            concat!(
                "UPDATE runs SET resume_event = $3, due_at = ",
                crate::woken_due!("$4"),
                " WHERE id = $1 AND status = 'waiting' AND wait_event = $2 AND resume_event IS NULL"
            ),
            vec![run.into(), event.into(), Arg::from(&payload), now.into()],
        ));
    }
    match store.run_sql(script).await {
        Ok(_) => Ok(true),
        Err(StoreError::NotFound {
            kind: "lease of job",
            ..
        }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The twelve values of an attempt row, in the columns' order.
fn attempt_args(w: &AttemptWrite, a: &NewAttempt) -> [Arg; 12] {
    [
        AttemptId::generate().as_str().into(),
        w.delivery.as_str().into(),
        w.workspace_id.as_str().into(),
        a.started_at.into(),
        a.request.as_str().into(),
        a.response_status.into(),
        a.response_headers.as_deref().into(),
        a.response_body.clone().into(),
        a.truncated.into(),
        a.duration_ms.into(),
        a.error.clone().into(),
        a.outcome.into(),
    ]
}

/// Whether [`record_delivered`] can take `w` with others: a delivered
/// attempt that changes nothing but its job, attempt and delivery.
pub fn plain_success(w: &AttemptWrite) -> bool {
    matches!(w.job, JobOutcome::Done)
        && w.status == DeliveryStatus::Succeeded
        && w.attempt.is_some()
        && w.error.is_none()
        && w.next_attempt_at.is_none()
        && w.webhook_change.is_none()
        && w.also.is_empty()
        && w.resume.is_none()
}

/// The most deliveries one set of [`record_delivered`] statements takes.
const RECORD_CHUNK: usize = 64;
/// Statements per chunk of [`record_delivered_script`]: the jobs' `DELETE …
/// RETURNING` (read by [`delivered_held`]), the attempts' insert, the
/// deliveries' update.
const RECORD_STMTS: usize = 3;

/// Records many [`plain_success`] writes in one transaction with three
/// statements per chunk instead of three per delivery: the jobs whose lease
/// `owner` still holds at `now` are deleted, and then, only where the job is
/// gone, the attempt is inserted and the delivery marked succeeded. Chunks
/// are powers of two, so a few statement texts serve every batch size.
/// Returns, for each write in order, whether its lease was still held
/// (nothing is written for one that was not), as [`record_attempt`] does.
/// "The job is gone" alone does not say the lease was held: a delivery
/// deleted with its webhook meanwhile, or one another worker finished after
/// taking over a lost lease, has no job either. So the attempt and the
/// update also need the delivery still there and not finished: one such
/// write must neither fail the whole batch (the attempt's foreign key) nor
/// record a second outcome.
pub async fn record_delivered(
    store: &dyn Store,
    writes: &[AttemptWrite],
    owner: &str,
    now: Millis,
) -> Result<Vec<bool>> {
    let done = store
        .run_sql(record_delivered_script(writes, owner, now)?)
        .await?;
    delivered_held(writes, &done)
}

/// [`record_delivered`]'s statements, to run on their own or ahead of a
/// claim (`Store::run_sql_then_claim`); [`delivered_held`] reads their
/// results.
pub fn record_delivered_script(
    writes: &[AttemptWrite],
    owner: &str,
    now: Millis,
) -> Result<Vec<Stmt>> {
    let mut script = Vec::new();
    for chunk in super::sql::pow2_chunks(writes, RECORD_CHUNK) {
        let n = chunk.len();
        let ids: Vec<Arg> = chunk.iter().map(|w| w.delivery.as_str().into()).collect();
        let mut args = vec![owner.into(), now.into()];
        args.extend(ids.iter().cloned());
        script.push(Stmt::new(
            format!(
                "DELETE FROM jobs WHERE id IN ({}) AND lease_owner = $1 AND lease_until > $2
                   AND status = 'queued' RETURNING id",
                super::sql::params(3, n)
            ),
            args,
        ));
        let mut rows = Vec::with_capacity(n);
        let mut args = Vec::with_capacity(12 * n);
        for (i, w) in chunk.iter().enumerate() {
            let Some(a) = &w.attempt else {
                return Err(StoreError::Internal(
                    "a delivered write without its attempt".into(),
                ));
            };
            rows.push(format!("({})", super::sql::params(1 + 12 * i, 12)));
            args.extend(attempt_args(w, a));
        }
        // VALUES columns are column1, column2 … on both databases.
        script.push(Stmt::new(
            format!(
                "INSERT INTO delivery_attempts (id, delivery_id, workspace_id, started_at, request,
                   response_status, response_headers, response_body, truncated, duration_ms, error, outcome)
                 SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9,
                   column10, column11, column12
                 FROM (VALUES {}) v WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = v.column2)
                   AND EXISTS (SELECT 1 FROM deliveries d WHERE d.id = v.column2
                                 AND d.status NOT IN ('succeeded', 'failed'))",
                rows.join(", ")
            ),
            args,
        ));
        let mut args = vec![now.into()];
        args.extend(ids);
        script.push(Stmt::new(
            format!(
                "UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1, next_attempt_at = NULL,
                   updated_at = $1
                 WHERE id IN ({}) AND status NOT IN ('succeeded', 'failed')
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = deliveries.id)",
                super::sql::params(2, n)
            ),
            args,
        ));
    }
    Ok(script)
}

/// For each write of a [`record_delivered_script`], in order, whether its
/// lease was still held: its job is among those the script deleted. `done`
/// starts with the script's results (the chunks' DELETE … RETURNING come
/// first of every three).
pub fn delivered_held(writes: &[AttemptWrite], done: &[Done]) -> Result<Vec<bool>> {
    if !done.len().is_multiple_of(RECORD_STMTS) {
        return Err(StoreError::Internal(format!(
            "record_delivered: {} results for chunks of {RECORD_STMTS} statements",
            done.len()
        )));
    }
    let finished: std::collections::HashSet<String> = done
        .iter()
        .step_by(RECORD_STMTS)
        .flat_map(|d| d.rows.iter())
        .map(|r| r.text(0))
        .collect::<Result<_>>()?;
    Ok(writes
        .iter()
        .map(|w| finished.contains(w.delivery.as_str()))
        .collect())
}

/// Attempt rows (request and response bodies) older than `before`,
/// deleted in bounded batches; how many went.
pub async fn purge_attempts(store: &dyn Store, before: Millis, batch: i64) -> Result<u64> {
    let done = store
        .run_sql(vec![Stmt::new(
            "DELETE FROM delivery_attempts WHERE id IN (
               SELECT id FROM delivery_attempts WHERE started_at < $1 ORDER BY started_at LIMIT $2)",
            vec![before.into(), batch.into()],
        )])
        .await?;
    Ok(done.first().map_or(0, |d| d.changed))
}
