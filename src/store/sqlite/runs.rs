//! SQL for entering flows and runs (SQLite).

use rusqlite::{Connection, OptionalExtension};

use super::{engine, internal};
use crate::domain::WorkspaceId;
use crate::store::logic;
use crate::store::{EntryOutcome, EntryRequest, EntryResult, Result, entry};

pub fn enter(conn: &Connection, ws: &WorkspaceId, req: &EntryRequest) -> Result<EntryOutcome> {
    logic::run_ready(logic::enter(&mut engine::SqliteTx(conn), ws, req))
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
