//! Workspaces and API keys, written once (`store::sql`): the statements
//! the `Store` trait's default methods run on either database.

use super::sql::{Done, RowExt, Stmt, Val};
use super::{ApiKeyRecord, NewApiKey, Result, Workspace, plan};
use crate::domain::{ApiKeyId, Millis, Scope, Stored, WorkspaceId};

pub fn new_workspace(name: &str, now: Millis) -> Workspace {
    Workspace {
        id: WorkspaceId::generate(),
        name: name.to_owned(),
        created_at: now,
    }
}

/// Stores `ws` (a taken name is a conflict).
pub fn insert_workspace(ws: &Workspace) -> Stmt {
    Stmt::new(
        "INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)",
        vec![
            ws.id.as_str().into(),
            ws.name.as_str().into(),
            ws.created_at.into(),
        ],
    )
    .on_unique(plan::workspace_name_taken(&ws.name))
}

/// Stores `ws` only if there is no workspace yet (the first run's
/// bootstrap); it changed a row iff it did.
pub fn insert_first_workspace(ws: &Workspace) -> Stmt {
    Stmt::new(
        "INSERT INTO workspaces (id, name, created_at)
         SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM workspaces)",
        vec![
            ws.id.as_str().into(),
            ws.name.as_str().into(),
            ws.created_at.into(),
        ],
    )
}

pub fn list_workspaces() -> Stmt {
    Stmt::new(
        "SELECT id, name, created_at FROM workspaces ORDER BY id",
        Vec::new(),
    )
}

pub fn workspace_by_name(name: &str) -> Stmt {
    Stmt::new(
        "SELECT id, name, created_at FROM workspaces WHERE name = $1",
        vec![name.into()],
    )
    .or_not_found("workspace", name)
}

pub fn workspaces(done: &Done) -> Result<Vec<Workspace>> {
    done.rows.iter().map(|r| workspace(r)).collect()
}

pub fn workspace(r: &[Val]) -> Result<Workspace> {
    Ok(Workspace {
        id: WorkspaceId::from_trusted(r.text(0)?),
        name: r.text(1)?,
        created_at: r.int(2)?,
    })
}

/// Stores a key of workspace `ws`, only if the workspace exists (then it
/// changed a row).
pub fn insert_key(ws: &WorkspaceId, key: &NewApiKey, now: Millis) -> Stmt {
    Stmt::new(
        "INSERT INTO api_keys (id, workspace_id, name, scope, prefix, hash, created_at)
         SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM workspaces WHERE id = $2)",
        vec![
            key.id.as_str().into(),
            ws.as_str().into(),
            key.name.clone().into(),
            key.scope.as_str().into(),
            key.prefix.as_str().into(),
            key.hash.clone().into(),
            now.into(),
        ],
    )
}

/// The key columns read, with the workspace's name, then `$tail`.
macro_rules! key_select {
    ($tail:literal) => {
        concat!(
            "SELECT k.id, k.workspace_id, w.name, k.name, k.scope, k.prefix, k.hash,
               k.created_at, k.revoked_at FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id",
            $tail
        )
    };
}

/// Reads a key (after the script's own write of it: no row is a failure).
pub fn key_by_id(id: &ApiKeyId) -> Stmt {
    Stmt::new(key_select!(" WHERE k.id = $1"), vec![id.as_str().into()])
}

pub fn key_by_hash(hash: &[u8]) -> Stmt {
    Stmt::new(
        key_select!(" WHERE k.hash = $1"),
        vec![hash.to_vec().into()],
    )
}

pub fn list_keys(ws: Option<&WorkspaceId>) -> Stmt {
    Stmt::new(
        key_select!(" WHERE ($1 IS NULL OR k.workspace_id = $1) ORDER BY k.id"),
        vec![ws.map(WorkspaceId::as_str).into()],
    )
}

/// Revokes a key (a second revoke keeps the first time).
pub fn revoke_key(id: &ApiKeyId, now: Millis) -> Stmt {
    Stmt::new(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
        vec![id.as_str().into(), now.into()],
    )
    .or_not_found("API key", id)
}

pub fn keys(done: &Done) -> Result<Vec<ApiKeyRecord>> {
    done.rows.iter().map(|r| key(r)).collect()
}

/// The key a [`key_by_hash`] found, if any.
pub fn found_key(done: &Done) -> Result<Option<ApiKeyRecord>> {
    done.rows.first().map(|r| key(r)).transpose()
}

pub fn key(r: &[Val]) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: ApiKeyId::from_trusted(r.text(0)?),
        workspace_id: WorkspaceId::from_trusted(r.text(1)?),
        workspace_name: r.text(2)?,
        name: r.opt_text(3)?,
        scope: Scope::decode(r.str_at(4)?)?,
        prefix: r.text(5)?,
        hash: r.bytes(6)?,
        created_at: r.int(7)?,
        revoked_at: r.opt_int(8)?,
    })
}
