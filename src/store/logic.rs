//! Store orchestration written once, over [`Tx`]: the statements each
//! database supplies. SQLite implements `Tx` on its writer's connection
//! (every future is ready at once; [`run_ready`] polls it there), PostgreSQL
//! on a transaction's connection. What is here decides; the `Tx` methods
//! only read and write.
//!
//! Moved here so far: starting a run (the repeat rules and the insert), what
//! a contact change fires (contact triggers, exit-condition wake-ups) and a
//! step's effects on the contact.
//! The rest of the per-store orchestration follows (see ARCHITECTURE.md).

use serde_json::{Value, json};

use super::entry::{self, EntryRefusal};
use super::run::{ContactChange, Effect, EntryPlan, RunAdvance};
use super::{ContactPatch, ContactRecord, FlowRecord, FlowStatus, Result, StoreError, plan};
use crate::domain::flow::{FlowDoc, Trigger};
use crate::domain::{ContactId, FieldDef, FlowId, ListId, Millis, RunId, WorkspaceId};

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
    /// The field definitions of the lists the contact is in.
    async fn contact_field_defs(
        &mut self,
        ws: &WorkspaceId,
        id: &ContactId,
    ) -> Result<Vec<FieldDef>>;
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
    /// Removes the contact from the list; true if it was in it.
    async fn remove_membership(
        &mut self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<bool>;
    async fn flow(&mut self, ws: &WorkspaceId, id: &FlowId) -> Result<FlowRecord>;
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
            let defs = tx.contact_field_defs(ws, contact).await?;
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
    let data = serde_json::to_string(event_data)
        .map_err(|e| StoreError::Internal(format!("event data: {e}")))?;
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
/// the change, so a trigger is never lost. The runs started.
pub(crate) async fn contact_changed<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    contact: &ContactId,
    change: &ContactChange,
    now: Millis,
) -> Result<Vec<RunId>> {
    let mut started = Vec::new();
    if change.is_empty() {
        return Ok(started);
    }
    // The wake goes first: the runs started below are active, never
    // waiting, so it cannot touch them.
    let ask = !change.added_lists.is_empty() || !change.changed_fields.is_empty();
    if !tx
        .wake_exits_and_find_triggers(ws, contact, now, ask)
        .await?
    {
        return Ok(started);
    }
    let empty = json!({});
    for list in &change.added_lists {
        for (flow, version, doc) in tx.triggered_flows(ws, "list_added", list.as_str()).await? {
            if let Some(plan) = EntryPlan::of(&doc)
                && let Ok(run) =
                    start_run(tx, ws, &flow, version, &plan, contact, &empty, now).await?
            {
                started.push(run);
            }
        }
    }
    for (field, value) in &change.changed_fields {
        for (flow, version, doc) in tx.triggered_flows(ws, "field_changed", field).await? {
            if !doc.field_trigger_fires(value.as_ref()) {
                continue;
            }
            let data = json!({ "field": field, "value": value });
            if let Some(plan) = EntryPlan::of(&doc)
                && let Ok(run) =
                    start_run(tx, ws, &flow, version, &plan, contact, &data, now).await?
            {
                started.push(run);
            }
        }
    }
    Ok(started)
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
