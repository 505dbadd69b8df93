//! The engine's own records: where a run is (`RunStatus`), what a claim
//! hands the engine (`ClaimedRun`), what advancing a run decided
//! (`RunAdvance`: history, `Effect`s, `RunEnd`) and how storing it went
//! (`AdvanceOutcome`). The pure engine core (`exec`, `steps`) works on these
//! alone; the store persists them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ContactId, DeliveryId, FlowId, ListId, Millis, RunId, WebhookId, WorkspaceId};
use crate::store::ContactRecord;

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

/// One step execution (FL-6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    /// The step's type (`wait`, `condition`, …).
    pub kind: String,
    pub at: Millis,
    /// The step's settings and what it read.
    pub input: Value,
    pub outcome: StepOutcome,
    pub detail: Value,
    pub error: Option<String>,
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
    /// The run's `due_at` when it was claimed (a claim leaves it as it is):
    /// a wake-up during the lease changes it, and the completion sees that.
    pub claimed_due: Millis,
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
    /// Queue a delivery to the webhook; `context` is what its body is
    /// rendered from (`contact`, `event`), as the run saw them at the step.
    SendWebhook {
        delivery: DeliveryId,
        webhook: WebhookId,
        step: String,
        context: Value,
    },
    /// An event for the workspace's subscriptions (`flow.completed`, …):
    /// one delivery to each subscription that wants it. `payload` is the
    /// body's one object (the flow's id is added when it is sent).
    Emit {
        event: String,
        payload: Value,
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
        reason: EndReason,
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
    /// [`ClaimedRun::claimed_due`]: the completion compares it with the
    /// run's `due_at` to learn of a wake-up during the lease.
    pub claimed_due: Millis,
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

/// What a step's execution came to, as its history row says (FL-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Next,
    Yes,
    No,
    Waiting,
    Resumed,
    Passed,
    Event,
    Timeout,
    Goal,
    ExitStep,
    ExitCondition,
    Failed,
    Completed,
    Cancelled,
}

crate::stored_enum!(StepOutcome, "step outcome", {
    Next => "next",
    Yes => "yes",
    No => "no",
    Waiting => "waiting",
    Resumed => "resumed",
    Passed => "passed",
    Event => "event",
    Timeout => "timeout",
    Goal => "goal",
    ExitStep => "exit_step",
    ExitCondition => "exit_condition",
    Failed => "failed",
    Completed => "completed",
    Cancelled => "cancelled",
});

/// Why a finished run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Completed,
    Goal,
    ExitStep,
    ExitCondition,
    Failed,
    Cancelled,
}

crate::stored_enum!(EndReason, "end reason", {
    Completed => "completed",
    Goal => "goal",
    ExitStep => "exit_step",
    ExitCondition => "exit_condition",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl From<EndReason> for StepOutcome {
    /// The history row of the step that ended a run says why.
    fn from(r: EndReason) -> Self {
        match r {
            EndReason::Completed => Self::Completed,
            EndReason::Goal => Self::Goal,
            EndReason::ExitStep => Self::ExitStep,
            EndReason::ExitCondition => Self::ExitCondition,
            EndReason::Failed => Self::Failed,
            EndReason::Cancelled => Self::Cancelled,
        }
    }
}
