//! SQL for entering flows and runs (PostgreSQL).

use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::internal;
use crate::domain::WorkspaceId;
use crate::store::{EntryResult, Result, entry};

/// The stored answer to `key` in `scope`; a Conflict if it came with another
/// request.
pub async fn answer(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> Result<Option<EntryResult>> {
    let stored = sqlx::query("SELECT request_hash, response FROM idempotency_keys WHERE workspace_id = $1 AND scope = $2 AND key = $3")
        .bind(ws.as_str())
        .bind(scope)
        .bind(key)
        .fetch_optional(&mut *c)
        .await
        .map_err(internal)?;
    let Some(row) = stored else { return Ok(None) };
    let stored_hash: Vec<u8> = row.try_get("request_hash").map_err(internal)?;
    if stored_hash != hash {
        return Err(entry::key_reused());
    }
    let response: Value = row.try_get("response").map_err(internal)?;
    entry::decode(&response.to_string()).map(Some)
}
