//! SQL for entering flows and runs (PostgreSQL).

use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::{engine, flows, internal, upsert_contact_in};
use crate::domain::{FlowId, WorkspaceId};
use crate::store::{
    EntryOutcome, EntryPlan, EntryRequest, EntryResult, FlowRecord, Result, StoreError, entry,
    now_millis,
};

pub async fn by_token(c: &mut PgConnection, token: &str) -> Result<(WorkspaceId, FlowRecord)> {
    let row = sqlx::query("SELECT workspace_id, id FROM flows WHERE inbound_token = $1")
        .bind(token)
        .fetch_optional(&mut *c)
        .await
        .map_err(internal)?
        .ok_or_else(|| StoreError::not_found("inbound URL", "this token"))?;
    let ws = WorkspaceId::from_trusted(row.try_get("workspace_id").map_err(internal)?);
    let id = FlowId::from_trusted(row.try_get("id").map_err(internal)?);
    let flow = flows::get(c, &ws, &id).await?;
    Ok((ws, flow))
}

pub async fn enter(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    req: &EntryRequest,
) -> Result<EntryOutcome> {
    if let Some((key, hash)) = &req.idempotency {
        // Serialise calls with one key so the second waits and replays.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
            .bind(format!("{ws}/idem/{}/{key}", req.flow_id))
            .execute(&mut *c)
            .await
            .map_err(internal)?;
        if let Some(result) = answer(c, ws, req.flow_id.as_str(), key, hash).await? {
            return Ok(EntryOutcome {
                result,
                replayed: true,
            });
        }
    }
    // Share-lock the flow: a concurrent pause or delete waits for this entry
    // (or this entry sees its result), never a run in a paused or deleted flow.
    let found = sqlx::query(
        "SELECT status, inbound_token FROM flows WHERE workspace_id = $1 AND id = $2 FOR SHARE",
    )
    .bind(ws.as_str())
    .bind(req.flow_id.as_str())
    .fetch_optional(&mut *c)
    .await
    .map_err(internal)?
    .ok_or_else(|| StoreError::not_found("flow", &req.flow_id))?;
    let status: String = found.try_get("status").map_err(internal)?;
    let token: Option<String> = found.try_get("inbound_token").map_err(internal)?;
    entry::check_flow(&status, token.as_deref(), req)?;
    let now = now_millis();
    let up = upsert_contact_in(c, ws, &req.contact).await?;
    let plan = EntryPlan {
        first_step: req.first_step.clone(),
        repeat: req.repeat,
        has_exits: req.has_exits,
    };
    let started = engine::start_run(
        c,
        ws,
        &req.flow_id,
        req.flow_version,
        &plan,
        &up.contact.id,
        &req.event_data,
        now,
    )
    .await?;
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
        sqlx::query("INSERT INTO idempotency_keys (workspace_id, scope, key, request_hash, response, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(ws.as_str())
            .bind(req.flow_id.as_str())
            .bind(key)
            .bind(hash)
            .bind(serde_json::to_value(&result).map_err(|e| StoreError::Internal(e.to_string()))?)
            .bind(now_millis())
            .execute(&mut *c)
            .await
            .map_err(internal)?;
    }
    Ok(EntryOutcome {
        result,
        replayed: false,
    })
}

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
