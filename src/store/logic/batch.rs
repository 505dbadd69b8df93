//! Several callers' contact writes in one transaction: PostgreSQL's
//! batching writer (`store/postgres/batch.rs`), the counterpart of SQLite's
//! group commit. The decisions are the single path's (`plan::upsert`,
//! `entry::check_flow`, `entry::run_decision`, `start_triggered`); what
//! changes is that each `Tx` primitive is given the whole batch (one
//! statement on PostgreSQL) instead of one caller.
//!
//! A batch holds at most one write per email and per idempotency key (the
//! writer defers the others to its next batch), so its writes touch
//! distinct contacts and are independent of one another: each item gets the
//! answer it would have got alone. A data error (an unknown list, a field
//! of the wrong type, a paused flow) is that item's answer; a database
//! error fails the batch, which the writer then retries one item per
//! transaction.

use std::collections::HashMap;

use super::{NewRun, Tx, entry_result, event_text, start_triggered};
use crate::domain::{ContactId, Email, FlowId, ListId, Millis, RunId, WorkspaceId};
use crate::store::entry::{self, EntryRefusal};
use crate::store::run::{ContactChange, EntryPlan};
use crate::store::{
    ContactRecord, ContactUpsert, EntryOutcome, EntryRequest, FlowStatus, Result, StoreError,
    Upserted, plan,
};

/// One caller's write.
pub(crate) enum Write {
    /// `POST /v1/contacts`.
    Upsert(ContactUpsert),
    /// An inbound call entering a flow.
    Enter(EntryRequest),
}

impl Write {
    pub(crate) fn contact(&self) -> &ContactUpsert {
        match self {
            Write::Upsert(c) => c,
            Write::Enter(r) => &r.contact,
        }
    }
}

/// One caller's answer.
#[derive(Debug)]
pub(crate) enum Written {
    Upserted(Upserted),
    Entered(EntryOutcome),
}

/// The answer to a data error; a database error fails the batch.
pub(crate) fn item_error(e: StoreError) -> Result<StoreError> {
    match e {
        StoreError::Internal(_) | StoreError::Busy(_) => Err(e),
        other => Ok(other),
    }
}

/// A contact write of the batch that passed its checks.
struct Pending<'a> {
    item: usize,
    ws: &'a WorkspaceId,
    up: Upserted,
    change: ContactChange,
    before_status: Option<crate::domain::ContactStatus>,
}

/// Writes every item in the caller's transaction: each item's answer, in
/// order, or the database error that fails them all.
pub(crate) async fn write_many<T: Tx>(
    tx: &mut T,
    items: &[(WorkspaceId, Write)],
) -> Result<Vec<Result<Written>>> {
    let now = crate::store::now_millis();
    let mut done: Vec<Option<Result<Written>>> = items.iter().map(|_| None).collect();
    check_entries(tx, items, &mut done).await?;

    // The contacts: lock, read, decide, write.
    let mut keyed: Vec<(usize, &WorkspaceId, &ContactUpsert, &Email)> = Vec::new();
    for (i, (ws, w)) in items.iter().enumerate() {
        if done[i].is_some() {
            continue;
        }
        match &w.contact().email {
            Some(email) => keyed.push((i, ws, w.contact(), email)),
            None => done[i] = Some(Err(plan::email_required())),
        }
    }
    let keys: Vec<(&WorkspaceId, &Email)> = keyed.iter().map(|k| (k.1, k.3)).collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
    sorted.dedup();
    if !sorted.is_empty() {
        tx.lock_emails(&sorted).await?;
    }
    let existing = tx.contacts_by_emails(&keys).await?;
    let asks: Vec<(&WorkspaceId, Option<&ContactId>, &[ListId])> = keyed
        .iter()
        .zip(&existing)
        .map(|(k, e)| (k.1, e.as_ref().map(|c| &c.id), k.2.lists.as_slice()))
        .collect();
    let defs = tx.field_defs_each(&asks).await?;
    let mut pending = Vec::with_capacity(keyed.len());
    for (((i, ws, input, _), existing), defs) in keyed.into_iter().zip(existing).zip(defs) {
        let before = existing.as_ref().map(|e| e.fields.clone());
        let before_status = existing.as_ref().map(|e| e.status);
        let up = match defs.and_then(|defs| plan::upsert(existing, &defs, input, now)) {
            Ok(up) => up,
            Err(e) => {
                done[i] = Some(Err(item_error(e)?));
                continue;
            }
        };
        let mut change = ContactChange::default();
        if up.changed {
            change.changed_fields = ContactChange::fields(before.as_ref(), &up.contact.fields);
            change.other = true;
        }
        pending.push(Pending {
            item: i,
            ws,
            up,
            change,
            before_status,
        });
    }
    let writes: Vec<(&WorkspaceId, &ContactRecord)> = pending
        .iter()
        .filter(|p| p.up.changed)
        .map(|p| (p.ws, &p.up.contact))
        .collect();
    if !writes.is_empty() {
        tx.write_contacts(&writes).await?;
    }
    for p in pending.iter().filter(|p| p.up.changed) {
        let (input, flow) = match &items[p.item].1 {
            Write::Enter(req) => (&req.contact, Some(&req.flow_id)),
            Write::Upsert(input) => (input, None),
        };
        super::status_changed(
            tx,
            p.ws,
            p.before_status,
            &p.up.contact,
            input.lists.first(),
            flow,
            now,
        )
        .await?;
    }
    let joins: Vec<(&WorkspaceId, &ListId, &ContactId)> = pending
        .iter()
        .flat_map(|p| {
            let lists = &items[p.item].1.contact().lists;
            lists.iter().map(|l| (p.ws, l, &p.up.contact.id))
        })
        .collect();
    let joined = if joins.is_empty() {
        Vec::new()
    } else {
        tx.add_memberships(&joins, now).await?
    };
    // `joins` holds each pending write's lists in order: walk both at once.
    let mut joined = joined.into_iter();
    for p in &mut pending {
        for list in &items[p.item].1.contact().lists {
            if joined.next() == Some(true) {
                p.change.added_lists.push(list.clone());
            }
        }
    }

    // What the changes fire (as `contact_changed`, for the batch).
    let changed: Vec<&Pending> = pending.iter().filter(|p| !p.change.is_empty()).collect();
    let wakes: Vec<(&WorkspaceId, &ContactId, bool)> = changed
        .iter()
        .map(|p| (p.ws, &p.up.contact.id, p.change.may_trigger()))
        .collect();
    let fire = if wakes.is_empty() {
        Vec::new()
    } else {
        tx.wake_exits_each(&wakes, now).await?
    };
    for (p, fire) in changed.iter().zip(fire) {
        if fire {
            start_triggered(tx, p.ws, &p.up.contact.id, &p.change, now).await?;
        }
    }

    start_entry_runs(tx, items, &pending, now, &mut done).await?;
    for p in pending {
        if done[p.item].is_none() {
            done[p.item] = Some(Ok(Written::Upserted(p.up)));
        }
    }
    Ok(done
        .into_iter()
        .map(|d| {
            d.unwrap_or_else(|| Err(StoreError::Internal("a batch item had no answer".into())))
        })
        .collect())
}

/// The entries' first checks, in idempotency-key order (the lock order of
/// every writer): a stored answer is replayed, a reused key or a flow that
/// no longer takes the entry is the item's answer.
async fn check_entries<T: Tx>(
    tx: &mut T,
    items: &[(WorkspaceId, Write)],
    done: &mut [Option<Result<Written>>],
) -> Result<()> {
    let mut order: Vec<(usize, &WorkspaceId, &EntryRequest)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, (ws, w))| match w {
            Write::Enter(req) => Some((i, ws, req)),
            Write::Upsert(_) => None,
        })
        .collect();
    fn key(r: &EntryRequest) -> Option<&str> {
        r.idempotency.as_ref().map(|(k, _)| k.as_str())
    }
    order.sort_by(|a, b| {
        (a.1, a.2.flow_id.as_str(), key(a.2)).cmp(&(b.1, b.2.flow_id.as_str(), key(b.2)))
    });
    let mut flows: HashMap<(&WorkspaceId, &FlowId), (FlowStatus, Option<String>)> = HashMap::new();
    for (i, ws, req) in order {
        let scope = req.flow_id.as_str();
        if let Some((key, hash)) = &req.idempotency {
            tx.lock_idempotency_key(ws, scope, key).await?;
            match tx.idempotent_answer(ws, scope, key, hash).await {
                Ok(None) => {}
                Ok(Some(result)) => {
                    let replay = EntryOutcome {
                        result,
                        replayed: true,
                    };
                    done[i] = Some(Ok(Written::Entered(replay)));
                    continue;
                }
                Err(e) => {
                    done[i] = Some(Err(item_error(e)?));
                    continue;
                }
            }
        }
        let flow = match flows.get(&(ws, &req.flow_id)) {
            Some(found) => found.clone(),
            None => match tx.flow_for_entry(ws, &req.flow_id).await {
                Ok(found) => flows.entry((ws, &req.flow_id)).or_insert(found).clone(),
                Err(e) => {
                    done[i] = Some(Err(item_error(e)?));
                    continue;
                }
            },
        };
        if let Err(e) = entry::check_flow(flow.0, flow.1.as_deref(), req) {
            done[i] = Some(Err(e));
        }
    }
    Ok(())
}

/// Starts the entries' runs where the repeat rules allow, and stores the
/// answers of entries that came with an idempotency key.
async fn start_entry_runs<T: Tx>(
    tx: &mut T,
    items: &[(WorkspaceId, Write)],
    pending: &[Pending<'_>],
    now: Millis,
    done: &mut [Option<Result<Written>>],
) -> Result<()> {
    let entries: Vec<(&Pending, &EntryRequest)> = pending
        .iter()
        .filter_map(|p| match &items[p.item].1 {
            Write::Enter(req) => Some((p, req)),
            Write::Upsert(_) => None,
        })
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let asks: Vec<(&FlowId, &ContactId)> = entries
        .iter()
        .map(|(p, req)| (&req.flow_id, &p.up.contact.id))
        .collect();
    let counts = tx.run_counts_each(&asks).await?;
    let plans: Vec<EntryPlan> = entries
        .iter()
        .map(|(_, req)| EntryPlan {
            first_step: req.first_step.clone(),
            repeat: req.repeat,
            has_exits: req.has_exits,
        })
        .collect();
    let mut started: Vec<std::result::Result<RunId, EntryRefusal>> = Vec::new();
    let mut data: Vec<Option<String>> = Vec::new();
    for (((_, req), plan), (any_run, active_run)) in entries.iter().zip(&plans).zip(counts) {
        match entry::run_decision(plan.repeat, any_run, active_run) {
            Some(why) => {
                started.push(Err(why));
                data.push(None);
            }
            None => {
                started.push(Ok(RunId::generate()));
                data.push(Some(event_text(&req.event_data)?));
            }
        }
    }
    let runs: Vec<NewRun> = entries
        .iter()
        .zip(&plans)
        .zip(started.iter().zip(&data))
        .filter_map(|(((p, req), plan), (id, text))| {
            Some(NewRun {
                id: id.as_ref().ok()?,
                ws: p.ws,
                flow: &req.flow_id,
                version: req.flow_version,
                contact: &p.up.contact.id,
                plan,
                event_data: text.as_deref()?,
                now,
            })
        })
        .collect();
    let inserted = if runs.is_empty() {
        Vec::new()
    } else {
        tx.insert_runs(&runs).await?
    };
    drop(runs);
    let mut inserted = inserted.into_iter();
    for ((p, req), started) in entries.iter().zip(started) {
        // A run another process started since the count: the unique index
        // decided, as in `start_run`.
        let started = match started {
            Ok(id) if inserted.next() == Some(true) => Ok(id),
            Ok(_) => Err(EntryRefusal::RunActive),
            Err(why) => Err(why),
        };
        let result = entry_result(&p.up.contact.id, started);
        if let Some((key, hash)) = &req.idempotency {
            let scope = req.flow_id.as_str();
            tx.store_answer(p.ws, scope, key, hash, &result, now)
                .await?;
        }
        done[p.item] = Some(Ok(Written::Entered(EntryOutcome {
            result,
            replayed: false,
        })));
    }
    Ok(())
}
