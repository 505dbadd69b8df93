//! The engine core: walks a claimed run through its flow version's steps,
//! in memory, until it waits, ends or uses up its step budget, and returns
//! the [`RunAdvance`] the store applies atomically. Pure: no I/O, time is
//! given. Knows nothing about particular step types ([`super::steps`]).

use serde_json::{Value, json};

use super::records::{
    ClaimedRun, EndReason, RunAdvance, RunEnd, RunStatus, StepOutcome, StepRecord,
};
use super::steps::{self, Outcome, StepCtx, Wake};
use crate::domain::Millis;
use crate::domain::condition::holds;
use crate::domain::flow::{FlowDoc, StepKind};

/// Most steps one claim executes for a run before handing it back as due
/// (a guard: validation already refuses loops without a wait).
pub const STEP_BUDGET: usize = 100;

fn kind_name(k: &StepKind) -> &'static str {
    match k {
        StepKind::Wait(_) => "wait",
        StepKind::Condition { .. } => "condition",
        StepKind::AddToList { .. } => "add_to_list",
        StepKind::RemoveFromList { .. } => "remove_from_list",
        StepKind::MoveToList { .. } => "move_to_list",
        StepKind::UpdateField { .. } => "update_field",
        StepKind::Goal { .. } => "goal",
        StepKind::StartFlow { .. } => "start_flow",
        StepKind::SendWebhook { .. } => "send_webhook",
        StepKind::Exit {} => "exit",
    }
}

/// Advances `run` on `doc` at `now`.
pub fn advance(doc: &FlowDoc, run: ClaimedRun, now: Millis) -> RunAdvance {
    let ClaimedRun {
        id,
        workspace_id,
        status,
        step,
        mut event_data,
        wait_until,
        resume_event,
        step_count,
        claimed_due,
        mut contact,
        mut lists,
        ..
    } = run;
    let contact_id = contact.id.clone();
    let original_data = event_data.clone();
    let consumed_event = resume_event.is_some();
    let mut history = Vec::new();
    let mut effects = Vec::new();
    let mut current = step.or_else(|| doc.steps.first().map(|s| s.id.clone()));
    let mut wake = if status == RunStatus::Waiting {
        Wake::Resume {
            wait_until: wait_until.unwrap_or(now),
            event: resume_event,
        }
    } else {
        Wake::Arrive
    };
    let finish = |status, reason, step: Option<String>| RunEnd::Finished {
        status,
        reason,
        step,
    };
    let mut end = None;
    for _ in 0..STEP_BUDGET {
        let Some(step_id) = current.clone() else {
            end = Some(finish(RunStatus::Completed, EndReason::Completed, None));
            break;
        };
        let Some(step) = doc.steps.iter().find(|s| s.id == step_id) else {
            history.push(record(
                &step_id,
                "unknown",
                now,
                Value::Null,
                StepOutcome::Failed,
                Value::Null,
                Some(format!("the flow version has no step `{step_id}`")),
            ));
            end = Some(finish(RunStatus::Failed, EndReason::Failed, Some(step_id)));
            break;
        };
        let kind = kind_name(&step.kind);
        let input = serde_json::to_value(&step.kind).unwrap_or(Value::Null);
        // FL-4: exit conditions before every step (any one met ends the run).
        let met = if doc.exit_conditions.is_empty() {
            None
        } else {
            let list_ids: Vec<String> = lists.iter().map(|l| l.to_string()).collect();
            let subject = steps::subject(&contact, &list_ids, &event_data);
            doc.exit_conditions.iter().find(|c| holds(c, &subject))
        };
        if let Some(c) = met {
            history.push(record(
                &step_id,
                kind,
                now,
                input,
                StepOutcome::ExitCondition,
                json!({ "condition": c }),
                None,
            ));
            end = Some(finish(
                RunStatus::Exited,
                EndReason::ExitCondition,
                Some(step_id),
            ));
            break;
        }
        let mut ctx = StepCtx {
            now,
            step: &step_id,
            contact: &mut contact,
            lists: &mut lists,
            event_data: &mut event_data,
            effects: Vec::new(),
            detail: Value::Null,
        };
        let outcome = steps::execute(
            &step.kind,
            std::mem::replace(&mut wake, Wake::Arrive),
            &mut ctx,
        );
        let StepCtx {
            effects: made,
            detail,
            ..
        } = ctx;
        let index = history.len();
        effects.extend(made.into_iter().map(|e| (index, e)));
        match outcome {
            Err(error) => {
                history.push(record(
                    &step_id,
                    kind,
                    now,
                    input,
                    StepOutcome::Failed,
                    detail,
                    Some(error),
                ));
                end = Some(finish(RunStatus::Failed, EndReason::Failed, Some(step_id)));
                break;
            }
            Ok(Outcome::Next { to, label }) => {
                history.push(record(&step_id, kind, now, input, label, detail, None));
                current = to;
            }
            Ok(Outcome::Wait {
                until,
                event,
                fresh,
            }) => {
                if fresh {
                    history.push(record(
                        &step_id,
                        kind,
                        now,
                        input,
                        StepOutcome::Waiting,
                        detail,
                        None,
                    ));
                }
                end = Some(RunEnd::Waiting {
                    step: step_id,
                    wait_until: until,
                    wait_event: event,
                });
                break;
            }
            Ok(Outcome::End { status, reason }) => {
                history.push(record(
                    &step_id,
                    kind,
                    now,
                    input,
                    reason.into(),
                    detail,
                    None,
                ));
                end = Some(finish(status, reason, Some(step_id)));
                break;
            }
        }
    }
    let end = end.unwrap_or_else(|| match current {
        Some(step) => RunEnd::Due { step },
        None => finish(RunStatus::Completed, EndReason::Completed, None),
    });
    // The run's end, for subscriptions (`flow.completed`, `flow.exited`).
    if let RunEnd::Finished { status, reason, .. } = &end {
        let event = match status {
            RunStatus::Completed => Some("flow.completed"),
            RunStatus::Exited => Some("flow.exited"),
            _ => None,
        };
        if let Some(event) = event {
            let mut payload = steps::flow_event(event, now, &contact);
            payload["reason"] = json!(reason.as_str());
            effects.push((
                history.len().saturating_sub(1),
                super::records::Effect::Emit {
                    event: event.into(),
                    payload,
                },
            ));
        }
    }
    RunAdvance {
        run_id: id,
        workspace_id,
        contact_id,
        first_seq: step_count,
        history,
        effects,
        end,
        event_data: (event_data != original_data).then_some(event_data),
        consumed_event,
        claimed_due,
    }
}

fn record(
    step: &str,
    kind: &str,
    at: Millis,
    input: Value,
    outcome: StepOutcome,
    detail: Value,
    error: Option<String>,
) -> StepRecord {
    StepRecord {
        step: step.to_owned(),
        kind: kind.to_owned(),
        at,
        input,
        outcome,
        detail,
        error,
    }
}
