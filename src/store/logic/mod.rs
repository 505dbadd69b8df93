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
pub(crate) mod queue;

use serde_json::{Value, json};

use super::sql::Stmt;
use super::{contacts, run};

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

/// A write whose orchestration is here: each store runs it in one
/// transaction of its own ([`Store::logic_write`]), and the `Store` trait's
/// methods for these writes are built on it.
///
/// [`Store::logic_write`]: super::Store::logic_write
///
/// No `Debug`: an entry carries its flow's inbound token and the caller's
/// body, which must not reach a log.
pub enum Op {
    /// `POST /v1/contacts`.
    Upsert(WorkspaceId, ContactUpsert),
    /// An inbound call entering a flow.
    Enter(WorkspaceId, EntryRequest),
    /// `PATCH /v1/contacts/{id}`.
    Patch(WorkspaceId, ContactId, ContactPatch),
    AddMember(WorkspaceId, ListId, ContactId),
    RemoveMember(WorkspaceId, ListId, ContactId),
    /// Events at one time, each in a savepoint of its own.
    Events(WorkspaceId, Vec<EventIn>, Millis),
}

/// What an [`Op`] did.
#[derive(Debug)]
pub enum OpDone {
    Upserted(Upserted),
    Entered(EntryOutcome),
    Contact(ContactRecord),
    Member(Membership),
    Removed,
    Events(Vec<Result<EventRecorded>>),
}

impl OpDone {
    /// The answer `pick` finds; another kind of answer is a store failure.
    pub fn take<T>(self, pick: impl FnOnce(Self) -> Option<T>) -> Result<T> {
        pick(self).ok_or_else(|| StoreError::Internal("a write answered as another kind".into()))
    }
}

/// Opens a savepoint inside `tx`; [`end_savepoint`] closes it.
pub(crate) async fn savepoint<T: Tx>(tx: &mut T) -> Result<()> {
    tx.exec(&Stmt::new("SAVEPOINT item", vec![]))
        .await
        .map(drop)
}

/// Closes the savepoint [`savepoint`] opened, keeping what was done inside
/// it or, when `keep` is false, undoing it alone.
pub(crate) async fn end_savepoint<T: Tx>(tx: &mut T, keep: bool) -> Result<()> {
    if !keep {
        tx.exec(&Stmt::new("ROLLBACK TO SAVEPOINT item", vec![]))
            .await?;
    }
    tx.exec(&Stmt::new("RELEASE SAVEPOINT item", vec![]))
        .await
        .map(drop)
}

/// Runs `op` in `tx` (the caller commits).
pub(crate) async fn perform<T: Tx>(tx: &mut T, op: &Op, now: Millis) -> Result<OpDone> {
    Ok(match op {
        Op::Upsert(ws, input) => OpDone::Upserted(upsert_contact(tx, ws, input, now).await?),
        Op::Enter(ws, req) => OpDone::Entered(enter(tx, ws, req, now).await?),
        Op::Patch(ws, id, patch) => OpDone::Contact(patch_contact(tx, ws, id, patch, now).await?),
        Op::AddMember(ws, list, contact) => {
            OpDone::Member(add_member(tx, ws, list, contact, now).await?)
        }
        Op::RemoveMember(ws, list, contact) => {
            remove_member(tx, ws, list, contact, now).await?;
            OpDone::Removed
        }
        Op::Events(ws, events, at) => {
            let mut out = Vec::with_capacity(events.len());
            for ev in events {
                // A bad event undoes only itself.
                savepoint(tx).await?;
                let one = record_event(tx, ws, ev, *at).await;
                end_savepoint(tx, one.is_ok()).await?;
                match one {
                    Err(e @ (StoreError::Internal(_) | StoreError::Busy(_))) => return Err(e),
                    other => out.push(other),
                }
            }
            OpDone::Events(out)
        }
    })
}

/// A run to insert.
pub struct NewRun<'a> {
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
    /// Whether reads "for update" take row locks (PostgreSQL). SQLite's
    /// one writer holds every row already.
    const ROW_LOCKS: bool;
    /// Runs a shared statement (`store::sql`) in this transaction.
    async fn exec(&mut self, stmt: &super::sql::Stmt) -> Result<super::sql::Done>;
    /// Whether the contact has any run of the flow, and an unfinished one.
    async fn run_counts(&mut self, flow: &FlowId, contact: &ContactId) -> Result<(bool, bool)> {
        use super::sql::RowExt;
        let done = self.exec(&run::counts(flow, contact)).await?;
        let row = done.row("run counts")?;
        Ok((row.int(0)? > 0, row.int(1)? > 0))
    }
    /// Inserts a run due now; false when an unfinished run of the contact
    /// in the flow got there first (the unique index decides).
    async fn insert_run(&mut self, new: &NewRun<'_>) -> Result<bool> {
        Ok(self.exec(&run::insert(new)).await?.changed == 1)
    }
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
    ) -> Result<Vec<(FlowId, i64, FlowDoc)>> {
        run::triggered_flows(&self.exec(&run::triggered(ws, kind, key)).await?)
    }
    /// The contact, locked for the rest of the transaction where the
    /// database locks rows (NotFound if it is not in the workspace).
    async fn contact_for_update(
        &mut self,
        ws: &WorkspaceId,
        id: &ContactId,
    ) -> Result<ContactRecord> {
        let stmt = contacts::by_id(ws, id, Self::ROW_LOCKS);
        contacts::one(&self.exec(&stmt).await?)
    }
    async fn write_contact(&mut self, ws: &WorkspaceId, contact: &ContactRecord) -> Result<()> {
        self.exec(&contacts::write(ws, contact)?).await.map(drop)
    }
    /// Whether the list is in the workspace; share-locked where the database
    /// locks rows, so it is not deleted under the write that uses it.
    async fn lock_list(&mut self, ws: &WorkspaceId, list: &ListId) -> Result<bool> {
        let stmt = contacts::lock_list(ws, list, Self::ROW_LOCKS);
        Ok(!self.exec(&stmt).await?.rows.is_empty())
    }
    /// Adds the contact to the list (subscribed); true if it was not in it.
    async fn add_membership(
        &mut self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
        now: Millis,
    ) -> Result<bool> {
        let stmt = contacts::subscribe(ws, list, contact, now);
        Ok(self.exec(&stmt).await?.changed > 0)
    }
    /// The contact's membership of the list (NotFound if there is none).
    async fn membership(&mut self, list: &ListId, contact: &ContactId) -> Result<Membership> {
        let done = self
            .exec(&crate::store::contacts::membership(list, contact))
            .await?;
        crate::store::contacts::membership_row(done.row("membership")?)
    }
    /// Removes the contact from the list; true if it was in it.
    async fn remove_membership(
        &mut self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<bool> {
        let done = self
            .exec(&crate::store::contacts::remove_membership(
                ws, list, contact,
            ))
            .await?;
        Ok(done.changed > 0)
    }
    async fn flow(&mut self, ws: &WorkspaceId, id: &FlowId) -> Result<FlowRecord> {
        crate::store::flows::one(&self.exec(&crate::store::flows::get(ws, id)).await?)
    }
    /// Serialises upserts of one email until the transaction ends, across
    /// processes (PostgreSQL: an advisory lock; SQLite's one writer already
    /// does).
    async fn lock_email(&mut self, _ws: &WorkspaceId, _email: &Email) -> Result<()> {
        Ok(()) // a single writer (SQLite) serialises every write already
    }
    /// The contact with this email, locked for the transaction where the
    /// database locks rows.
    async fn contact_by_email(
        &mut self,
        ws: &WorkspaceId,
        email: &Email,
    ) -> Result<Option<ContactRecord>> {
        let stmt = contacts::by_email(ws, email, Self::ROW_LOCKS);
        contacts::maybe_one(&self.exec(&stmt).await?)
    }
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
        _ws: &WorkspaceId,
        _scope: &str,
        _key: &str,
    ) -> Result<()> {
        Ok(()) // a single writer (SQLite) serialises every write already
    }
    /// The stored answer to `key` in `scope`; a Conflict if it came with
    /// another request.
    async fn idempotent_answer(
        &mut self,
        ws: &WorkspaceId,
        scope: &str,
        key: &str,
        hash: &[u8],
    ) -> Result<Option<EntryResult>> {
        let done = self
            .exec(&super::entry::answer_stmt(ws, scope, key))
            .await?;
        super::entry::stored_answer(&done, hash)
    }
    async fn store_answer(
        &mut self,
        ws: &WorkspaceId,
        scope: &str,
        key: &str,
        hash: &[u8],
        answer: &EntryResult,
        now: Millis,
    ) -> Result<()> {
        let stmt = super::entry::store_answer_stmt(ws, scope, key, hash, answer, now)?;
        self.exec(&stmt).await.map(drop)
    }
    /// A flow's status and inbound token, share-locked where the database
    /// locks rows (a concurrent pause or delete waits for the entry, or the
    /// entry sees its result); NotFound if it is not in the workspace.
    async fn flow_for_entry(
        &mut self,
        ws: &WorkspaceId,
        flow: &FlowId,
    ) -> Result<(FlowStatus, Option<String>)> {
        use super::sql::RowExt;
        use crate::domain::Stored;
        // Only the status: loading (and parsing) the document here cost
        // more than the rest of the entry on SQLite's one writer thread.
        let done = self
            .exec(&run::flow_for_entry(ws, flow, Self::ROW_LOCKS))
            .await?;
        let row = done.row("flow")?;
        Ok((FlowStatus::decode(row.str_at(0)?)?, row.opt_text(1)?))
    }
    async fn insert_event(
        &mut self,
        id: &EventId,
        ws: &WorkspaceId,
        contact: &ContactId,
        ev: &EventIn,
        now: Millis,
    ) -> Result<()> {
        let stmt = run::insert_event(id, ws, contact, ev, now);
        self.exec(&stmt).await.map(drop)
    }
    /// Hands the event to the contact's runs waiting for its name (and not
    /// already holding one): they are due now. How many.
    async fn resume_waiting(
        &mut self,
        contact: &ContactId,
        name: &str,
        payload: &Value,
        now: Millis,
    ) -> Result<u64> {
        let stmt = run::resume_waiting(contact, name, payload, now);
        Ok(self.exec(&stmt).await?.changed)
    }

    /// What a store prepares of each advance before its transaction (SQLite:
    /// the history's JSON text, serialised off the writer thread).
    type Prepared;
    /// Locks the contacts (sorted ids) whose runs have effects, before any
    /// run: the lock order of every other write (a contact, then its runs).
    async fn lock_contacts(&mut self, _ids: &[&str]) -> Result<()> {
        Ok(()) // a single writer (SQLite) serialises every write already
    }
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
    async fn flush(&mut self) -> Result<()> {
        Ok(()) // nothing buffered unless a store buffers (PostgreSQL)
    }

    // The same statements for many rows at once, used by batches (`batch`
    // and `complete_batch`). By default one row at a time; PostgreSQL
    // sends each as one statement.

    /// Takes the upsert lock of every email (given sorted, distinct).
    async fn lock_emails(&mut self, keys: &[(&WorkspaceId, &Email)]) -> Result<()> {
        for (ws, email) in keys {
            self.lock_email(ws, email).await?;
        }
        Ok(())
    }
    /// The contact with each email, in the order asked, locked.
    async fn contacts_by_emails(
        &mut self,
        keys: &[(&WorkspaceId, &Email)],
    ) -> Result<Vec<Option<ContactRecord>>> {
        let mut out = Vec::with_capacity(keys.len());
        for (ws, email) in keys {
            out.push(self.contact_by_email(ws, email).await?);
        }
        Ok(out)
    }
    /// Each contact (None if it is not in its workspace), locked.
    async fn contacts_for_update(
        &mut self,
        ids: &[(&WorkspaceId, &ContactId)],
    ) -> Result<Vec<Option<ContactRecord>>> {
        let mut out = Vec::with_capacity(ids.len());
        for (ws, id) in ids {
            out.push(match self.contact_for_update(ws, id).await {
                Ok(c) => Some(c),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }
    /// Each item's field definitions, as `field_defs` gives them (an
    /// unknown list is that item's error, not the batch's).
    async fn field_defs_each(
        &mut self,
        items: &[(&WorkspaceId, Option<&ContactId>, &[ListId])],
    ) -> Result<Vec<Result<Vec<FieldDef>>>> {
        let mut out = Vec::with_capacity(items.len());
        for (ws, contact, lists) in items {
            out.push(match self.field_defs(ws, *contact, lists).await {
                Ok(defs) => Ok(defs),
                Err(e) => Err(batch::item_error(e)?),
            });
        }
        Ok(out)
    }
    async fn write_contacts(&mut self, rows: &[(&WorkspaceId, &ContactRecord)]) -> Result<()> {
        for (ws, contact) in rows {
            self.write_contact(ws, contact).await?;
        }
        Ok(())
    }
    /// Whether each list is in its workspace, share-locked.
    async fn lock_lists(&mut self, lists: &[(&WorkspaceId, &ListId)]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(lists.len());
        for (ws, list) in lists {
            out.push(self.lock_list(ws, list).await?);
        }
        Ok(out)
    }
    /// Adds each contact to its list (subscribed); true where it was not in
    /// it (a pair given twice is new at most once).
    async fn add_memberships(
        &mut self,
        rows: &[(&WorkspaceId, &ListId, &ContactId)],
        now: Millis,
    ) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(rows.len());
        for (ws, list, contact) in rows {
            out.push(self.add_membership(ws, list, contact, now).await?);
        }
        Ok(out)
    }
    /// `wake_exits_and_find_triggers` for each (workspace, contact, ask).
    async fn wake_exits_each(
        &mut self,
        rows: &[(&WorkspaceId, &ContactId, bool)],
        now: Millis,
    ) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(rows.len());
        for (ws, contact, ask) in rows {
            out.push(
                self.wake_exits_and_find_triggers(ws, contact, now, *ask)
                    .await?,
            );
        }
        Ok(out)
    }
    /// `run_counts` for each (flow, contact).
    async fn run_counts_each(
        &mut self,
        rows: &[(&FlowId, &ContactId)],
    ) -> Result<Vec<(bool, bool)>> {
        let mut out = Vec::with_capacity(rows.len());
        for (flow, contact) in rows {
            out.push(self.run_counts(flow, contact).await?);
        }
        Ok(out)
    }
    /// `insert_run` for each run; true where it was inserted.
    async fn insert_runs(&mut self, runs: &[NewRun<'_>]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            out.push(self.insert_run(run).await?);
        }
        Ok(out)
    }
}

/// Stores the engine's advances, each only where `owner` still holds its
/// run's lease: contacts first, then every lease, checked at once. The
/// rest goes in rounds of advances of distinct contacts (a second advance
/// of a contact starts the next round, after the first's move is written),
/// so the advances of a round are independent: effects only read and write
/// their own contact and its runs. A data error in an effect ends that run
/// there; any other error fails the whole batch, whose runs are claimed
/// again when their leases end.
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
    let mut round = Vec::new();
    let mut in_round = std::collections::HashSet::new();
    for (i, (adv, prepared)) in advances.into_iter().enumerate() {
        if !held.contains(adv.run_id.as_str()) {
            out.push(AdvanceOutcome::LeaseLost);
            continue;
        }
        out.push(AdvanceOutcome::Applied);
        if !in_round.insert(adv.contact_id.clone()) {
            complete_round(tx, std::mem::take(&mut round), &mut out, now).await?;
            tx.flush().await?;
            in_round.clear();
            in_round.insert(adv.contact_id.clone());
        }
        round.push((i, adv, prepared));
    }
    complete_round(tx, round, &mut out, now).await?;
    tx.flush().await?;
    Ok(out)
}

/// A round of advances of distinct contacts: their effects in waves (every
/// advance's first effect, then every second one, …; each wave's effects
/// of one kind as one call for all), then each advance's history and move.
async fn complete_round<T: Tx>(
    tx: &mut T,
    mut round: Vec<(usize, RunAdvance, T::Prepared)>,
    out: &mut [AdvanceOutcome],
    now: Millis,
) -> Result<()> {
    let mut queues: Vec<std::collections::VecDeque<(usize, Effect)>> = round
        .iter_mut()
        .map(|(_, adv, _)| std::mem::take(&mut adv.effects).into())
        .collect();
    loop {
        let wave: Vec<(usize, usize, Effect)> = queues
            .iter_mut()
            .enumerate()
            .filter_map(|(k, q)| q.pop_front().map(|(index, e)| (k, index, e)))
            .collect();
        if wave.is_empty() {
            break;
        }
        let advs: Vec<&RunAdvance> = wave.iter().map(|(k, ..)| &round[*k].1).collect();
        let effects: Vec<&Effect> = wave.iter().map(|(.., e)| e).collect();
        let results = apply_effects(tx, &advs, &effects, now).await?;
        for ((k, index, _), result) in wave.iter().zip(results) {
            if let Err(error) = result {
                let (i, adv, _) = &mut round[*k];
                out[*i] = super::run::fail_at(adv, *index, error.to_string());
                queues[*k].clear();
            }
        }
    }
    for (_, adv, prepared) in &round {
        tx.add_history(adv, prepared).await?;
        tx.move_run(adv, now).await?;
    }
    Ok(())
}

/// One effect of each advance (distinct contacts), with what each change
/// fires, in the transaction that moves the runs: each effect's data error
/// (the list was deleted since the flow was saved), or the database error
/// that fails the batch. Field updates and list joins go as one call each;
/// leaving a list and starting a flow, rarer, one at a time.
async fn apply_effects<T: Tx>(
    tx: &mut T,
    advs: &[&RunAdvance],
    effects: &[&Effect],
    now: Millis,
) -> Result<Vec<std::result::Result<(), StoreError>>> {
    let n = advs.len();
    let mut results: Vec<std::result::Result<(), StoreError>> = (0..n).map(|_| Ok(())).collect();
    let mut changes: Vec<ContactChange> = (0..n).map(|_| ContactChange::default()).collect();
    let who = |k: usize| (&advs[k].workspace_id, &advs[k].contact_id);

    let sets: Vec<usize> = (0..n)
        .filter(|&k| matches!(effects[k], Effect::SetField { .. }))
        .collect();
    if !sets.is_empty() {
        let ids: Vec<(&WorkspaceId, &ContactId)> = sets.iter().map(|&k| who(k)).collect();
        let found = tx.contacts_for_update(&ids).await?;
        let asks: Vec<(&WorkspaceId, Option<&ContactId>, &[ListId])> =
            ids.iter().map(|(ws, c)| (*ws, Some(*c), &[][..])).collect();
        let defs = tx.field_defs_each(&asks).await?;
        let mut writes = Vec::new();
        for ((&k, found), defs) in sets.iter().zip(found).zip(defs) {
            let Effect::SetField { name, value } = effects[k] else {
                continue;
            };
            let set = match (found, defs) {
                (None, _) => Err(StoreError::not_found("contact", &advs[k].contact_id)),
                (_, Err(e)) => Err(e),
                (Some(existing), Ok(defs)) => set_field(existing, &defs, name, value, now),
            };
            match set {
                Ok(Some((updated, change))) => {
                    changes[k] = change;
                    writes.push((k, updated));
                }
                Ok(None) => {}
                Err(e) => results[k] = Err(batch::item_error(e)?),
            }
        }
        if !writes.is_empty() {
            let rows: Vec<(&WorkspaceId, &ContactRecord)> = writes
                .iter()
                .map(|(k, c)| (&advs[*k].workspace_id, c))
                .collect();
            tx.write_contacts(&rows).await?;
        }
    }

    let adds: Vec<(usize, &ListId)> = (0..n)
        .filter_map(|k| match effects[k] {
            Effect::AddToList(list) => Some((k, list)),
            _ => None,
        })
        .collect();
    if !adds.is_empty() {
        let lists: Vec<(&WorkspaceId, &ListId)> = adds
            .iter()
            .map(|(k, list)| (&advs[*k].workspace_id, *list))
            .collect();
        let there = tx.lock_lists(&lists).await?;
        let mut joins = Vec::new();
        for ((k, list), there) in adds.into_iter().zip(there) {
            if there {
                joins.push((k, list));
            } else {
                results[k] = Err(StoreError::not_found("list", list));
            }
        }
        let rows: Vec<(&WorkspaceId, &ListId, &ContactId)> = joins
            .iter()
            .map(|(k, list)| (&advs[*k].workspace_id, *list, &advs[*k].contact_id))
            .collect();
        if !rows.is_empty() {
            let joined = tx.add_memberships(&rows, now).await?;
            for ((k, list), new) in joins.into_iter().zip(joined) {
                if new {
                    changes[k].added_lists.push(list.clone());
                }
            }
        }
    }

    // Events for subscriptions: the subscriptions read once for the wave.
    let emits: Vec<usize> = (0..n)
        .filter(|&k| matches!(effects[k], Effect::Emit { .. }))
        .collect();
    if !emits.is_empty() {
        let subs = tx.exec(&super::outbound::subscriptions_stmt()).await?;
        if !subs.rows.is_empty() {
            for &k in &emits {
                let Effect::Emit { event, payload } = effects[k] else {
                    continue;
                };
                let (ws, contact) = who(k);
                let mut payload = payload.clone();
                payload["run_id"] = Value::from(advs[k].run_id.as_str());
                for sub in super::outbound::wanting(&subs.rows, ws, event)? {
                    let d = super::outbound::event_delivery(
                        &sub,
                        ws,
                        event,
                        &payload,
                        Some(advs[k].run_id.as_str()),
                        Some(contact.as_str()),
                    );
                    send_webhook(tx, &d, now).await?;
                }
            }
        }
    }

    for k in 0..n {
        let (ws, contact) = who(k);
        let done = match effects[k] {
            Effect::RemoveFromList(list) => leave_list(tx, ws, list, contact).await.map(|left| {
                changes[k].other = left;
            }),
            Effect::StartFlow { flow, event_data } => {
                start_flow(tx, ws, flow, contact, event_data, now).await
            }
            Effect::SendWebhook {
                delivery,
                webhook,
                step,
                context,
            } => {
                let d = super::outbound::NewDelivery {
                    id: delivery.clone(),
                    workspace_id: ws.clone(),
                    webhook_id: webhook.clone(),
                    event_type: "flow.step".into(),
                    flow_id: None,
                    run_id: Some(advs[k].run_id.to_string()),
                    contact_id: Some(contact.to_string()),
                    step: Some(step.clone()),
                    context: context.clone(),
                };
                send_webhook(tx, &d, now).await
            }
            Effect::SetField { .. } | Effect::AddToList(_) | Effect::Emit { .. } => Ok(()),
        };
        if let Err(e) = done {
            results[k] = Err(batch::item_error(e)?);
        }
    }

    let changed: Vec<usize> = (0..n)
        .filter(|&k| results[k].is_ok() && !changes[k].is_empty())
        .collect();
    if !changed.is_empty() {
        let wakes: Vec<(&WorkspaceId, &ContactId, bool)> = changed
            .iter()
            .map(|&k| (who(k).0, who(k).1, changes[k].may_trigger()))
            .collect();
        let fire = tx.wake_exits_each(&wakes, now).await?;
        for (&k, fire) in changed.iter().zip(fire) {
            let (ws, contact) = who(k);
            if fire && let Err(e) = start_triggered(tx, ws, contact, &changes[k], now).await {
                results[k] = Err(batch::item_error(e)?);
            }
        }
    }
    Ok(results)
}

/// A contact's status became unsubscribed, complained or bounced (WH-13):
/// a delivery to each subscription that wants the event, in the
/// transaction of the change. New contacts created so are not announced
/// (an import of unsubscribed contacts is not a wave of unsubscribes).
/// `list` is the list the write named (SendPulse's `book_id`), `flow` the
/// flow whose inbound call made the change.
pub(crate) async fn status_changed<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    before: Option<crate::domain::ContactStatus>,
    after: &ContactRecord,
    list: Option<&ListId>,
    flow: Option<&FlowId>,
    now: Millis,
) -> Result<()> {
    use crate::domain::ContactStatus as S;
    let event = match after.status {
        S::Unsubscribed => "contact.unsubscribed",
        S::Complained => "contact.spam_complaint",
        S::Bounced => "contact.bounced",
        S::Subscribed => return Ok(()),
    };
    if before.is_none_or(|b| b == after.status) {
        return Ok(());
    }
    let subs = tx.exec(&super::outbound::subscriptions_stmt()).await?;
    let wanted = super::outbound::wanting(&subs.rows, ws, event)?;
    if wanted.is_empty() {
        return Ok(());
    }
    let payload = serde_json::json!({
        "event": match after.status {
            S::Unsubscribed => "unsubscribe",
            S::Complained => "spam",
            _ => "bounce",
        },
        "timestamp": now.div_euclid(1000),
        "email": after.email.as_str(),
        "from_all": 1,
        "reason": Value::Null,
        "book_id": list.map(ListId::as_str),
        "categories": "",
        "task_id": Value::Null,
        "source": if flow.is_some() { "inbound" } else { "api" },
        "automation_id": flow.map(FlowId::as_str),
        "contact_id": after.id.as_str(),
    });
    for sub in wanted {
        let d = super::outbound::event_delivery(
            &sub,
            ws,
            event,
            &payload,
            None,
            Some(after.id.as_str()),
        );
        send_webhook(tx, &d, now).await?;
    }
    Ok(())
}

/// Stores a delivery and queues its job; a data error when the webhook
/// does not exist (deleted since the flow was saved).
async fn send_webhook<T: Tx>(
    tx: &mut T,
    d: &super::outbound::NewDelivery,
    now: Millis,
) -> Result<()> {
    for stmt in super::outbound::insert_delivery(d, now) {
        tx.exec(&stmt).await?;
    }
    Ok(())
}

/// A step's field update: the contact to write and what changed, or None
/// when the field already holds the value.
fn set_field(
    existing: ContactRecord,
    defs: &[crate::domain::FieldDef],
    name: &str,
    value: &Value,
    now: Millis,
) -> Result<Option<(ContactRecord, ContactChange)>> {
    let before = existing.fields.clone();
    let mut fields = serde_json::Map::new();
    fields.insert(name.to_owned(), value.clone());
    let patch = ContactPatch {
        fields,
        ..Default::default()
    };
    let updated = plan::patch(existing, defs, &patch, now)?;
    if updated.fields == before {
        return Ok(None);
    }
    let change = ContactChange {
        changed_fields: ContactChange::fields(Some(&before), &updated.fields),
        ..Default::default()
    };
    Ok(Some((updated, change)))
}

/// A step's removal from a list: whether the contact was in it.
async fn leave_list<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    list: &ListId,
    contact: &ContactId,
) -> Result<bool> {
    if !tx.lock_list(ws, list).await? {
        return Err(StoreError::not_found("list", list));
    }
    tx.remove_membership(ws, list, contact).await
}

/// A step's start of another flow: a run, if the flow is active, is
/// started by other flows, and the repeat rules allow.
async fn start_flow<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    flow: &FlowId,
    contact: &ContactId,
    event_data: &Value,
    now: Millis,
) -> Result<()> {
    let target = tx.flow(ws, flow).await?;
    if target.status == FlowStatus::Active
        && matches!(target.document.trigger, Trigger::Flow)
        && let Some(plan) = EntryPlan::of(&target.document)
    {
        let version = target.version;
        let _ = start_run(tx, ws, flow, version, &plan, contact, event_data, now).await?;
    }
    Ok(())
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
    upsert_contact_from(tx, ws, input, None, now).await
}

/// [`upsert_contact`] for an inbound call to `flow` (status events name it).
pub(crate) async fn upsert_contact_from<T: Tx>(
    tx: &mut T,
    ws: &WorkspaceId,
    input: &ContactUpsert,
    flow: Option<&FlowId>,
    now: Millis,
) -> Result<Upserted> {
    let email = input.email.as_ref().ok_or_else(plan::email_required)?;
    tx.lock_email(ws, email).await?;
    let existing = tx.contact_by_email(ws, email).await?;
    let before = existing.as_ref().map(|e| e.fields.clone());
    let before_status = existing.as_ref().map(|e| e.status);
    let defs = tx
        .field_defs(ws, existing.as_ref().map(|e| &e.id), &input.lists)
        .await?;
    let out = plan::upsert(existing, &defs, input, now)?;
    let mut change = ContactChange::default();
    if out.changed {
        tx.write_contact(ws, &out.contact).await?;
        change.changed_fields = ContactChange::fields(before.as_ref(), &out.contact.fields);
        change.other = true;
        status_changed(
            tx,
            ws,
            before_status,
            &out.contact,
            input.lists.first(),
            flow,
            now,
        )
        .await?;
    }
    for list in &input.lists {
        if tx.add_membership(ws, list, &out.contact.id, now).await? {
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
    status_changed(tx, ws, Some(before.status), &updated, None, None, now).await?;
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
    if tx.add_membership(ws, list, contact, now).await? {
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
    now: Millis,
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
    let up = upsert_contact_from(tx, ws, &req.contact, Some(&req.flow_id), now).await?;
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
    if tx
        .wake_exits_and_find_triggers(ws, contact, now, change.may_trigger())
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
