//! SQL for entering flows and runs (SQLite).

use rusqlite::{Connection, OptionalExtension, params};

use super::{engine, flows, internal};
use crate::domain::WorkspaceId;
use crate::store::{
    EntryOutcome, EntryPlan, EntryRequest, EntryResult, FlowRecord, Result, StoreError, entry,
    now_millis,
};

pub fn by_token(conn: &Connection, token: &str) -> Result<(WorkspaceId, FlowRecord)> {
    let found: Option<(String, String)> = conn
        .prepare_cached("SELECT workspace_id, id FROM flows WHERE inbound_token = ?1")
        .and_then(|mut s| {
            s.query_row([token], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(internal)?;
    let (ws, id) = found.ok_or_else(|| StoreError::not_found("inbound URL", "this token"))?;
    let ws = WorkspaceId::from_trusted(ws);
    let flow = flows::get(conn, &ws, &crate::domain::FlowId::from_trusted(id))?;
    Ok((ws, flow))
}

pub fn enter(conn: &Connection, ws: &WorkspaceId, req: &EntryRequest) -> Result<EntryOutcome> {
    if let Some((key, hash)) = &req.idempotency
        && let Some(result) = answer(conn, ws, req.flow_id.as_str(), key, hash)?
    {
        return Ok(EntryOutcome {
            result,
            replayed: true,
        });
    }
    // Only the status: loading (and parsing) the document here cost more
    // than the rest of the entry on the single writer thread.
    let found: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT status, inbound_token FROM flows WHERE workspace_id = ?1 AND id = ?2",
        )
        .and_then(|mut s| {
            s.query_row([ws.as_str(), req.flow_id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(internal)?;
    let Some((status, token)) = found else {
        return Err(StoreError::not_found("flow", &req.flow_id));
    };
    entry::check_flow(&status, token.as_deref(), req)?;
    let now = now_millis();
    let up = engine::upsert_and_trigger(conn, ws, &req.contact, now)?;
    let plan = EntryPlan {
        first_step: req.first_step.clone(),
        repeat: req.repeat,
        has_exits: req.has_exits,
    };
    let started = engine::start_run(
        conn,
        ws,
        &req.flow_id,
        req.flow_version,
        &plan,
        &up.contact.id,
        &req.event_data,
        now,
    )?;
    let (run_id, not_started) = match started {
        Ok(id) => (Some(id.to_string()), None),
        Err(why) => (None, Some(why)),
    };
    let result = EntryResult {
        contact_id: up.contact.id.to_string(),
        run_id,
        not_started: not_started.map(|r| r.as_str().to_owned()),
    };
    if let Some((key, hash)) = &req.idempotency {
        let response =
            serde_json::to_string(&result).map_err(|e| StoreError::Internal(e.to_string()))?;
        conn.prepare_cached(
            "INSERT INTO idempotency_keys (workspace_id, scope, key, request_hash, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| s.execute(params![ws.as_str(), req.flow_id.as_str(), key, hash, response, now_millis()]))
        .map_err(internal)?;
    }
    Ok(EntryOutcome {
        result,
        replayed: false,
    })
}

/// The stored answer to `key` in `scope`; a Conflict if it came with another
/// request.
pub fn answer(
    conn: &Connection,
    ws: &WorkspaceId,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> Result<Option<EntryResult>> {
    let stored: Option<(Vec<u8>, String)> = conn
        .prepare_cached("SELECT request_hash, response FROM idempotency_keys WHERE workspace_id = ?1 AND scope = ?2 AND key = ?3")
        .and_then(|mut s| s.query_row([ws.as_str(), scope, key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(internal)?;
    match stored {
        None => Ok(None),
        Some((stored_hash, _)) if stored_hash != hash => Err(entry::key_reused()),
        Some((_, response)) => entry::decode(&response).map(Some),
    }
}
