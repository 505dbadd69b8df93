//! SQL for flows and their versions (SQLite).

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use super::{internal, is_unique_violation};
use crate::domain::signature::SigningSecret;
use crate::domain::{FlowId, Page, PageRequest, WorkspaceId};
use crate::store::run::trigger_index;
use crate::store::{FlowRecord, FlowStatus, Result, StoreError, now_millis, plan};

const SELECT: &str = "SELECT f.id, f.name, f.status, f.current_version, v.document, f.inbound_token,
    f.created_at, f.updated_at, f.inbound_secret FROM flows f JOIN flow_versions v ON v.flow_id = f.id AND v.version = f.current_version";

fn row(r: &Row) -> rusqlite::Result<FlowRecord> {
    Ok(FlowRecord {
        id: FlowId::from_trusted(r.get(0)?),
        name: r.get(1)?,
        status: super::stored(r, 2)?,
        version: r.get(3)?,
        document: std::sync::Arc::new(super::json(r, 4)?),
        inbound_token: r.get(5)?,
        inbound_secret: r
            .get::<_, Option<String>>(8)?
            .map(SigningSecret::from_trusted),
        inbound_secret_new: false,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

pub fn get(conn: &Connection, ws: &WorkspaceId, id: &FlowId) -> Result<FlowRecord> {
    conn.prepare_cached(&format!("{SELECT} WHERE f.workspace_id = ?1 AND f.id = ?2"))
        .and_then(|mut s| s.query_row([ws.as_str(), id.as_str()], row).optional())
        .map_err(internal)?
        .ok_or_else(|| StoreError::not_found("flow", id))
}

pub fn by_name(conn: &Connection, ws: &WorkspaceId, name: &str) -> Result<FlowRecord> {
    conn.prepare_cached(&format!(
        "{SELECT} WHERE f.workspace_id = ?1 AND f.name = ?2"
    ))
    .and_then(|mut s| s.query_row([ws.as_str(), name], row).optional())
    .map_err(internal)?
    .ok_or_else(|| StoreError::not_found("flow", name))
}

pub fn page(conn: &Connection, ws: &WorkspaceId, page: &PageRequest) -> Result<Page<FlowRecord>> {
    let mut s = conn
        .prepare_cached(&format!(
            "{SELECT} WHERE f.workspace_id = ?1 AND f.id > ?2 ORDER BY f.id LIMIT ?3"
        ))
        .map_err(internal)?;
    let rows: Vec<FlowRecord> = s
        .query_map(params![ws.as_str(), page.after_id(), page.limit + 1], row)
        .and_then(|r| r.collect())
        .map_err(internal)?;
    Ok(Page::from_overfetch(rows, page.limit, |f| f.id.as_str()))
}

fn insert_version(conn: &Connection, id: &FlowId, version: i64, document: &Value) -> Result<()> {
    let doc = serde_json::to_string(document).map_err(|e| StoreError::Internal(e.to_string()))?;
    conn.prepare_cached("INSERT INTO flow_versions (flow_id, version, document, created_at) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![id.as_str(), version, doc, now_millis()]))
        .map_err(internal)?;
    Ok(())
}

pub fn create(conn: &Connection, ws: &WorkspaceId, name: &str, document: &Value) -> Result<FlowId> {
    super::cache::flows_changed();
    let id = FlowId::generate();
    let now = now_millis();
    let doc = crate::store::run::parse_doc(document)?;
    let (kind, key) = trigger_index(&doc);
    conn.prepare_cached(
        "INSERT INTO flows (id, workspace_id, name, status, current_version, created_at, updated_at, trigger_type, trigger_key)
         VALUES (?1, ?2, ?3, 'draft', 1, ?4, ?4, ?5, ?6)",
    )
    .and_then(|mut s| s.execute(params![id.as_str(), ws.as_str(), name, now, kind, key]))
    .map_err(|e| if is_unique_violation(&e) { plan::flow_name_taken(name) } else { internal(e) })?;
    insert_version(conn, &id, 1, document)?;
    Ok(id)
}

pub fn update(
    conn: &Connection,
    ws: &WorkspaceId,
    id: &FlowId,
    name: &str,
    document: &Value,
) -> Result<()> {
    super::cache::flows_changed();
    let current = get(conn, ws, id)?;
    let version = current.version + 1;
    insert_version(conn, id, version, document)?;
    let doc = crate::store::run::parse_doc(document)?;
    let (kind, key) = trigger_index(&doc);
    conn.prepare_cached("UPDATE flows SET name = ?3, current_version = ?4, updated_at = ?5, trigger_type = ?6, trigger_key = ?7 WHERE workspace_id = ?1 AND id = ?2")
        .and_then(|mut s| s.execute(params![ws.as_str(), id.as_str(), name, version, now_millis(), kind, key]))
        .map_err(|e| if is_unique_violation(&e) { plan::flow_name_taken(name) } else { internal(e) })?;
    Ok(())
}

pub fn set_status(
    conn: &Connection,
    ws: &WorkspaceId,
    id: &FlowId,
    status: FlowStatus,
    token: Option<&str>,
) -> Result<()> {
    super::cache::flows_changed();
    let n = conn
        .prepare_cached(
            "UPDATE flows SET status = ?3, inbound_token = COALESCE(inbound_token, ?4), updated_at = ?5
             WHERE workspace_id = ?1 AND id = ?2",
        )
        .and_then(|mut s| s.execute(params![ws.as_str(), id.as_str(), status.as_str(), token, now_millis()]))
        .map_err(internal)?;
    if n == 0 {
        Err(StoreError::not_found("flow", id))
    } else {
        Ok(())
    }
}

pub fn rotate_token(conn: &Connection, ws: &WorkspaceId, id: &FlowId, token: &str) -> Result<()> {
    let n = conn
        .prepare_cached("UPDATE flows SET inbound_token = ?3, updated_at = ?4 WHERE workspace_id = ?1 AND id = ?2")
        .and_then(|mut s| s.execute(params![ws.as_str(), id.as_str(), token, now_millis()]))
        .map_err(internal)?;
    if n == 0 {
        Err(StoreError::not_found("flow", id))
    } else {
        Ok(())
    }
}

/// The flow after a write, given a new signing secret first if its document
/// asks for signed calls and it has none (or always, with `replace`); the
/// record then says the secret is new, so that one answer can show it.
pub fn get_with_secret(
    conn: &Connection,
    ws: &WorkspaceId,
    id: &FlowId,
    replace: bool,
) -> Result<FlowRecord> {
    let flow = get(conn, ws, id)?;
    if !flow.document.signs_inbound() {
        return Ok(flow);
    }
    let secret = SigningSecret::generate();
    let n = conn
        .prepare_cached(
            "UPDATE flows SET inbound_secret = ?3
             WHERE workspace_id = ?1 AND id = ?2 AND (inbound_secret IS NULL OR ?4)",
        )
        .and_then(|mut s| s.execute(params![ws.as_str(), id.as_str(), secret.as_str(), replace]))
        .map_err(internal)?;
    if n == 0 {
        return Ok(flow);
    }
    Ok(FlowRecord {
        inbound_secret: Some(secret),
        inbound_secret_new: true,
        ..flow
    })
}

pub fn delete(conn: &Connection, ws: &WorkspaceId, id: &FlowId) -> Result<()> {
    super::cache::flows_changed();
    let n = conn
        .prepare_cached("DELETE FROM flows WHERE workspace_id = ?1 AND id = ?2")
        .and_then(|mut s| s.execute([ws.as_str(), id.as_str()]))
        .map_err(internal)?;
    if n == 0 {
        Err(StoreError::not_found("flow", id))
    } else {
        Ok(())
    }
}

/// One version's document.
pub fn version(conn: &Connection, ws: &WorkspaceId, id: &FlowId, version: i64) -> Result<Value> {
    let doc: Option<String> = conn
        .prepare_cached(
            "SELECT v.document FROM flow_versions v JOIN flows f ON f.id = v.flow_id
             WHERE f.workspace_id = ?1 AND v.flow_id = ?2 AND v.version = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![ws.as_str(), id.as_str(), version], |r| r.get(0))
                .optional()
        })
        .map_err(internal)?;
    let doc =
        doc.ok_or_else(|| StoreError::not_found("flow version", format!("{id}@{version}")))?;
    serde_json::from_str(&doc).map_err(|e| StoreError::Internal(e.to_string()))
}
