//! SQL for flows and their versions (PostgreSQL).

use crate::domain::Stored;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::{constraint, internal};
use crate::domain::signature::SigningSecret;
use crate::domain::{FlowId, Page, PageRequest, WorkspaceId};
use crate::store::run::trigger_index;
use crate::store::{FlowRecord, FlowStatus, Result, StoreError, now_millis, plan};

const SELECT: &str = "SELECT f.id, f.name, f.status, f.current_version, v.document, f.inbound_token,
    f.created_at, f.updated_at, f.inbound_secret FROM flows f JOIN flow_versions v ON v.flow_id = f.id AND v.version = f.current_version";

fn row(r: &PgRow) -> Result<FlowRecord> {
    let status: String = r.try_get("status").map_err(internal)?;
    Ok(FlowRecord {
        id: FlowId::from_trusted(r.try_get("id").map_err(internal)?),
        name: r.try_get("name").map_err(internal)?,
        status: FlowStatus::decode(&status)?,
        version: i64::from(r.try_get::<i32, _>("current_version").map_err(internal)?),
        document: std::sync::Arc::new(
            serde_json::from_value(r.try_get("document").map_err(internal)?)
                .map_err(|e| StoreError::Internal(format!("flow_versions.document: {e}")))?,
        ),
        inbound_token: r.try_get("inbound_token").map_err(internal)?,
        inbound_secret: r
            .try_get::<Option<String>, _>("inbound_secret")
            .map_err(internal)?
            .map(SigningSecret::from_trusted),
        inbound_secret_new: false,
        created_at: r.try_get("created_at").map_err(internal)?,
        updated_at: r.try_get("updated_at").map_err(internal)?,
    })
}

pub async fn get(c: &mut PgConnection, ws: &WorkspaceId, id: &FlowId) -> Result<FlowRecord> {
    let r = sqlx::query(&format!("{SELECT} WHERE f.workspace_id = $1 AND f.id = $2"))
        .bind(ws.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *c)
        .await
        .map_err(internal)?
        .ok_or_else(|| StoreError::not_found("flow", id))?;
    row(&r)
}

pub async fn by_name(c: &mut PgConnection, ws: &WorkspaceId, name: &str) -> Result<FlowRecord> {
    let r = sqlx::query(&format!(
        "{SELECT} WHERE f.workspace_id = $1 AND f.name = $2"
    ))
    .bind(ws.as_str())
    .bind(name)
    .fetch_optional(&mut *c)
    .await
    .map_err(internal)?
    .ok_or_else(|| StoreError::not_found("flow", name))?;
    row(&r)
}

pub async fn page(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    page: &PageRequest,
) -> Result<Page<FlowRecord>> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE f.workspace_id = $1 AND f.id > $2 ORDER BY f.id LIMIT $3"
    ))
    .bind(ws.as_str())
    .bind(page.after_id())
    .bind(i64::from(page.limit) + 1)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    let flows = rows.iter().map(row).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_overfetch(flows, page.limit, |f| f.id.as_str()))
}

async fn insert_version(
    c: &mut PgConnection,
    id: &FlowId,
    version: i64,
    document: &Value,
) -> Result<()> {
    sqlx::query("INSERT INTO flow_versions (flow_id, version, document, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(version as i32)
        .bind(document)
        .bind(now_millis())
        .execute(&mut *c)
        .await
        .map_err(internal)?;
    Ok(())
}

pub async fn create(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    name: &str,
    document: &Value,
) -> Result<FlowId> {
    let id = FlowId::generate();
    let doc = crate::store::run::parse_doc(document)?;
    let (kind, key) = trigger_index(&doc);
    sqlx::query(
        "INSERT INTO flows (id, workspace_id, name, status, current_version, created_at, updated_at, trigger_type, trigger_key)
         VALUES ($1, $2, $3, 'draft', 1, $4, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(ws.as_str())
    .bind(name)
    .bind(now_millis())
    .bind(kind)
    .bind(key)
    .execute(&mut *c)
    .await
    .map_err(|e| if constraint(&e).as_deref() == Some("flows_name_unique") { plan::flow_name_taken(name) } else { internal(e) })?;
    insert_version(c, &id, 1, document).await?;
    Ok(id)
}

pub async fn update(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    id: &FlowId,
    name: &str,
    document: &Value,
) -> Result<()> {
    // Lock the flow row: two saves at once must get versions n+1 and n+2.
    let version: i32 = sqlx::query_scalar(
        "SELECT current_version FROM flows WHERE workspace_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(ws.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut *c)
    .await
    .map_err(internal)?
    .ok_or_else(|| StoreError::not_found("flow", id))?;
    let next = i64::from(version) + 1;
    insert_version(c, id, next, document).await?;
    let doc = crate::store::run::parse_doc(document)?;
    let (kind, key) = trigger_index(&doc);
    sqlx::query("UPDATE flows SET name = $3, current_version = $4, updated_at = $5, trigger_type = $6, trigger_key = $7 WHERE workspace_id = $1 AND id = $2")
        .bind(ws.as_str())
        .bind(id.as_str())
        .bind(name)
        .bind(next as i32)
        .bind(now_millis())
        .bind(kind)
        .bind(key)
        .execute(&mut *c)
        .await
        .map_err(|e| if constraint(&e).as_deref() == Some("flows_name_unique") { plan::flow_name_taken(name) } else { internal(e) })?;
    Ok(())
}

pub async fn set_status(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    id: &FlowId,
    status: FlowStatus,
    token: Option<&str>,
) -> Result<()> {
    let n = sqlx::query(
        "UPDATE flows SET status = $3, inbound_token = COALESCE(inbound_token, $4), updated_at = $5
         WHERE workspace_id = $1 AND id = $2",
    )
    .bind(ws.as_str())
    .bind(id.as_str())
    .bind(status.as_str())
    .bind(token)
    .bind(now_millis())
    .execute(&mut *c)
    .await
    .map_err(internal)?
    .rows_affected();
    super::touched(n, "flow", &id)
}

pub async fn rotate_token(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    id: &FlowId,
    token: &str,
) -> Result<()> {
    let n = sqlx::query(
        "UPDATE flows SET inbound_token = $3, updated_at = $4 WHERE workspace_id = $1 AND id = $2",
    )
    .bind(ws.as_str())
    .bind(id.as_str())
    .bind(token)
    .bind(now_millis())
    .execute(&mut *c)
    .await
    .map_err(internal)?
    .rows_affected();
    super::touched(n, "flow", &id)
}

/// The flow after a write, given a new signing secret first if its document
/// asks for signed calls and it has none (or always, with `replace`); the
/// record then says the secret is new, so that one answer can show it.
pub async fn get_with_secret(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    id: &FlowId,
    replace: bool,
) -> Result<FlowRecord> {
    let flow = get(c, ws, id).await?;
    if !flow.document.signs_inbound() {
        return Ok(flow);
    }
    let secret = SigningSecret::generate();
    let n = sqlx::query(
        "UPDATE flows SET inbound_secret = $3
         WHERE workspace_id = $1 AND id = $2 AND (inbound_secret IS NULL OR $4)",
    )
    .bind(ws.as_str())
    .bind(id.as_str())
    .bind(secret.as_str())
    .bind(replace)
    .execute(&mut *c)
    .await
    .map_err(internal)?
    .rows_affected();
    if n == 0 {
        return Ok(flow);
    }
    Ok(FlowRecord {
        inbound_secret: Some(secret),
        inbound_secret_new: true,
        ..flow
    })
}

pub async fn delete(c: &mut PgConnection, ws: &WorkspaceId, id: &FlowId) -> Result<()> {
    let n = sqlx::query("DELETE FROM flows WHERE workspace_id = $1 AND id = $2")
        .bind(ws.as_str())
        .bind(id.as_str())
        .execute(&mut *c)
        .await
        .map_err(internal)?
        .rows_affected();
    super::touched(n, "flow", &id)
}

/// One version's document.
pub async fn version(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    id: &FlowId,
    version: i64,
) -> Result<Value> {
    sqlx::query_scalar(
        "SELECT v.document FROM flow_versions v JOIN flows f ON f.id = v.flow_id
         WHERE f.workspace_id = $1 AND v.flow_id = $2 AND v.version = $3",
    )
    .bind(ws.as_str())
    .bind(id.as_str())
    .bind(version as i32)
    .fetch_optional(&mut *c)
    .await
    .map_err(internal)?
    .ok_or_else(|| StoreError::not_found("flow version", format!("{id}@{version}")))
}
