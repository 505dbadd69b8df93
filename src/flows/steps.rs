//! What each step type does. The engine core ([`super::exec`]) never looks
//! inside a step: it calls [`execute`] and follows the [`Outcome`]. A new step
//! type (webhook, email, SMS) adds a `StepKind` variant and an arm here; a
//! step with outbound I/O pushes an effect (a job written in the same
//! transaction as the run's move) and returns `Next`, so I/O never happens
//! inside the engine's transaction.

use chrono::{DateTime, Duration as ChronoDuration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use super::records::{Effect, EndReason, RunStatus, StepOutcome};
use crate::domain::condition::{Subject, matches};
use crate::domain::flow::{StepKind, Wait, WaitFor};
use crate::domain::{DeliveryId, ListId, Millis};
use crate::store::ContactRecord;

/// How a waiting run was woken, given to the wait step it waits in.
#[derive(Clone, Debug, PartialEq)]
pub enum Wake {
    /// The run arrives at the step (it was not waiting there).
    Arrive,
    /// The run was waiting here; `event` is the event that arrived for it.
    Resume {
        wait_until: Millis,
        event: Option<Value>,
    },
}

/// What a step decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Go to the step (or, `None`, finish the run as completed). `label` is
    /// the history's outcome (`next`, `yes`, `no`, `event`, `timeout`…).
    Next {
        to: Option<String>,
        label: StepOutcome,
    },
    /// Wait until the time (or the event); `fresh` is false when the run was
    /// woken early and goes back to the same wait (no history row then).
    Wait {
        until: Millis,
        event: Option<String>,
        fresh: bool,
    },
    /// Finish the run.
    End {
        status: RunStatus,
        reason: EndReason,
    },
}

/// What a step reads and changes: a snapshot of the contact that effects
/// are applied to as they are made, so later steps see them.
pub struct StepCtx<'a> {
    pub now: Millis,
    /// The step's id.
    pub step: &'a str,
    pub contact: &'a mut ContactRecord,
    pub lists: &'a mut Vec<ListId>,
    pub event_data: &'a mut Value,
    pub effects: Vec<Effect>,
    /// Extra facts for the history row (`until`, the goal's name…).
    pub detail: Value,
}

impl StepCtx<'_> {
    pub fn subject<'b>(&'b self, lists: &'b [String]) -> Subject<'b> {
        subject(self.contact, lists, self.event_data)
    }

    fn add_list(&mut self, list: &ListId) {
        if !self.lists.contains(list) {
            self.lists.push(list.clone());
        }
        self.effects.push(Effect::AddToList(list.clone()));
    }

    fn remove_list(&mut self, list: &ListId) {
        self.lists.retain(|l| l != list);
        self.effects.push(Effect::RemoveFromList(list.clone()));
    }
}

/// What conditions read about a run: its contact, the ids of the contact's
/// lists, its event data.
pub fn subject<'a>(
    contact: &'a ContactRecord,
    lists: &'a [String],
    event: &'a Value,
) -> Subject<'a> {
    Subject {
        email: contact.email.as_str(),
        phone: contact.phone.as_ref().map(|p| p.as_str()),
        status: contact.status.as_str(),
        fields: &contact.fields,
        lists,
        event,
    }
}

/// Executes one step. `Err` is a step failure that ends the run as `failed`.
pub fn execute(kind: &StepKind, wake: Wake, ctx: &mut StepCtx) -> Result<Outcome, String> {
    let next = |to: &Option<String>| Outcome::Next {
        to: to.clone(),
        label: StepOutcome::Next,
    };
    Ok(match kind {
        StepKind::Wait(w) => wait(w, wake, ctx)?,
        StepKind::Condition {
            conditions,
            r#match,
            yes,
            no,
        } => {
            let lists: Vec<String> = ctx.lists.iter().map(|l| l.to_string()).collect();
            let holds = matches(conditions, *r#match, &ctx.subject(&lists));
            let (to, label) = if holds {
                (yes, StepOutcome::Yes)
            } else {
                (no, StepOutcome::No)
            };
            Outcome::Next {
                to: Some(to.clone()),
                label,
            }
        }
        StepKind::AddToList { list_id, next: n } => {
            ctx.add_list(list_id.get()?);
            next(n)
        }
        StepKind::RemoveFromList { list_id, next: n } => {
            ctx.remove_list(list_id.get()?);
            next(n)
        }
        StepKind::MoveToList {
            from_list_id,
            to_list_id,
            next: n,
        } => {
            ctx.remove_list(from_list_id.get()?);
            ctx.add_list(to_list_id.get()?);
            next(n)
        }
        StepKind::UpdateField {
            field,
            value,
            next: n,
        } => {
            if value.is_null() {
                ctx.contact.fields.remove(field);
            } else {
                ctx.contact.fields.insert(field.clone(), value.clone());
            }
            ctx.effects.push(Effect::SetField {
                name: field.clone(),
                value: value.clone(),
            });
            next(n)
        }
        StepKind::Goal { name, next: n } => {
            ctx.detail = json!({ "goal": name });
            let mut payload = flow_event("flow.goal_reached", ctx.now, ctx.contact);
            payload["goal"] = json!(name);
            ctx.effects.push(Effect::Emit {
                event: "flow.goal_reached".into(),
                payload,
            });
            match n {
                Some(_) => Outcome::Next {
                    to: n.clone(),
                    label: StepOutcome::Goal,
                },
                None => Outcome::End {
                    status: RunStatus::Completed,
                    reason: EndReason::Goal,
                },
            }
        }
        StepKind::StartFlow { flow_id, next: n } => {
            ctx.effects.push(Effect::StartFlow {
                flow: flow_id.get()?.clone(),
                event_data: ctx.event_data.clone(),
            });
            next(n)
        }
        StepKind::SendWebhook {
            webhook_id,
            webhook: _,
            next: n,
            wait_for_result,
            on_success,
            on_failure,
            timeout,
            response_mapping,
        } => {
            if let Wake::Resume { wait_until, event } = wake {
                return Ok(webhook_result(
                    event,
                    wait_until,
                    ctx,
                    (on_success, on_failure),
                    response_mapping,
                ));
            }
            let webhook = webhook_id
                .as_ref()
                .ok_or("the step names no webhook")?
                .get()?
                .clone();
            let delivery = DeliveryId::generate();
            ctx.detail =
                json!({ "webhook_id": webhook.as_str(), "delivery_id": delivery.as_str() });
            ctx.effects.push(Effect::SendWebhook {
                delivery,
                webhook,
                step: ctx.step.to_owned(),
                context: json!({
                    "contact": {
                        "id": ctx.contact.id.as_str(),
                        "email": ctx.contact.email.as_str(),
                        "phone": ctx.contact.phone.as_ref().map(|p| p.as_str()),
                        "status": ctx.contact.status.as_str(),
                        "fields": ctx.contact.fields,
                    },
                    "event": ctx.event_data,
                    "wait": wait_for_result,
                }),
            });
            if *wait_for_result {
                let wait = match timeout {
                    Some(t) => *t.get()?,
                    None => RESULT_TIMEOUT,
                };
                let until = ctx.now.saturating_add(millis(wait));
                if let Value::Object(d) = &mut ctx.detail {
                    d.insert(
                        "until".into(),
                        json!(crate::domain::millis_to_rfc3339(until)),
                    );
                }
                Outcome::Wait {
                    until,
                    event: Some(result_event(ctx.step)),
                    fresh: true,
                }
            } else {
                next(n)
            }
        }
        StepKind::Exit {} => Outcome::End {
            status: RunStatus::Exited,
            reason: EndReason::ExitStep,
        },
    })
}

/// How long a `send_webhook` step waits for its result by default (`3d`).
pub const RESULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3 * 86_400);

/// The event a run waiting for its delivery's outcome waits for (no event
/// name a user can send has a `:`).
pub fn result_event(step: &str) -> String {
    format!("webhook_result:{step}")
}

/// A `send_webhook` step woken while waiting for its result: the outcome
/// arrived (success: the response mapping's fields are set), the timeout
/// passed, or (woken early for an exit check) it goes on waiting.
fn webhook_result(
    event: Option<Value>,
    wait_until: Millis,
    ctx: &mut StepCtx,
    (on_success, on_failure): (&Option<String>, &Option<String>),
    mapping: &std::collections::BTreeMap<String, String>,
) -> Outcome {
    let Some(ev) = event else {
        if ctx.now >= wait_until {
            ctx.detail = json!({ "result": "timeout" });
            return Outcome::Next {
                to: on_failure.clone(),
                label: StepOutcome::Timeout,
            };
        }
        return Outcome::Wait {
            until: wait_until,
            event: Some(result_event(ctx.step)),
            fresh: false,
        };
    };
    let ok = ev["status"] == "succeeded";
    let mut mapped = serde_json::Map::new();
    if ok {
        for (path, field) in mapping {
            let found = crate::domain::jsonpath::JsonPath::parse(path)
                .ok()
                .and_then(|p| p.get(&ev["response"]).cloned());
            if let Some(value) = found.filter(|v| !v.is_object() && !v.is_array()) {
                ctx.contact.fields.insert(field.clone(), value.clone());
                mapped.insert(field.clone(), value.clone());
                ctx.effects.push(Effect::SetField {
                    name: field.clone(),
                    value,
                });
            }
        }
    }
    ctx.detail = json!({
        "delivery_id": ev["delivery_id"],
        "result": ev["status"],
        "response_status": ev["response_status"],
        "mapped": mapped,
    });
    Outcome::Next {
        to: if ok {
            on_success.clone()
        } else {
            on_failure.clone()
        },
        label: if ok {
            StepOutcome::Yes
        } else {
            StepOutcome::No
        },
    }
}

fn wait(w: &Wait, wake: Wake, ctx: &mut StepCtx) -> Result<Outcome, String> {
    let now = ctx.now;
    if let Wake::Resume { wait_until, event } = wake {
        if w.event.is_some() {
            if let Some(ev) = event {
                // The event's properties join the run's data for later
                // conditions (`event.PATH`).
                if let (Value::Object(data), Some(Value::Object(props))) =
                    (&mut *ctx.event_data, ev.get("properties"))
                {
                    for (k, v) in props {
                        data.insert(k.clone(), v.clone());
                    }
                }
                ctx.detail = json!({ "event": ev });
                return Ok(Outcome::Next {
                    to: w.on_event.clone(),
                    label: StepOutcome::Event,
                });
            }
            if now >= wait_until {
                return Ok(Outcome::Next {
                    to: w.on_timeout.clone(),
                    label: StepOutcome::Timeout,
                });
            }
        } else if now >= wait_until {
            return Ok(Outcome::Next {
                to: w.next.clone(),
                label: StepOutcome::Resumed,
            });
        }
        // Woken early (a contact change asked for an exit check): keep waiting.
        return Ok(Outcome::Wait {
            until: wait_until,
            event: w.event.clone(),
            fresh: false,
        });
    }
    // Entering the wait: its settings parsed as the save check parsed them
    // (a problem here is a stored document that did not pass it).
    let form = w.form().map_err(|problems| {
        problems
            .into_iter()
            .map(|(setting, message)| format!("{setting}: {message}"))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let until = match form {
        WaitFor::Duration(d) | WaitFor::Event { timeout: d } => now.saturating_add(millis(d)),
        WaitFor::Until(at) => {
            if at <= now {
                ctx.detail = json!({ "until": w.until, "passed": true });
                return Ok(Outcome::Next {
                    to: w.next.clone(),
                    label: StepOutcome::Passed,
                });
            }
            at
        }
        WaitFor::TimeOfDay { at, zone } => {
            let (tz, source) = time_zone(zone, ctx.contact);
            ctx.detail = json!({ "time_zone": tz.name(), "time_zone_from": source });
            next_local_time(now, at, tz)
        }
    };
    if let Value::Object(d) = &mut ctx.detail {
        d.insert(
            "until".into(),
            json!(crate::domain::millis_to_rfc3339(until)),
        );
    } else {
        ctx.detail = json!({ "until": crate::domain::millis_to_rfc3339(until) });
    }
    Ok(Outcome::Wait {
        until,
        event: w.event.clone(),
        fresh: true,
    })
}

fn millis(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// The wait's own zone, else the contact's `time_zone` field when it names
/// a zone, else UTC; with where it came from.
fn time_zone(zone: Option<Tz>, contact: &ContactRecord) -> (Tz, &'static str) {
    if let Some(tz) = zone {
        return (tz, "flow");
    }
    if let Some(tz) = contact
        .fields
        .get("time_zone")
        .and_then(Value::as_str)
        .and_then(|z| z.parse().ok())
    {
        return (tz, "contact");
    }
    (Tz::UTC, "default")
}

/// The first instant after `now` when the wall clock in `tz` shows `at`.
/// A time skipped by a DST change happens an hour later that day; a time
/// that occurs twice takes the first.
pub fn next_local_time(now: Millis, at: NaiveTime, tz: Tz) -> Millis {
    let now_utc = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
    let mut date = now_utc.with_timezone(&tz).date_naive();
    for _ in 0..4 {
        let local = date.and_time(at);
        let t = tz
            .from_local_datetime(&local)
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(local + ChronoDuration::hours(1)))
                    .earliest()
            })
            .map(|t| t.timestamp_millis());
        if let Some(t) = t
            && t > now
        {
            return t;
        }
        date = date.succ_opt().unwrap_or(date);
    }
    now + 86_400_000
}

/// A flow event's payload (the run's id and the flow's are added where
/// they are known: the store and the sender).
pub fn flow_event(event: &str, now: Millis, contact: &ContactRecord) -> Value {
    json!({
        "event": event,
        "timestamp": now.div_euclid(1000),
        "contact_id": contact.id.as_str(),
        "email": contact.email.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn the_default_result_timeout_is_the_documented_3d() {
        assert_eq!(
            Ok(RESULT_TIMEOUT),
            crate::domain::flow::parse_duration("3d")
        );
    }

    #[test]
    fn local_time_of_day() {
        let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        let rome: Tz = "Europe/Rome".parse().unwrap();
        // 06:00 UTC is 08:00 in Rome (summer): 09:00 Rome is 07:00 UTC today.
        assert_eq!(
            next_local_time(ms("2026-07-01T06:00:00Z"), nine, rome),
            ms("2026-07-01T07:00:00Z")
        );
        // Past it: tomorrow.
        assert_eq!(
            next_local_time(ms("2026-07-01T07:00:00Z"), nine, rome),
            ms("2026-07-02T07:00:00Z")
        );
        // Winter: UTC+1.
        assert_eq!(
            next_local_time(ms("2026-01-10T00:00:00Z"), nine, rome),
            ms("2026-01-10T08:00:00Z")
        );
        // 02:30 does not exist in Rome on 2026-03-29 (clocks jump 02:00→03:00).
        let half_two = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        assert_eq!(
            next_local_time(ms("2026-03-29T00:00:00Z"), half_two, rome),
            ms("2026-03-29T01:30:00Z")
        );
        let ny: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            next_local_time(ms("2026-11-22T12:00:00Z"), nine, ny),
            ms("2026-11-22T14:00:00Z")
        );
    }
}
