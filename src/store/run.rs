//! Records the engine reads and writes through the store: claimed runs, the
//! advance of a run (history, effects, where it stops), runs as the API shows
//! them, and events. Plus the pure rules both stores share for indexing flows
//! by trigger and for starting runs from a trigger.

use crate::domain::flow::FlowDoc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ContactId, FlowId, ListId, Millis, RunId, WorkspaceId};

use super::ContactRecord;

/// Where a run is. `active` runs are due now; `waiting` runs are due at
/// their timer (or when an event or a contact change wakes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Active,
    Waiting,
    Completed,
    Exited,
    Failed,
    Cancelled,
}

crate::stored_enum!(RunStatus, "run status", {
    Active => "active",
    Waiting => "waiting",
    Completed => "completed",
    Exited => "exited",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl RunStatus {
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Active | Self::Waiting)
    }
}

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
    pub end_reason: Option<String>,
    pub event_data: Value,
    pub due_at: Option<Millis>,
    pub wait_event: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

/// One step execution (FL-6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    /// The step's type (`wait`, `condition`, …).
    pub kind: String,
    pub at: Millis,
    /// The step's settings and what it read.
    pub input: Value,
    /// `next`, `yes`, `no`, `waiting`, `resumed`, `event`, `timeout`, `goal`,
    /// `exit_step`, `exit_condition`, `failed`, `passed`, …
    pub outcome: String,
    pub detail: Value,
    pub error: Option<String>,
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

/// A due run the engine has leased, with everything its steps read.
#[derive(Clone, Debug)]
pub struct ClaimedRun {
    pub id: RunId,
    pub workspace_id: WorkspaceId,
    pub flow_id: FlowId,
    pub flow_version: i64,
    pub status: RunStatus,
    pub step: Option<String>,
    pub event_data: Value,
    /// The timer of the wait the run is in.
    pub wait_until: Option<Millis>,
    /// An event that arrived for the event wait the run is in.
    pub resume_event: Option<Value>,
    /// How many history rows the run has (the next one's sequence number).
    pub step_count: i64,
    pub contact: ContactRecord,
    pub lists: Vec<ListId>,
}

/// A change a step makes to the contact or starts elsewhere, applied by the
/// store in the same transaction that moves the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    SetField {
        name: String,
        value: Value,
    },
    AddToList(ListId),
    RemoveFromList(ListId),
    /// Enter the flow (if active and triggered by other flows) with this
    /// event data; the repeat rules apply.
    StartFlow {
        flow: FlowId,
        event_data: Value,
    },
}

/// Where an advanced run stops.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// Waiting at `step` until `wait_until` (or the event).
    Waiting {
        step: String,
        wait_until: Millis,
        wait_event: Option<String>,
    },
    /// Still going: the engine's step budget per claim ran out.
    Due { step: String },
    Finished {
        status: RunStatus,
        reason: &'static str,
        step: Option<String>,
    },
}

/// What executing a claimed run decided, to be stored atomically (and only
/// if the lease is still this engine's).
#[derive(Clone, Debug)]
pub struct RunAdvance {
    pub run_id: RunId,
    pub workspace_id: WorkspaceId,
    pub contact_id: ContactId,
    /// The sequence number of `history[0]`.
    pub first_seq: i64,
    pub history: Vec<StepRecord>,
    /// Each effect with the index in `history` of the step that made it.
    pub effects: Vec<(usize, Effect)>,
    pub end: RunEnd,
    /// The run's event data when a resuming event changed it.
    pub event_data: Option<Value>,
    /// True when the run's `resume_event` was consumed.
    pub consumed_event: bool,
}

/// How storing an advance went, per run.
#[derive(Clone, Debug, PartialEq)]
pub enum AdvanceOutcome {
    Applied,
    /// The lease expired or another engine holds it: nothing was written.
    LeaseLost,
    /// An effect failed (its list was deleted, say): the run ended `failed`
    /// at that step with this error.
    Failed {
        step: String,
        error: String,
    },
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

/// The trigger columns of a flow, derived from its document: type and key
/// (list id, event name or field name).
pub fn trigger_index(doc: &FlowDoc) -> (&'static str, &str) {
    (doc.trigger_type(), doc.trigger_key())
}

/// A flow document handed to the store for saving, parsed (it was
/// validated by `flows::save`; a caller that skipped that learns here).
pub fn parse_doc(document: &Value) -> super::Result<FlowDoc> {
    serde_json::from_value(document.clone()).map_err(|e| super::StoreError::Invalid {
        code: "invalid_flow",
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
        code: "run_finished",
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
        last.outcome = "failed".into();
        last.error = Some(error.clone());
    }
    adv.end = RunEnd::Finished {
        status: RunStatus::Failed,
        reason: "failed",
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
    pub reason: Option<&'static str>,
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
                reason: Some(reason),
                finished_at: Some(now),
                step_count,
            },
        }
    }
}
