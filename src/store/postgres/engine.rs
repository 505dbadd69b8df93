//! SQL for the flow engine (PostgreSQL); the same operations, in the same
//! order, as `sqlite/engine.rs`, with the decisions shared through
//! `store::run` and `store::entry`. Claims use `FOR UPDATE SKIP LOCKED` so
//! several processes take disjoint batches.

use crate::domain::Stored;
use crate::store::logic;
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::{CONTACT_COLS, batch, contact_row, field_defs_for, internal};
use crate::domain::{ContactId, Email, FieldDef, FlowId, ListId, Millis, RunId, WorkspaceId};
use crate::store::{AdvanceOutcome, ClaimedRun, ContactRecord, Result, RunAdvance, RunStatus};

/// The statements `store::logic` needs, in the caller's transaction.
pub(crate) struct PgTx<'c> {
    pub(super) c: &'c mut PgConnection,
    /// History rows of a completion batch, written at its end.
    history: History,
    /// Run moves of a completion batch, written at its end (or before an
    /// effect on a contact they hold a run of: see `logic::complete_batch`).
    moves: Moves,
}

impl<'c> PgTx<'c> {
    pub(crate) fn new(c: &'c mut PgConnection) -> Self {
        Self {
            c,
            history: History::default(),
            moves: Moves::default(),
        }
    }
}

impl logic::Tx for PgTx<'_> {
    const ROW_LOCKS: bool = true;

    async fn exec(&mut self, stmt: &crate::store::sql::Stmt) -> Result<crate::store::sql::Done> {
        super::sql::exec(self.c, stmt).await
    }

    async fn wake_exits_and_find_triggers(
        &mut self,
        ws: &WorkspaceId,
        contact: &ContactId,
        now: Millis,
        ask: bool,
    ) -> Result<bool> {
        // The batch statement for one contact: one round trip for both,
        // and its plan (see `batch::wake_exits_each`).
        let woke = batch::wake_exits_each(self.c, &[(ws, contact, ask)], now).await?;
        Ok(woke.first().copied().unwrap_or(false))
    }

    async fn lock_email(&mut self, ws: &WorkspaceId, email: &crate::domain::Email) -> Result<()> {
        super::lock_email(self.c, ws, email).await
    }

    async fn field_defs(
        &mut self,
        ws: &WorkspaceId,
        contact: Option<&ContactId>,
        lists: &[ListId],
    ) -> Result<Vec<crate::domain::FieldDef>> {
        field_defs_for(self.c, ws, contact, lists).await
    }

    async fn lock_idempotency_key(
        &mut self,
        ws: &WorkspaceId,
        scope: &str,
        key: &str,
    ) -> Result<()> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
            .bind(super::idempotency_lock_key(ws, scope, key))
            .execute(&mut *self.c)
            .await
            .map_err(internal)?;
        Ok(())
    }

    type Prepared = ();

    // Statements over arrays of ids (here and in `claim`, `batch.rs`) are
    // prepared, their plans kept: see `batch.rs` on why that is safe only
    // with sequential and bitmap scans off.

    async fn lock_contacts(&mut self, ids: &[&str]) -> Result<()> {
        sqlx::query("SELECT id FROM contacts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .execute(&mut *self.c)
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn held_leases(
        &mut self,
        owner: &str,
        now: Millis,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE id = ANY($1) AND lease_owner = $2 AND lease_until > $3
             AND status IN ('active', 'waiting') ORDER BY id FOR UPDATE",
        )
        .bind(ids)
        .bind(owner)
        .bind(now)
        .fetch_all(&mut *self.c)
        .await
        .map_err(internal)?
        .into_iter()
        .collect())
    }

    async fn add_history(&mut self, adv: &RunAdvance, _: &()) -> Result<()> {
        self.history.push(adv);
        Ok(())
    }

    async fn move_run(&mut self, adv: &RunAdvance, now: Millis) -> Result<()> {
        self.moves.push(adv, now);
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        std::mem::take(&mut self.history).insert(self.c).await?;
        std::mem::take(&mut self.moves).write(self.c).await
    }

    async fn lock_emails(&mut self, keys: &[(&WorkspaceId, &Email)]) -> Result<()> {
        batch::lock_emails(self.c, keys).await
    }

    async fn contacts_by_emails(
        &mut self,
        keys: &[(&WorkspaceId, &Email)],
    ) -> Result<Vec<Option<ContactRecord>>> {
        batch::contacts_by_emails(self.c, keys).await
    }

    async fn contacts_for_update(
        &mut self,
        ids: &[(&WorkspaceId, &ContactId)],
    ) -> Result<Vec<Option<ContactRecord>>> {
        batch::contacts_for_update(self.c, ids).await
    }

    async fn field_defs_each(
        &mut self,
        items: &[(&WorkspaceId, Option<&ContactId>, &[ListId])],
    ) -> Result<Vec<Result<Vec<FieldDef>>>> {
        batch::field_defs_each(self.c, items).await
    }

    async fn write_contacts(&mut self, rows: &[(&WorkspaceId, &ContactRecord)]) -> Result<()> {
        batch::write_contacts(self.c, rows).await
    }

    async fn lock_lists(&mut self, lists: &[(&WorkspaceId, &ListId)]) -> Result<Vec<bool>> {
        batch::lock_lists(self.c, lists).await
    }

    async fn add_memberships(
        &mut self,
        rows: &[(&WorkspaceId, &ListId, &ContactId)],
        now: Millis,
    ) -> Result<Vec<bool>> {
        batch::add_memberships(self.c, rows, now).await
    }

    async fn wake_exits_each(
        &mut self,
        rows: &[(&WorkspaceId, &ContactId, bool)],
        now: Millis,
    ) -> Result<Vec<bool>> {
        batch::wake_exits_each(self.c, rows, now).await
    }

    async fn run_counts_each(
        &mut self,
        rows: &[(&FlowId, &ContactId)],
    ) -> Result<Vec<(bool, bool)>> {
        batch::run_counts_each(self.c, rows).await
    }

    async fn insert_runs(&mut self, runs: &[logic::NewRun<'_>]) -> Result<Vec<bool>> {
        batch::insert_runs(self.c, runs).await
    }
}

// ---- claiming and completing ----------------------------------------------------------

// A claim sets only the lease (see `sqlite::engine::CLAIM`): no indexed
// column changes, so the update is HOT where the page has room (migration
// 0011 leaves a quarter of each `runs` page free for it).

pub async fn claim(
    c: &mut PgConnection,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    limit: crate::store::ClaimLimit,
) -> Result<Vec<ClaimedRun>> {
    let rows = sqlx::query(
        "WITH candidates AS (
           SELECT r.id, r.due_at, r.event_bytes FROM runs r
           WHERE r.status IN ('active', 'waiting') AND r.due_at <= $3
             AND (r.lease_until IS NULL OR r.lease_until < $3)
             AND (SELECT f.status FROM flows f WHERE f.id = r.flow_id) = 'active'
           ORDER BY r.due_at LIMIT $4 FOR UPDATE OF r SKIP LOCKED),
         due AS (
           SELECT id FROM (
             SELECT id, SUM(event_bytes) OVER (ORDER BY due_at, id ROWS UNBOUNDED PRECEDING) - event_bytes AS before
             FROM candidates) sized
           WHERE before < $5)
         UPDATE runs SET lease_owner = $1, lease_until = $2 FROM due WHERE runs.id = due.id
         RETURNING runs.id, runs.workspace_id, runs.flow_id, runs.flow_version, runs.status, runs.step,
           runs.event_data, runs.wait_until, runs.resume_event, runs.step_count, runs.contact_id,
           runs.due_at",
    )
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(limit.runs as i64)
    .bind(limit.event_bytes_i64())
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("contact_id").map_err(internal))
        .collect::<Result<_>>()?;
    let contacts = sqlx::query(&format!(
        "SELECT {CONTACT_COLS} FROM contacts c WHERE c.id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    let mut by_id = std::collections::HashMap::new();
    for r in &contacts {
        let ct = contact_row(r)?;
        by_id.insert(ct.id.to_string(), ct);
    }
    // Two runs of one contact can be in the batch; the probe per contact
    // must see each contact once.
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let members = sqlx::query(
        // A probe per contact (LATERAL) rather than `= ANY($1)`, which the
        // planner turns into a read of the whole table while it has no
        // statistics (see `batch.rs`).
        "SELECT k.id AS contact_id, m.list_id FROM UNNEST($1::text[]) AS k(id)
         CROSS JOIN LATERAL (SELECT list_id FROM memberships
                             WHERE contact_id = k.id AND status = 'subscribed' OFFSET 0) m",
    )
    .bind(&distinct)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    let mut lists: std::collections::HashMap<String, Vec<ListId>> = Default::default();
    for r in &members {
        let ct: String = r.try_get("contact_id").map_err(internal)?;
        lists.entry(ct).or_default().push(ListId::from_trusted(
            r.try_get("list_id").map_err(internal)?,
        ));
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let contact_id: String = r.try_get("contact_id").map_err(internal)?;
        let Some(contact) = by_id.get(&contact_id).cloned() else {
            continue;
        };
        let status: String = r.try_get("status").map_err(internal)?;
        out.push(ClaimedRun {
            id: RunId::from_trusted(r.try_get("id").map_err(internal)?),
            workspace_id: WorkspaceId::from_trusted(r.try_get("workspace_id").map_err(internal)?),
            flow_id: FlowId::from_trusted(r.try_get("flow_id").map_err(internal)?),
            flow_version: i64::from(r.try_get::<i32, _>("flow_version").map_err(internal)?),
            status: RunStatus::decode(&status)?,
            step: r.try_get("step").map_err(internal)?,
            event_data: r.try_get("event_data").map_err(internal)?,
            wait_until: r.try_get("wait_until").map_err(internal)?,
            resume_event: r.try_get("resume_event").map_err(internal)?,
            step_count: r.try_get("step_count").map_err(internal)?,
            claimed_due: r.try_get("due_at").map_err(internal)?,
            // Two runs of one contact can be in one batch: each gets the lists.
            lists: lists.get(&contact_id).cloned().unwrap_or_default(),
            contact,
        });
    }
    Ok(out)
}

/// Stores a batch of advances in the caller's transaction
/// (`logic::complete_batch`): set-based where order cannot matter (contacts
/// locked in one statement, every lease checked in one, the history in one
/// `UNNEST` insert), effects and moves per run, in order.
pub async fn complete_batch(
    c: &mut PgConnection,
    owner: &str,
    now: Millis,
    advances: Vec<RunAdvance>,
) -> Result<Vec<AdvanceOutcome>> {
    let advances = advances.into_iter().map(|a| (a, ())).collect();
    logic::complete_batch(&mut PgTx::new(c), owner, now, advances).await
}

/// The step history of a batch, as columns for one `UNNEST` insert.
#[derive(Default)]
struct History {
    run_id: Vec<String>,
    seq: Vec<i64>,
    step: Vec<String>,
    kind: Vec<String>,
    at: Vec<Millis>,
    input: Vec<Value>,
    outcome: Vec<String>,
    detail: Vec<Value>,
    error: Vec<Option<String>>,
}

impl History {
    fn push(&mut self, adv: &RunAdvance) {
        for (i, h) in adv.history.iter().enumerate() {
            self.run_id.push(adv.run_id.to_string());
            self.seq.push(adv.first_seq + i as i64);
            self.step.push(h.step.clone());
            self.kind.push(h.kind.clone());
            self.at.push(h.at);
            self.input.push(h.input.clone());
            self.outcome.push(h.outcome.as_str().to_owned());
            self.detail.push(h.detail.clone());
            self.error.push(h.error.clone());
        }
    }

    async fn insert(self, c: &mut PgConnection) -> Result<()> {
        if self.run_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO run_steps (run_id, seq, step, type, at, input, outcome, detail, error)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                                  $6::jsonb[], $7::text[], $8::jsonb[], $9::text[])",
        )
        .bind(&self.run_id)
        .bind(&self.seq)
        .bind(&self.step)
        .bind(&self.kind)
        .bind(&self.at)
        .bind(&self.input)
        .bind(&self.outcome)
        .bind(&self.detail)
        .bind(&self.error)
        .execute(&mut *c)
        .await
        .map_err(internal)?;
        Ok(())
    }
}

/// The run moves of a batch, as columns for one `UPDATE … FROM UNNEST`:
/// each run goes to where its advance stopped and its lease is released.
/// A wait keeps a wake-up that came during the lease (`due_at` no longer
/// the value the claim returned) or an event that arrived for the step it
/// waits at.
#[derive(Default)]
struct Moves {
    id: Vec<String>,
    status: Vec<&'static str>,
    step: Vec<Option<String>>,
    due_at: Vec<Option<Millis>>,
    wait_until: Vec<Option<Millis>>,
    wait_event: Vec<Option<String>>,
    reason: Vec<Option<&'static str>>,
    finished_at: Vec<Option<Millis>>,
    step_count: Vec<i64>,
    consumed: Vec<bool>,
    event_data: Vec<Option<Value>>,
    claimed_due: Vec<Millis>,
    /// The completion's time (one per batch).
    now: Millis,
}

impl Moves {
    fn push(&mut self, adv: &RunAdvance, now: Millis) {
        let m = crate::store::run::RunMove::of(adv, now);
        self.id.push(adv.run_id.to_string());
        self.status.push(m.status.as_str());
        self.step.push(m.step.map(str::to_owned));
        self.due_at.push(m.due_at);
        self.wait_until.push(m.wait_until);
        self.wait_event.push(m.wait_event.map(str::to_owned));
        self.reason.push(m.reason.map(|r| r.as_str()));
        self.finished_at.push(m.finished_at);
        self.step_count.push(m.step_count);
        self.consumed.push(adv.consumed_event);
        self.event_data.push(adv.event_data.clone());
        self.claimed_due.push(adv.claimed_due);
        self.now = now;
    }

    async fn write(self, c: &mut PgConnection) -> Result<()> {
        if self.id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE runs r SET status = k.status, step = COALESCE(k.step, r.step),
               due_at = CASE WHEN k.status = 'waiting' AND ((NOT k.consumed AND r.resume_event IS NOT NULL AND k.step = r.step)
                                                            OR r.due_at <> k.claimed_due) THEN $12 ELSE k.due_at END,
               wait_until = k.wait_until, wait_event = k.wait_event, end_reason = k.reason,
               finished_at = k.finished_at, step_count = k.step_count,
               resume_event = CASE WHEN k.consumed OR k.status <> 'waiting' OR k.step IS DISTINCT FROM r.step
                                   THEN NULL ELSE r.resume_event END,
               event_data = COALESCE(k.event_data, r.event_data), lease_owner = NULL, lease_until = NULL,
               updated_at = $12
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
                         $7::text[], $8::bigint[], $9::bigint[], $10::bool[], $11::jsonb[],
                         $13::bigint[])
                  AS k(id, status, step, due_at, wait_until, wait_event, reason, finished_at,
                       step_count, consumed, event_data, claimed_due)
             WHERE r.id = k.id",
        )
        .bind(&self.id)
        .bind(&self.status)
        .bind(&self.step)
        .bind(&self.due_at)
        .bind(&self.wait_until)
        .bind(&self.wait_event)
        .bind(&self.reason)
        .bind(&self.finished_at)
        .bind(&self.step_count)
        .bind(&self.consumed)
        .bind(&self.event_data)
        .bind(self.now)
        .bind(&self.claimed_due)
        .execute(&mut *c)
        .await
        .map_err(internal)?;
        Ok(())
    }
}
