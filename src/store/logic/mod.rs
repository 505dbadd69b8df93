//! Store orchestration written once, over [`Tx`]: the statements each
//! database supplies. SQLite implements `Tx` on its writer's connection
//! (every future is ready at once; [`run_ready`] polls it there), PostgreSQL
//! on a transaction's connection. What is here decides; the `Tx` methods
//! only read and write.
//!
//! Here: entering a flow, upserting and patching a contact, memberships,
//! what a contact change fires (contact triggers, exit-condition wake-ups),
//! starting runs, a step's effects, recording events and completing the
//! engine's advances. Claims keep their own SQL per store (see
//! ARCHITECTURE.md). `batch` holds the same writes for several callers in
//! one transaction (PostgreSQL's batching writer).

pub(crate) mod batch;

use serde_json::{Value, json};

use super::entry::{self, EntryRefusal};
use super::run::{
    AdvanceOutcome, ContactChange, Effect, EntryPlan, EventIn, EventRecorded, RunAdvance,
};
use super::{
    ContactPatch, ContactRecord, ContactUpsert, EntryOutcome, EntryRequest, EntryResult,
    FlowRecord, FlowStatus, Membership, Result, StoreError, Upserted, plan,
};
use crate::domain::flow::{FlowDoc, Trigger};
use crate::domain::{
    ContactId, Email, EventId, FieldDef, FlowId, ListId, Millis, RunId, WorkspaceId,
};

/// A run to insert.
pub(crate) struct NewRun<'a> {
    pub id: &'a RunId,
    pub ws: &'a WorkspaceId,
    pub flow: &'a FlowId,
    pub version: i64,
    pub contact: &'a ContactId,
    pub plan: &'a EntryPlan,
    /// The event data as JSON text (its length is the run's `event_bytes`).
    pub event_data: &'a str,
    pub now: Millis,
}

/// The statements of one transaction that the orchestration needs.
pub(crate) trait Tx {
    /// Whether the contact has any run of the flow, and an unfinished one.
    async fn run_counts(&mut self, flow: &FlowId, contact: &ContactId) -> Result<(bool, bool)>;
    /// Inserts a run due now; false when an unfinished run of the contact
    /// in the flow got there first (the unique index decides).
    async fn insert_run(&mut self, run: &NewRun<'_>) -> Result<bool>;
    /// Wakes the contact's waiting runs that have exit conditions (due now)
    /// and, when `ask`, says whether the workspace has an active flow with a
    /// contact trigger (`list_added`, `field_changed`).
    async fn wake_exits_and_find_triggers(
        &mut self,
        ws: &WorkspaceId,
        contact: &ContactId,
        now: Millis,
        ask: bool,
    ) -> Result<bool>;
    /// Active flows of the workspace whose trigger is `kind` with `key`,
    /// with their current version's document.
    async fn triggered_flows(
        &mut self,
        ws: &WorkspaceId,
        kind: &str,
        key: &str,
    ) -> Result<Vec<(FlowId, i64, FlowDoc)>>;
    /// The contact, locked for the rest of the transaction where the
    /// database locks rows (NotFound if it is not in the workspace).
    async fn contact_for_update(
        &mut self,
        ws: &WorkspaceId,
        id: &ContactId,
    ) -> Result<ContactRecord>;
    async fn write_contact(&mut self, ws: &WorkspaceId, contact: &ContactRecord) -> Result<()>;
    /// Whether the list is in the workspace; share-locked where the database
    /// locks rows, so it is not deleted under the write that uses it.
    async fn lock_list(&mut self, ws: &WorkspaceId, list: &ListId) -> Result<bool>;
    /// Adds the contact to the list (subscribed); true if it was not in it.
    async fn add_membership(
        &mut self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<bool>;
    /// The contact's membership of the list (NotFound if there is none).
    async fn membership(&mut self, list: &ListId, contact: &ContactId) -> Result<Membership>;
    /// Removes the contact from the list; true if it was in it.
    async fn remove_membership(
        &mut self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<bool>;
    async fn flow(&mut self, ws: &WorkspaceId, id: &FlowId) -> Result<FlowRecord>;
    /// Serialises upserts of one email until the transaction ends, across
    /// processes (PostgreSQL: an advisory lock; SQLite's one writer already
    /// does).
    async fn lock_email(&mut self, ws: &WorkspaceId, email: &Email) -> Result<()>;
    /// The contact with this email, locked for the transaction where the
    /// database locks rows.
    async fn contact_by_email(
        &mut self,
        ws: &WorkspaceId,
        email: &Email,
    ) -> Result<Option<ContactRecord>>;
    /// The field definitions of the contact's lists (if it exists) and of
    /// `lists`.
    async fn field_defs(
        &mut self,
        ws: &WorkspaceId,
        contact: Option<&ContactId>,
        lists: &[ListId],
    ) -> Result<Vec<FieldDef>>;
    /// Serialises calls with one idempotency key until the transaction
    /// ends (the second waits and replays); SQLite's writer already does.
    async fn lock_idempotency_key(
        &mut self,
        ws: &WorkspaceId,
        scope: &str,
        key: &str,
    ) -> Result<()>;
    /// The stored answer to `key` in `scope`; a Conflict if it came with
    /// another request.
    async fn idempotent_answer(
        &mut self,
        ws: &WorkspaceId,
        scope: &str,
        key: &str,
        hash: &[u8],
    ) -> Result<Option<EntryResult>>;
    async fn store_answer(
        &mut self,
        ws: &WorkspaceId,
        scope: &str,
        key: &str,
        hash: &[u8],
        answer: &EntryResult,
        now: Millis,
    ) -> Result<()>;
    /// A flow's status and inbound token, share-locked where the database
    /// locks rows (a concurrent pause or delete waits for the entry, or the
    /// entry sees its result); NotFound if it is not in the workspace.
    async fn flow_for_entry(
        &mut self,
        ws: &WorkspaceId,
        flow: &FlowId,
    ) -> Result<(FlowStatus, Option<String>)>;
    async fn insert_event(
        &mut self,
        id: &EventId,
        ws: &WorkspaceId,
        contact: &ContactId,
        ev: &EventIn,
        now: Millis,
    ) -> Result<()>;
    /// Hands the event to the contact's runs waiting for its name (and not
    /// already holding one): they are due now. How many.
    async fn resume_waiting(
        &mut self,
        contact: &ContactId,
        name: &str,
        payload: &Value,
        now: Millis,
    ) -> Result<u64>;

    /// What a store prepares of each advance before its transaction (SQLite:
    /// the history's JSON text, serialised off the writer thread).
    type Prepared;
    /// Locks the contacts (sorted ids) whose runs have effects, before any
    /// run: the lock order of every other write (a contact, then its runs).
    async fn lock_contacts(&mut self, ids: &[&str]) -> Result<()>;
    /// Which of the runs (sorted ids) `owner` still holds at `now`, locked
    /// for the transaction where the database locks rows.
    async fn held_leases(
        &mut self,
        owner: &str,
        now: Millis,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>>;
    /// Writes an advance's history rows, or buffers them for `flush`.
    async fn add_history(&mut self, adv: &RunAdvance, prepared: &Self::Prepared) -> Result<()>;
    /// Moves the run to where the advance stopped and releases its lease,
    /// or buffers the move for `flush`.
    async fn move_run(&mut self, adv: &RunAdvance, now: Millis) -> Result<()>;
    /// Writes the buffered history rows and moves.
    async fn flush(&mut self) -> Result<()>;
}

/// Stores the engine's advances, each only where `owner` still holds its
/// run's lease: contacts first, then every lease, checked at once; then per
/// run, in order, its effects (a data error ends the run there), history
/// and move. Any other error fails the whole batch, whose runs are claimed
/// again when their leases end. A store may buffer moves (one statement
/// for the batch): effects only read and write their own contact's runs,
/// so the buffer is written before the effects of a contact it holds a
/// move of, and the order each run sees is the order of the batch.
pub(crate) async fn complete_batch<T: Tx>(
    tx: &mut T,
    owner: &str,
    now: Millis,
    advances: Vec<(RunAdvance, T::Prepared)>,
) -> Result<Vec<AdvanceOutcome>> {
    let mut contacts: Vec<&str> = advances
        .iter()
        .filter(|(a, _)| !a.effects.is_empty())
        .map(|(a, _)| a.contact_id.as_str())
        .collect();
    contacts.sort_unstable();
    contacts.dedup();
    if !contacts.is_empty() {
        tx.lock_contacts(&contacts).await?;
    }
    let mut ids: Vec<&str> = advances.iter().map(|(a, _)| a.run_id.as_str()).collect();
    ids.sort_unstable();
    let held = tx.held_leases(owner, now, &ids).await?;
    let mut out = Vec::with_capacity(advances.len());
    let mut moved = std::collections::HashSet::new();
    for (mut adv, prepared) in advances {
        if !held.contains(adv.run_id.as_str()) {
            out.push(AdvanceOutcome::LeaseLost);
            continue;
        }
        if !adv.effects.is_empty() && moved.contains(&adv.contact_id) {
            tx.flush().await?;
            moved.clear();
        }
        let mut outcome = AdvanceOutcome::Applied;
        for (index, effect) in std::mem::take(&mut adv.effects) {
            if let Err(e) = apply_effect(tx, &adv, &effect, now).await {
                let error = match e {
                    StoreError::Internal(_) | StoreError::Busy(_) => return Err(e),
                    other => other.to_string(),
                };
                outcome = super::run::fail_at(&mut adv, index, error);
                break;
            }
        }
        tx.add_history(&adv, &prepared).await?;
        tx.move_run(&adv, now).await?;
        moved.insert(adv.contact_id.clone());
        out.push(outcome);
    }
    tx.flush().await?;
    Ok(out)
}

/// Records one event (IN-8): the contact (created if new), the event, the
/// runs of flows it triggers, and the runs waiting for it.
pub(crate) async fn record_event<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    ev: &EventIn,
    now: Millis,
) -> Result<EventRecorded> {
    let up = upsert_contact(
        tx,
        ws,
        &ContactUpsert {
            email: Some(ev.email.clone()),
            ..Default::default()
        },
        now,
    )
    .await?;
    let contact = &up.contact.id;
    let id = EventId::generate();
    tx.insert_event(&id, ws, contact, ev, now).await?;
    let mut runs_started = Vec::new();
    for (flow, version, doc) in tx.triggered_flows(ws, "event", &ev.name).await? {
        if let Some(plan) = EntryPlan::of(&doc)
            && let Ok(run) =
                start_run(tx, ws, &flow, version, &plan, contact, &ev.properties, now).await?
        {
            runs_started.push(run.to_string());
        }
    }
    let payload = super::run::resume_payload(&id, ev);
    let runs_resumed = tx.resume_waiting(contact, &ev.name, &payload, now).await?;
    Ok(EventRecorded {
        event_id: id.to_string(),
        contact_id: contact.to_string(),
        runs_started,
        runs_resumed,
    })
}

/// Upserts a contact by email (with its lists), and fires what the change
/// triggers. The same routine for `POST /v1/contacts`, inbound calls and
/// events.
pub(crate) async fn upsert_contact<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    input: &ContactUpsert,
    now: Millis,
) -> Result<Upserted> {
    let email = input.email.as_ref().ok_or_else(plan::email_required)?;
    tx.lock_email(ws, email).await?;
    let existing = tx.contact_by_email(ws, email).await?;
    let before = existing.as_ref().map(|e| e.fields.clone());
    let defs = tx
        .field_defs(ws, existing.as_ref().map(|e| &e.id), &input.lists)
        .await?;
    let out = plan::upsert(existing, &defs, input, now)?;
    let mut change = ContactChange::default();
    if out.changed {
        tx.write_contact(ws, &out.contact).await?;
        change.changed_fields = ContactChange::fields(before.as_ref(), &out.contact.fields);
        change.other = true;
    }
    for list in &input.lists {
        if tx.add_membership(ws, list, &out.contact.id).await? {
            change.added_lists.push(list.clone());
        }
    }
    contact_changed(tx, ws, &out.contact.id, &change, now).await?;
    Ok(out)
}

/// Patches a contact (`PATCH /v1/contacts/{id}`), and fires what the change
/// triggers.
pub(crate) async fn patch_contact<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    id: &ContactId,
    patch: &ContactPatch,
    now: Millis,
) -> Result<ContactRecord> {
    if let Some(email) = &patch.email {
        tx.lock_email(ws, email).await?;
    }
    let existing = tx.contact_for_update(ws, id).await?;
    let defs = tx.field_defs(ws, Some(id), &[]).await?;
    let before = existing.clone();
    let updated = plan::patch(existing, &defs, patch, now)?;
    tx.write_contact(ws, &updated).await?;
    let change = ContactChange {
        changed_fields: ContactChange::fields(Some(&before.fields), &updated.fields),
        other: before.email != updated.email
            || before.phone != updated.phone
            || before.status != updated.status,
        ..Default::default()
    };
    contact_changed(tx, ws, id, &change, now).await?;
    Ok(updated)
}

/// Adds a contact to a list (`POST /v1/lists/{id}/members`), and fires
/// what joining triggers. The list is locked before the contact, as in
/// every write that names both.
pub(crate) async fn add_member<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    list: &ListId,
    contact: &ContactId,
    now: Millis,
) -> Result<Membership> {
    if !tx.lock_list(ws, list).await? {
        return Err(StoreError::not_found("list", list));
    }
    tx.contact_for_update(ws, contact).await?;
    if tx.add_membership(ws, list, contact).await? {
        let change = ContactChange {
            added_lists: vec![list.clone()],
            ..Default::default()
        };
        contact_changed(tx, ws, contact, &change, now).await?;
    }
    tx.membership(list, contact).await
}

/// Removes a contact from a list; NotFound if it was not in it.
pub(crate) async fn remove_member<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    list: &ListId,
    contact: &ContactId,
    now: Millis,
) -> Result<()> {
    if !tx.lock_list(ws, list).await? {
        return Err(StoreError::not_found("list", list));
    }
    tx.contact_for_update(ws, contact).await?;
    if !tx.remove_membership(ws, list, contact).await? {
        return Err(StoreError::not_found(
            "membership",
            format!("{list}/{contact}"),
        ));
    }
    let change = ContactChange {
        other: true,
        ..Default::default()
    };
    contact_changed(tx, ws, contact, &change, now).await
}

/// A contact entering a flow (an inbound call), all at once: replay a
/// stored answer to its idempotency key (or refuse the key with another
/// body), check the flow is still active with the token the call came
/// through, upsert the contact, start the run if the repeat rules allow,
/// store the answer.
pub(crate) async fn enter<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    req: &EntryRequest,
) -> Result<EntryOutcome> {
    let scope = req.flow_id.as_str();
    if let Some((key, hash)) = &req.idempotency {
        tx.lock_idempotency_key(ws, scope, key).await?;
        if let Some(result) = tx.idempotent_answer(ws, scope, key, hash).await? {
            return Ok(EntryOutcome {
                result,
                replayed: true,
            });
        }
    }
    let (status, token) = tx.flow_for_entry(ws, &req.flow_id).await?;
    entry::check_flow(status, token.as_deref(), req)?;
    let now = super::now_millis();
    let up = upsert_contact(tx, ws, &req.contact, now).await?;
    let plan = EntryPlan {
        first_step: req.first_step.clone(),
        repeat: req.repeat,
        has_exits: req.has_exits,
    };
    let started = start_run(
        tx,
        ws,
        &req.flow_id,
        req.flow_version,
        &plan,
        &up.contact.id,
        &req.event_data,
        now,
    )
    .await?;
    let result = entry_result(&up.contact.id, started);
    if let Some((key, hash)) = &req.idempotency {
        tx.store_answer(ws, scope, key, hash, &result, now).await?;
    }
    Ok(EntryOutcome {
        result,
        replayed: false,
    })
}

/// An entry's answer: the contact, and the run or why none started.
fn entry_result(
    contact: &ContactId,
    started: std::result::Result<RunId, EntryRefusal>,
) -> EntryResult {
    let (run_id, not_started) = match started {
        Ok(id) => (Some(id.to_string()), None),
        Err(why) => (None, Some(why.as_str().to_owned())),
    };
    EntryResult {
        contact_id: contact.to_string(),
        run_id,
        not_started,
    }
}

/// The event data as stored on a run (its length is `event_bytes`).
fn event_text(event_data: &Value) -> Result<String> {
    serde_json::to_string(event_data).map_err(|e| StoreError::Internal(format!("event data: {e}")))
}

/// Applies one effect of a step to the run's contact, with what the change
/// fires, in the transaction that moves the run. A data error (the list was
/// deleted since the flow was saved) ends the run at that step.
pub(crate) async fn apply_effect<T: Tx>(
    tx: &mut T,
    adv: &RunAdvance,
    effect: &Effect,
    now: Millis,
) -> Result<()> {
    let ws = &adv.workspace_id;
    let contact = &adv.contact_id;
    match effect {
        Effect::SetField { name, value } => {
            let existing = tx.contact_for_update(ws, contact).await?;
            let defs = tx.field_defs(ws, Some(contact), &[]).await?;
            let mut fields = serde_json::Map::new();
            fields.insert(name.clone(), value.clone());
            let before = existing.fields.clone();
            let patch = ContactPatch {
                fields,
                ..Default::default()
            };
            let updated = plan::patch(existing, &defs, &patch, now)?;
            if updated.fields != before {
                tx.write_contact(ws, &updated).await?;
                let change = ContactChange {
                    changed_fields: ContactChange::fields(Some(&before), &updated.fields),
                    ..Default::default()
                };
                contact_changed(tx, ws, contact, &change, now).await?;
            }
        }
        Effect::AddToList(list) => {
            if !tx.lock_list(ws, list).await? {
                return Err(StoreError::not_found("list", list));
            }
            if tx.add_membership(ws, list, contact).await? {
                let change = ContactChange {
                    added_lists: vec![list.clone()],
                    ..Default::default()
                };
                contact_changed(tx, ws, contact, &change, now).await?;
            }
        }
        Effect::RemoveFromList(list) => {
            if !tx.lock_list(ws, list).await? {
                return Err(StoreError::not_found("list", list));
            }
            if tx.remove_membership(ws, list, contact).await? {
                let change = ContactChange {
                    other: true,
                    ..Default::default()
                };
                contact_changed(tx, ws, contact, &change, now).await?;
            }
        }
        Effect::StartFlow { flow, event_data } => {
            let target = tx.flow(ws, flow).await?;
            if target.status == FlowStatus::Active
                && matches!(target.document.trigger, Trigger::Flow)
                && let Some(plan) = EntryPlan::of(&target.document)
            {
                let _ = start_run(
                    tx,
                    ws,
                    flow,
                    target.version,
                    &plan,
                    contact,
                    event_data,
                    now,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Starts a run of `flow` for `contact` if the repeat rules allow (FL-3):
/// the run's id, or why none started.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_run<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    flow: &FlowId,
    version: i64,
    plan: &EntryPlan,
    contact: &ContactId,
    event_data: &Value,
    now: Millis,
) -> Result<std::result::Result<RunId, EntryRefusal>> {
    let (any_run, active_run) = tx.run_counts(flow, contact).await?;
    if let Some(why) = entry::run_decision(plan.repeat, any_run, active_run) {
        return Ok(Err(why));
    }
    let id = RunId::generate();
    let data = event_text(event_data)?;
    let run = NewRun {
        id: &id,
        ws,
        flow,
        version,
        contact,
        plan,
        event_data: &data,
        now,
    };
    // Engine paths (a step's effects, the triggers they fire) do not hold
    // the per-email lock, so another process may start the same run between
    // the count and here: the unique index decides, without an error.
    if tx.insert_run(&run).await? {
        Ok(Ok(id))
    } else {
        Ok(Err(EntryRefusal::RunActive))
    }
}

/// After a contact changed: starts the flows triggered by the lists it
/// joined and the fields that changed, and wakes its waiting runs that have
/// exit conditions so the engine checks them (FL-4). In the transaction of
/// the change, so a trigger is never lost.
pub(crate) async fn contact_changed<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    contact: &ContactId,
    change: &ContactChange,
    now: Millis,
) -> Result<()> {
    if change.is_empty() {
        return Ok(());
    }
    // The wake goes first: the runs started below are active, never
    // waiting, so it cannot touch them.
    let ask = !change.added_lists.is_empty() || !change.changed_fields.is_empty();
    if tx
        .wake_exits_and_find_triggers(ws, contact, now, ask)
        .await?
    {
        start_triggered(tx, ws, contact, change, now).await?;
    }
    Ok(())
}

/// Starts the flows triggered by the lists the contact joined and the
/// fields that changed (once the workspace is known to have such flows).
pub(crate) async fn start_triggered<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    contact: &ContactId,
    change: &ContactChange,
    now: Millis,
) -> Result<()> {
    let empty = json!({});
    for list in &change.added_lists {
        for (flow, version, doc) in tx.triggered_flows(ws, "list_added", list.as_str()).await? {
            if let Some(plan) = EntryPlan::of(&doc) {
                // A contact that already went through, or is in, the flow
                // is not an error here: the trigger simply starts nothing.
                let _ = start_run(tx, ws, &flow, version, &plan, contact, &empty, now).await?;
            }
        }
    }
    for (field, value) in &change.changed_fields {
        for (flow, version, doc) in tx.triggered_flows(ws, "field_changed", field).await? {
            if !doc.field_trigger_fires(value.as_ref()) {
                continue;
            }
            let data = json!({ "field": field, "value": value });
            if let Some(plan) = EntryPlan::of(&doc) {
                let _ = start_run(tx, ws, &flow, version, &plan, contact, &data, now).await?;
            }
        }
    }
    Ok(())
}

/// Runs orchestration over a `Tx` whose futures are all ready at once (the
/// SQLite writer's): polls it once, on the calling thread.
pub(crate) fn run_ready<F: std::future::Future<Output = Result<O>>, O>(f: F) -> Result<O> {
    use futures_util::FutureExt;
    f.now_or_never().unwrap_or_else(|| {
        Err(StoreError::Internal(
            "a store step waited on a synchronous store (a bug)".into(),
        ))
    })
}
