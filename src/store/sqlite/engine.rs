//! SQL for the flow engine (SQLite): starting runs, firing triggers on
//! contact changes, claiming due runs, storing advances, reading runs,
//! recording events. Every function runs on the writer thread (or a
//! reader, for reads) inside the caller's transaction.

use crate::domain::Stored;
use crate::store::logic;
use rusqlite::{Connection, params};
use serde_json::Value;

use super::{internal, queries as q};
use crate::domain::{ContactId, FlowId, ListId, Millis, RunId, WorkspaceId};
use crate::store::contacts;
use crate::store::sql::Stmt;
use crate::store::{AdvanceOutcome, ClaimedRun, Result, RunAdvance, RunStatus, StoreError};

fn json_text(v: &Value) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(e.to_string()))
}

/// The statements `store::logic` needs, on the writer's connection: every
/// future is ready at once (`logic::run_ready`).
pub(crate) struct SqliteTx<'c>(pub &'c Connection);

impl logic::Tx for SqliteTx<'_> {
    const ROW_LOCKS: bool = false;

    async fn exec(&mut self, stmt: &crate::store::sql::Stmt) -> Result<crate::store::sql::Done> {
        super::sql::exec(self.0, stmt)
    }

    async fn wake_exits_and_find_triggers(
        &mut self,
        ws: &WorkspaceId,
        contact: &ContactId,
        now: Millis,
        ask: bool,
    ) -> Result<bool> {
        // Waiting runs with exit conditions are due now. A leased one is
        // woken too: the change of its `due_at` is what its completion sees
        // (`woken_due!`).
        self.0
            .prepare_cached(concat!(
                "UPDATE runs SET due_at = ",
                crate::woken_due!("?2"),
                " WHERE contact_id = ?1 AND status = 'waiting' AND has_exits = 1
                   AND (due_at > ?2 OR lease_until > ?2)"
            ))
            .and_then(|mut s| s.execute(params![contact.as_str(), now]))
            .map_err(internal)?;
        if ask {
            has_contact_triggers(self.0, ws)
        } else {
            Ok(false)
        }
    }

    async fn field_defs(
        &mut self,
        ws: &WorkspaceId,
        contact: Option<&ContactId>,
        lists: &[ListId],
    ) -> Result<Vec<crate::domain::FieldDef>> {
        q::field_defs_for(self.0, ws, contact, lists)
    }

    type Prepared = Vec<(String, String)>;

    async fn held_leases(
        &mut self,
        owner: &str,
        now: Millis,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>> {
        let mut s = self
            .0
            .prepare_cached(
                "SELECT 1 FROM runs WHERE id = ?1 AND lease_owner = ?2 AND lease_until > ?3
                 AND (status = 'active' OR status = 'waiting')",
            )
            .map_err(internal)?;
        let mut held = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if s.exists(params![id, owner, now]).map_err(internal)? {
                held.insert((*id).to_owned());
            }
        }
        Ok(held)
    }

    async fn add_history(&mut self, adv: &RunAdvance, json: &Self::Prepared) -> Result<()> {
        write_history(self.0, adv, json)
    }

    async fn move_run(&mut self, adv: &RunAdvance, now: Millis) -> Result<()> {
        move_run(self.0, adv, now)
    }
}

/// Whether any active flow of the workspace has a contact trigger; saves
/// the per-list and per-field lookups for the common case of none.
fn has_contact_triggers(conn: &Connection, ws: &WorkspaceId) -> Result<bool> {
    super::cache::has_contact_triggers(ws.as_str(), || {
        conn.prepare_cached(
            "SELECT 1 FROM flows WHERE workspace_id = ?1 AND status = 'active'
             AND trigger_type IN ('list_added', 'field_changed') LIMIT 1",
        )
        .and_then(|mut s| s.exists([ws.as_str()]))
        .map_err(internal)
    })
}

// ---- claiming and completing ----------------------------------------------------------

/// A claim sets only the lease: `due_at` stays as it was, so on
/// PostgreSQL the claim is a HOT update (no index entry written), and a
/// wake-up during the lease (an exit check or an event, which change
/// `due_at`) is seen by the completion comparing `due_at` with the value
/// the claim returned (`ClaimedRun::claimed_due`). A leased run is not due
/// (`next_due` and the claim skip it) until its lease ends.
/// The oldest `?4` due runs, cut where their event data passes `?5` bytes
/// (the first run is always taken, whatever its size).
const CLAIM: &str = "UPDATE runs SET lease_owner = ?1, lease_until = ?2 WHERE id IN (
    SELECT id FROM (
      SELECT id, SUM(event_bytes) OVER (ORDER BY due_at, id ROWS UNBOUNDED PRECEDING) - event_bytes AS before
      FROM (SELECT r.id, r.due_at, r.event_bytes FROM runs r JOIN flows f ON f.id = r.flow_id
            WHERE (r.status = 'active' OR r.status = 'waiting') AND r.due_at <= ?3
              AND (r.lease_until IS NULL OR r.lease_until < ?3) AND f.status = 'active'
            ORDER BY r.due_at LIMIT ?4))
    WHERE before < ?5)
  RETURNING id, workspace_id, flow_id, flow_version, status, step, event_data, wait_until,
    resume_event, step_count, contact_id, due_at";

pub fn claim(
    conn: &Connection,
    owner: &str,
    now: Millis,
    lease_until: Millis,
    limit: crate::store::ClaimLimit,
) -> Result<Vec<ClaimedRun>> {
    use crate::store::sql::RowExt;
    let claim = Stmt::new(
        CLAIM,
        vec![
            owner.into(),
            lease_until.into(),
            now.into(),
            (limit.runs as i64).into(),
            limit.event_bytes_i64().into(),
        ],
    );
    let mut out = Vec::new();
    for r in super::sql::exec(conn, &claim)?.rows {
        let ws = WorkspaceId::from_trusted(r.text(1)?);
        let contact_id = ContactId::from_trusted(r.text(10)?);
        let by_id = contacts::by_id(&ws, &contact_id, false);
        let contact = contacts::one(&super::sql::exec(conn, &by_id)?)?;
        let lists =
            contacts::list_ids(&super::sql::exec(conn, &contacts::subscribed(&contact_id))?)?;
        out.push(ClaimedRun {
            id: RunId::from_trusted(r.text(0)?),
            workspace_id: ws,
            flow_id: FlowId::from_trusted(r.text(2)?),
            flow_version: r.int(3)?,
            status: RunStatus::decode(r.str_at(4)?)?,
            step: r.opt_text(5)?,
            event_data: r.json(6)?,
            wait_until: r.opt_int(7)?,
            resume_event: r.opt_json(8)?,
            step_count: r.int(9)?,
            claimed_due: r.int(11)?,
            contact,
            lists,
        });
    }
    Ok(out)
}

/// An advance with its history's `(input, detail)` JSON text.
pub type Prepared = (RunAdvance, Vec<(String, String)>);

/// Serialises each advance's history JSON before the writer thread (the
/// writer is the one serial resource; this measured +30 % calls/s).
pub fn prepare(advances: Vec<RunAdvance>) -> Result<Vec<Prepared>> {
    advances
        .into_iter()
        .map(|adv| {
            let json = adv
                .history
                .iter()
                .map(|h| Ok((json_text(&h.input)?, json_text(&h.detail)?)))
                .collect::<Result<_>>()?;
            Ok((adv, json))
        })
        .collect()
}

/// Stores each advance (`logic::complete_batch`). No savepoint per run:
/// nothing is written before the lease check, an effect that fails for a
/// reason of the data stops where it is, and any other error fails the
/// whole job, whose runs are then claimed again when their leases expire.
pub fn complete(
    conn: &Connection,
    owner: &str,
    now: Millis,
    advances: Vec<Prepared>,
) -> Result<Vec<AdvanceOutcome>> {
    logic::run_ready(logic::complete_batch(
        &mut SqliteTx(conn),
        owner,
        now,
        advances,
    ))
}

fn write_history(conn: &Connection, adv: &RunAdvance, json: &[(String, String)]) -> Result<()> {
    let mut s = conn
        .prepare_cached(
            "INSERT INTO run_steps (run_id, seq, step, type, at, input, outcome, detail, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(internal)?;
    for (i, (h, (input, detail))) in adv.history.iter().zip(json).enumerate() {
        s.execute(params![
            adv.run_id.as_str(),
            adv.first_seq + i as i64,
            h.step,
            h.kind,
            h.at,
            input,
            h.outcome.as_str(),
            detail,
            h.error
        ])
        .map_err(internal)?;
    }
    Ok(())
}

fn move_run(conn: &Connection, adv: &RunAdvance, now: Millis) -> Result<()> {
    let m = crate::store::run::RunMove::of(adv, now);
    let data = adv.event_data.as_ref().map(json_text).transpose()?;
    // Woken while leased (an event for the wait it goes back to, or a
    // contact change asking for an exit check): due again at once.
    conn.prepare_cached(
        "UPDATE runs SET status = ?2, step = COALESCE(?3, step),
           due_at = CASE WHEN ?2 = 'waiting' AND ((?10 = 0 AND resume_event IS NOT NULL AND ?3 = step)
                                                  OR due_at <> ?13) THEN ?11 ELSE ?4 END,
           wait_until = ?5, wait_event = ?6, end_reason = ?7, finished_at = ?8, step_count = ?9,
           resume_event = CASE WHEN ?10 = 1 OR ?2 <> 'waiting' OR ?3 IS NOT step THEN NULL ELSE resume_event END,
           event_data = COALESCE(?12, event_data), lease_owner = NULL, lease_until = NULL, updated_at = ?11
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![adv.run_id.as_str(), m.status.as_str(), m.step, m.due_at, m.wait_until,
            m.wait_event, m.reason.map(|r| r.as_str()), m.finished_at, m.step_count, adv.consumed_event, now, data,
            adv.claimed_due])
    })
    .map_err(internal)?;
    Ok(())
}
