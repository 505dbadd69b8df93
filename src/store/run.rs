//! Run and event records as the store keeps them (runs as the API shows
//! them, filters, claim limits, events), and the pure rules both stores
//! share for indexing flows by trigger, starting runs and moving them. The
//! engine's own records live in `flows::records` (re-exported here).

use crate::domain::ErrorCode;
use crate::domain::flow::FlowDoc;
use serde_json::Value;

use crate::domain::{ContactId, FlowId, ListId, Millis, RunId};

pub use crate::flows::records::{
    AdvanceOutcome, ClaimedRun, Effect, RunAdvance, RunEnd, RunStatus, StepRecord,
};

/// A run as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub flow_id: FlowId,
    pub flow_version: i64,
    pub contact_id: ContactId,
    pub status: RunStatus,
    /// The step the run is at (for a finished run: the last one).
    pub step: Option<String>,
    /// Why a finished run ended: `completed`, `goal`, `exit_step`,
    /// `exit_condition`, `failed` or `cancelled`.
    pub end_reason: Option<crate::flows::records::EndReason>,
    pub event_data: Value,
    pub due_at: Option<Millis>,
    pub wait_event: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub flow_id: Option<FlowId>,
    pub contact_id: Option<ContactId>,
    pub status: Option<RunStatus>,
}

/// How much one claim may take: at most `runs` runs, and no more runs once
/// their event data passes `event_bytes` (the first run is always taken, so a
/// run larger than the limit is still claimed, alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimLimit {
    pub runs: usize,
    pub event_bytes: u64,
}

impl ClaimLimit {
    /// At most `runs` runs, whatever their size.
    pub fn runs(runs: usize) -> Self {
        Self {
            runs,
            event_bytes: i64::MAX as u64,
        }
    }

    /// The byte limit as the databases' signed integers.
    pub fn event_bytes_i64(&self) -> i64 {
        i64::try_from(self.event_bytes).unwrap_or(i64::MAX)
    }
}

/// An event to record (IN-8).
#[derive(Clone, Debug)]
pub struct EventIn {
    pub name: String,
    pub email: crate::domain::Email,
    pub properties: Value,
    pub occurred_at: Millis,
}

/// What recording an event did.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecorded {
    pub event_id: String,
    pub contact_id: String,
    /// Runs of flows triggered by this event name.
    pub runs_started: Vec<String>,
    /// Runs that were waiting for this event and will go on.
    pub runs_resumed: u64,
}

/// A flow document handed to the store for saving, parsed (it was
/// validated by `flows::save`; a caller that skipped that learns here).
pub fn parse_doc(document: &Value) -> super::Result<FlowDoc> {
    serde::Deserialize::deserialize(document).map_err(|e| super::StoreError::Invalid {
        code: ErrorCode::InvalidFlow,
        field: ".".into(),
        message: format!("the flow document does not parse: {e}"),
    })
}

/// How to start a run of a flow found by its trigger.
#[derive(Clone, Debug)]
pub struct EntryPlan {
    pub first_step: String,
    pub repeat: bool,
    pub has_exits: bool,
}

impl EntryPlan {
    /// From a stored (validated) document; `None` if it has no steps.
    pub fn of(doc: &FlowDoc) -> Option<Self> {
        Some(Self {
            first_step: doc.steps.first()?.id.clone(),
            repeat: doc.repeat,
            has_exits: !doc.exit_conditions.is_empty(),
        })
    }
}

/// What changed about a contact in one write, for triggers and exit checks.
#[derive(Clone, Debug, Default)]
pub struct ContactChange {
    /// Lists the contact joined (new or re-subscribed memberships).
    pub added_lists: Vec<ListId>,
    /// Custom fields whose value changed, with the new value (`None`: removed).
    pub changed_fields: Vec<(String, Option<Value>)>,
    /// Something else changed (email, phone, status, a list left).
    pub other: bool,
}

impl ContactChange {
    pub fn is_empty(&self) -> bool {
        self.added_lists.is_empty() && self.changed_fields.is_empty() && !self.other
    }

    /// Whether the change can start a flow (a list joined, a field changed).
    pub fn may_trigger(&self) -> bool {
        !self.added_lists.is_empty() || !self.changed_fields.is_empty()
    }

    /// The custom fields that differ between `before` and `after`.
    pub fn fields(
        before: Option<&serde_json::Map<String, Value>>,
        after: &serde_json::Map<String, Value>,
    ) -> Vec<(String, Option<Value>)> {
        let empty = serde_json::Map::new();
        let before = before.unwrap_or(&empty);
        let mut out = Vec::new();
        for (k, v) in after {
            if before.get(k) != Some(v) {
                out.push((k.clone(), Some(v.clone())));
            }
        }
        for k in before.keys() {
            if !after.contains_key(k) {
                out.push((k.clone(), None));
            }
        }
        out
    }
}

/// The error for cancelling a run that has already ended.
pub fn run_finished(run: &RunRecord) -> super::StoreError {
    super::StoreError::Conflict {
        code: ErrorCode::RunFinished,
        message: format!("run `{}` already ended ({})", run.id, run.status.as_str()),
    }
}

/// What a run waiting for an event is given when the event arrives.
pub fn resume_payload(id: &crate::domain::EventId, ev: &EventIn) -> Value {
    serde_json::json!({
        "id": id.to_string(),
        "name": ev.name,
        "properties": ev.properties,
        "occurred_at": crate::domain::millis_to_rfc3339(ev.occurred_at),
    })
}

/// Truncates the advance at history row `index`, whose effect failed with
/// `error`: the run ends `failed` there; the rows after it did not happen.
pub fn fail_at(adv: &mut RunAdvance, index: usize, error: String) -> AdvanceOutcome {
    adv.history.truncate(index + 1);
    let step = adv
        .history
        .last()
        .map(|h| h.step.clone())
        .unwrap_or_default();
    if let Some(last) = adv.history.last_mut() {
        last.outcome = crate::flows::records::StepOutcome::Failed;
        last.error = Some(error.clone());
    }
    adv.end = RunEnd::Finished {
        status: RunStatus::Failed,
        reason: crate::flows::records::EndReason::Failed,
        step: Some(step.clone()),
    };
    AdvanceOutcome::Failed { step, error }
}

/// The run columns an advance writes.
pub struct RunMove<'a> {
    pub status: RunStatus,
    pub step: Option<&'a str>,
    pub due_at: Option<Millis>,
    pub wait_until: Option<Millis>,
    pub wait_event: Option<&'a str>,
    pub reason: Option<crate::flows::records::EndReason>,
    pub finished_at: Option<Millis>,
    pub step_count: i64,
}

impl<'a> RunMove<'a> {
    pub fn of(adv: &'a RunAdvance, now: Millis) -> Self {
        let step_count = adv.first_seq + adv.history.len() as i64;
        match &adv.end {
            RunEnd::Waiting {
                step,
                wait_until,
                wait_event,
            } => Self {
                status: RunStatus::Waiting,
                step: Some(step),
                due_at: Some(*wait_until),
                wait_until: Some(*wait_until),
                wait_event: wait_event.as_deref(),
                reason: None,
                finished_at: None,
                step_count,
            },
            RunEnd::Due { step } => Self {
                status: RunStatus::Active,
                step: Some(step),
                due_at: Some(now),
                wait_until: None,
                wait_event: None,
                reason: None,
                finished_at: None,
                step_count,
            },
            RunEnd::Finished {
                status,
                reason,
                step,
            } => Self {
                status: *status,
                step: step.as_deref(),
                due_at: None,
                wait_until: None,
                wait_event: None,
                reason: Some(*reason),
                finished_at: Some(now),
                step_count,
            },
        }
    }
}

// ---- SQL: reading and cancelling runs (written once, `store::sql`) ---------------

use super::sql::{Done, RowExt, Stmt, Val};
use crate::domain::{Page, PageRequest, Stored, WorkspaceId};

/// The run columns read (0–12), then `$tail`.
macro_rules! run_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, flow_id, flow_version, contact_id, status, step, end_reason, event_data,
               due_at, wait_event, created_at, updated_at, finished_at ",
            $tail
        )
    };
}

/// A page of the workspace's runs. Only the filters given go into the SQL,
/// so each can use its index (`$3 IS NULL OR col = $3` would defeat them).
pub fn page(ws: &WorkspaceId, filter: &RunFilter, page: &PageRequest) -> Stmt {
    let mut sql = run_select!("FROM runs WHERE workspace_id = $1 AND id > $2").to_owned();
    let mut args = vec![ws.as_str().into(), page.after_id().into()];
    for (col, val) in [
        ("flow_id", filter.flow_id.as_ref().map(FlowId::as_str)),
        (
            "contact_id",
            filter.contact_id.as_ref().map(ContactId::as_str),
        ),
        ("status", filter.status.map(|s| s.as_str())),
    ] {
        if let Some(v) = val {
            args.push(v.into());
            sql.push_str(&format!(" AND {col} = ${}", args.len()));
        }
    }
    args.push(i64::from(page.limit + 1).into());
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    Stmt::new(sql, args)
}

pub fn to_page(done: &Done, page: &PageRequest) -> super::Result<Page<RunRecord>> {
    let runs = done
        .rows
        .iter()
        .map(|r| run(r))
        .collect::<super::Result<Vec<_>>>()?;
    Ok(Page::from_overfetch(runs, page.limit, |r| r.id.as_str()))
}

/// A run of the workspace (NotFound if there is none).
fn by_id(ws: &WorkspaceId, id: &RunId) -> Stmt {
    Stmt::new(
        run_select!("FROM runs WHERE workspace_id = $1 AND id = $2"),
        vec![ws.as_str().into(), id.as_str().into()],
    )
    .or_not_found("run", id)
}

/// A run of the workspace (NotFound if there is none), then its history.
pub fn get(ws: &WorkspaceId, id: &RunId) -> [Stmt; 2] {
    [
        by_id(ws, id),
        Stmt::new(
            "SELECT step, type, at, input, outcome, detail, error FROM run_steps
             WHERE run_id = $1 ORDER BY seq",
            vec![id.as_str().into()],
        ),
    ]
}

pub fn with_history(done: &[Done]) -> super::Result<(RunRecord, Vec<StepRecord>)> {
    let history = done[1]
        .rows
        .iter()
        .map(|r| {
            Ok(StepRecord {
                step: r.text(0)?,
                kind: r.text(1)?,
                at: r.int(2)?,
                input: r.json(3)?,
                outcome: crate::flows::records::StepOutcome::decode(r.str_at(4)?)?,
                detail: r.json(5)?,
                error: r.opt_text(6)?,
            })
        })
        .collect::<super::Result<_>>()?;
    Ok((run(done[0].row("run")?)?, history))
}

/// Ends an unfinished run as `cancelled`, then reads the run (NotFound if
/// there is none): one transaction; [`cancelled`] reads the answer.
pub fn cancel(ws: &WorkspaceId, id: &RunId, now: Millis) -> [Stmt; 2] {
    [
        Stmt::new(
            "UPDATE runs SET status = 'cancelled', end_reason = 'cancelled', finished_at = $3,
               updated_at = $3, lease_owner = NULL, lease_until = NULL, resume_event = NULL
             WHERE workspace_id = $1 AND id = $2 AND status IN ('active', 'waiting')",
            vec![ws.as_str().into(), id.as_str().into(), now.into()],
        ),
        by_id(ws, id),
    ]
}

/// The run [`cancel`] cancelled, or a Conflict if it had already ended.
pub fn cancelled(done: &[Done]) -> super::Result<RunRecord> {
    let run = run(done[1].row("run")?)?;
    if done[0].changed == 0 {
        return Err(run_finished(&run));
    }
    Ok(run)
}

fn run(r: &[Val]) -> super::Result<RunRecord> {
    let status = RunStatus::decode(r.str_at(4)?)?;
    Ok(RunRecord {
        id: RunId::from_trusted(r.text(0)?),
        flow_id: FlowId::from_trusted(r.text(1)?),
        flow_version: r.int(2)?,
        contact_id: ContactId::from_trusted(r.text(3)?),
        status,
        step: r.opt_text(5)?,
        end_reason: r
            .opt_text(6)?
            .map(|e| crate::flows::records::EndReason::decode(&e))
            .transpose()?,
        event_data: r.json(7)?,
        due_at: if status.is_finished() {
            None
        } else {
            r.opt_int(8)?
        },
        wait_event: r.opt_text(9)?,
        created_at: r.int(10)?,
        updated_at: r.int(11)?,
        finished_at: r.opt_int(12)?,
    })
}

// ---- the engine's run and event statements (`logic::Tx`'s defaults) ----------------

/// How many runs the contact has in the flow, and how many unfinished.
pub fn counts(flow: &FlowId, contact: &ContactId) -> Stmt {
    Stmt::new(
        "SELECT COUNT(*), COUNT(CASE WHEN status = 'active' OR status = 'waiting' THEN 1 END)
         FROM runs WHERE flow_id = $1 AND contact_id = $2",
        vec![flow.as_str().into(), contact.as_str().into()],
    )
}

/// Inserts a run due now; it changes no row when an unfinished run of the
/// contact in the flow is there (the partial unique index decides).
/// `has_exits` is 0/1 as the shared dialect's booleans; `<> 0` makes it
/// PostgreSQL's `boolean` column type and stays 0/1 on SQLite.
pub fn insert(run: &super::logic::NewRun<'_>) -> Stmt {
    Stmt::new(
        "INSERT INTO runs (id, workspace_id, flow_id, flow_version, contact_id, status, step,
           due_at, event_data, event_bytes, has_exits, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10 <> 0, $7, $7)
         ON CONFLICT (flow_id, contact_id) WHERE status = 'active' OR status = 'waiting' DO NOTHING",
        vec![
            run.id.as_str().into(),
            run.ws.as_str().into(),
            run.flow.as_str().into(),
            run.version.into(),
            run.contact.as_str().into(),
            run.plan.first_step.as_str().into(),
            run.now.into(),
            super::sql::Arg::Json(Some(run.event_data.to_owned())),
            (run.event_data.len() as i64).into(),
            run.plan.has_exits.into(),
        ],
    )
}

/// Active flows of the workspace whose trigger is `kind` with `key`, with
/// their current version's document.
pub fn triggered(ws: &WorkspaceId, kind: &str, key: &str) -> Stmt {
    Stmt::new(
        "SELECT f.id, f.current_version, v.document FROM flows f
         JOIN flow_versions v ON v.flow_id = f.id AND v.version = f.current_version
         WHERE f.workspace_id = $1 AND f.status = 'active' AND f.trigger_type = $2
           AND f.trigger_key = $3",
        vec![ws.as_str().into(), kind.into(), key.into()],
    )
}

pub fn triggered_flows(done: &Done) -> super::Result<Vec<(FlowId, i64, FlowDoc)>> {
    done.rows
        .iter()
        .map(|r| Ok((FlowId::from_trusted(r.text(0)?), r.int(1)?, r.json(2)?)))
        .collect()
}

/// A flow's status and inbound token, share-locked when `lock`.
pub fn flow_for_entry(ws: &WorkspaceId, flow: &FlowId, lock: bool) -> Stmt {
    Stmt::new(
        crate::with_lock!(
            lock,
            "SELECT status, inbound_token FROM flows WHERE workspace_id = $1 AND id = $2",
            " FOR SHARE"
        ),
        vec![ws.as_str().into(), flow.as_str().into()],
    )
    .or_not_found("flow", flow)
}

pub fn insert_event(
    id: &crate::domain::EventId,
    ws: &WorkspaceId,
    contact: &ContactId,
    ev: &EventIn,
    now: Millis,
) -> Stmt {
    Stmt::new(
        "INSERT INTO events (id, workspace_id, contact_id, name, properties, occurred_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            id.as_str().into(),
            ws.as_str().into(),
            contact.as_str().into(),
            ev.name.as_str().into(),
            (&ev.properties).into(),
            ev.occurred_at.into(),
            now.into(),
        ],
    )
}

/// Hands an event to the contact's runs waiting for its name (and not
/// already holding one): they are due now. The contact was found in its
/// workspace, so its runs are too; naming the workspace here would lead
/// SQLite to the (workspace, status) index, a scan of every waiting run.
pub fn resume_waiting(contact: &ContactId, name: &str, payload: &Value, now: Millis) -> Stmt {
    Stmt::new(
        concat!(
            "UPDATE runs SET resume_event = $3, due_at = ",
            crate::woken_due!("$4"),
            " WHERE contact_id = $1 AND status = 'waiting' AND wait_event = $2
               AND resume_event IS NULL"
        ),
        vec![
            contact.as_str().into(),
            name.into(),
            payload.into(),
            now.into(),
        ],
    )
}

/// When the next run of an active flow is due, if it is due by `until`
/// (the engine sleeps until then, and never longer than its poll interval,
/// so a later time need not be found), leaving out runs leased at `now` (a
/// claim leaves their `due_at` as it was; the poll interval finds them
/// again when a lease of a process that died ends). Written as the claim
/// is, so that PostgreSQL walks `runs_due` from its low end and stops at
/// the first run of an active flow: joined to `flows`, and with no upper
/// bound on `due_at`, a planner without statistics read every unfinished
/// run of the flow (1,900 rows, 6.5 ms), or ANDed three bitmaps (23 ms).
/// The status is tested in both spellings: `IN` for PostgreSQL's plans,
/// `OR` for SQLite's partial index.
pub fn next_due(now: Millis, until: Millis) -> Stmt {
    Stmt::new(
        "SELECT r.due_at FROM runs r
         WHERE r.status IN ('active', 'waiting') AND (r.status = 'active' OR r.status = 'waiting')
           AND r.due_at <= $2 AND (r.lease_until IS NULL OR r.lease_until < $1)
           AND (SELECT f.status FROM flows f WHERE f.id = r.flow_id) = 'active'
         ORDER BY r.due_at LIMIT 1",
        vec![now.into(), until.into()],
    )
}
