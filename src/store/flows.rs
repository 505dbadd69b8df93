//! Flows and their versions, written once (`store::sql`): the statements
//! the `Store` trait's default methods run on either database. A save
//! stores the document as a new version and the flow's trigger columns; a
//! document that asks for signed inbound calls gets a signing secret in the
//! same statement (shown once: `FlowRecord::inbound_secret_new`).

use serde_json::Value;

use super::sql::{Cached, Done, RowExt, Stmt, Val};
use super::{FlowRecord, FlowStatus, Result, StoreError, plan};
use crate::domain::signature::SigningSecret;
use crate::domain::{FlowId, Millis, Page, PageRequest, Stored, WorkspaceId};

/// The flow columns read, with its current version's document, then `$tail`.
macro_rules! flow_select {
    ($tail:literal) => {
        concat!(
            "SELECT f.id, f.name, f.status, f.current_version, v.document, f.inbound_token,
               f.created_at, f.updated_at, f.inbound_secret, f.workspace_id
             FROM flows f JOIN flow_versions v ON v.flow_id = f.id AND v.version = f.current_version ",
            $tail
        )
    };
}

pub fn get(ws: &WorkspaceId, id: &FlowId) -> Stmt {
    Stmt::new(
        flow_select!("WHERE f.workspace_id = $1 AND f.id = $2"),
        vec![ws.as_str().into(), id.as_str().into()],
    )
    .or_not_found("flow", id)
}

pub fn by_name(ws: &WorkspaceId, name: &str) -> Stmt {
    Stmt::new(
        flow_select!("WHERE f.workspace_id = $1 AND f.name = $2"),
        vec![ws.as_str().into(), name.into()],
    )
    .or_not_found("flow", name)
}

/// The flow whose inbound URL has `token`, in any workspace
/// ([`with_workspace`] reads it).
pub fn by_token(token: &str) -> Stmt {
    Stmt::new(
        flow_select!("WHERE f.inbound_token = $1"),
        vec![token.into()],
    )
    .or_not_found("inbound URL", "this token")
}

/// The one flow a [`by_token`] found, with its workspace.
pub fn with_workspace(done: &Done) -> Result<(WorkspaceId, FlowRecord)> {
    let r = done.row("flow")?;
    Ok((WorkspaceId::from_trusted(r.text(9)?), record(r)?))
}

pub fn page(ws: &WorkspaceId, page: &PageRequest) -> Stmt {
    Stmt::new(
        flow_select!("WHERE f.workspace_id = $1 AND f.id > $2 ORDER BY f.id LIMIT $3"),
        vec![
            ws.as_str().into(),
            page.after_id().into(),
            i64::from(page.limit + 1).into(),
        ],
    )
}

fn records(done: &Done) -> Result<Vec<FlowRecord>> {
    done.rows.iter().map(|r| record(r)).collect()
}

/// The one flow a [`get`] or [`by_name`] found (they fail when none).
pub fn one(done: &Done) -> Result<FlowRecord> {
    record(done.row("flow")?)
}

pub fn to_page(done: &Done, page: &PageRequest) -> Result<Page<FlowRecord>> {
    Ok(Page::from_overfetch(records(done)?, page.limit, |f| {
        f.id.as_str()
    }))
}

fn record(r: &[Val]) -> Result<FlowRecord> {
    Ok(FlowRecord {
        id: FlowId::from_trusted(r.text(0)?),
        name: r.text(1)?,
        status: FlowStatus::decode(r.str_at(2)?)?,
        version: r.int(3)?,
        document: std::sync::Arc::new(r.json(4)?),
        inbound_token: r.opt_text(5)?,
        inbound_secret: r.opt_text(8)?.map(SigningSecret::from_trusted),
        inbound_secret_new: false,
        created_at: r.int(6)?,
        updated_at: r.int(7)?,
    })
}

/// A secret for a document that asks for signed calls, else none.
fn secret_for(document: &crate::domain::flow::FlowDoc) -> Option<SigningSecret> {
    document.signs_inbound().then(SigningSecret::generate)
}

/// `read` (a [`get`]) after a write that may have stored `secret`: the
/// record says whether the secret now stored is that new one.
fn after_write(read: &Done, secret: Option<&SigningSecret>) -> Result<FlowRecord> {
    let mut flow = one(read)?;
    flow.inbound_secret_new = secret.is_some_and(|s| {
        flow.inbound_secret
            .as_ref()
            .is_some_and(|stored| stored.as_str() == s.as_str())
    });
    Ok(flow)
}

/// A new draft flow, version 1; then the flow as stored.
pub fn create(ws: &WorkspaceId, name: &str, document: &Value, now: Millis) -> Result<FlowWrite> {
    let doc = super::run::parse_doc(document)?;
    let id = FlowId::generate();
    let secret = secret_for(&doc);
    Ok(FlowWrite(vec![
        Stmt::new(
            "INSERT INTO flows (id, workspace_id, name, status, current_version, created_at, updated_at,
               trigger_type, trigger_key, inbound_secret)
             VALUES ($1, $2, $3, 'draft', 1, $4, $4, $5, $6, $7)",
            vec![
                id.as_str().into(),
                ws.as_str().into(),
                name.into(),
                now.into(),
                doc.trigger_type().into(),
                doc.trigger_key().into(),
                secret.as_ref().map(SigningSecret::as_str).into(),
            ],
        )
        .on_unique(plan::flow_name_taken(name))
        .changes(Cached::Flows),
        insert_version(ws, &id, document, now),
        get(ws, &id),
    ], secret))
}

/// A new version of the document (and the name), numbered after the
/// current one under the flow row's lock; then the flow as stored.
pub fn update(
    ws: &WorkspaceId,
    id: &FlowId,
    name: &str,
    document: &Value,
    now: Millis,
) -> Result<FlowWrite> {
    let doc = super::run::parse_doc(document)?;
    let secret = secret_for(&doc);
    Ok(FlowWrite(
        vec![
        Stmt::new(
            "UPDATE flows SET name = $3, current_version = current_version + 1, updated_at = $4,
               trigger_type = $5, trigger_key = $6, inbound_secret = COALESCE(inbound_secret, $7)
             WHERE workspace_id = $1 AND id = $2",
            vec![
                ws.as_str().into(),
                id.as_str().into(),
                name.into(),
                now.into(),
                doc.trigger_type().into(),
                doc.trigger_key().into(),
                secret.as_ref().map(SigningSecret::as_str).into(),
            ],
        )
        .or_not_found("flow", id)
        .on_unique(plan::flow_name_taken(name))
        .changes(Cached::Flows),
        insert_version(ws, id, document, now),
        get(ws, id),
    ],
        secret,
    ))
}

/// The current version's row, for the version `flows.current_version`
/// names (just written).
fn insert_version(ws: &WorkspaceId, id: &FlowId, document: &Value, now: Millis) -> Stmt {
    Stmt::new(
        "INSERT INTO flow_versions (flow_id, version, document, created_at)
         SELECT id, current_version, $3, $4 FROM flows WHERE workspace_id = $1 AND id = $2",
        vec![
            ws.as_str().into(),
            id.as_str().into(),
            document.into(),
            now.into(),
        ],
    )
}

/// Sets the status (and the inbound token if there is none). `signs` is
/// the document, read before, when the flow is being activated: one that
/// asks for signed calls gets a secret if it has none. Then the flow as
/// stored.
pub fn set_status(
    ws: &WorkspaceId,
    id: &FlowId,
    status: FlowStatus,
    token: Option<&str>,
    signs: Option<&crate::domain::flow::FlowDoc>,
    now: Millis,
) -> FlowWrite {
    let secret = signs.and_then(secret_for);
    FlowWrite(
        vec![
            Stmt::new(
                "UPDATE flows SET status = $3, inbound_token = COALESCE(inbound_token, $4), updated_at = $5,
               inbound_secret = COALESCE(inbound_secret, $6)
             WHERE workspace_id = $1 AND id = $2",
                vec![
                    ws.as_str().into(),
                    id.as_str().into(),
                    status.as_str().into(),
                    token.into(),
                    now.into(),
                    secret.as_ref().map(SigningSecret::as_str).into(),
                ],
            )
            .or_not_found("flow", id)
            .changes(Cached::Flows),
            get(ws, id),
        ],
        secret,
    )
}

/// Replaces the inbound token, and the signing secret if the document
/// (`current`, read before) asks for signed calls. Then the flow as stored.
pub fn rotate_token(current: &FlowRecord, ws: &WorkspaceId, token: &str, now: Millis) -> FlowWrite {
    let secret = secret_for(&current.document);
    FlowWrite(
        vec![
            Stmt::new(
                "UPDATE flows SET inbound_token = $3, updated_at = $4,
               inbound_secret = COALESCE($5, inbound_secret)
             WHERE workspace_id = $1 AND id = $2",
                vec![
                    ws.as_str().into(),
                    current.id.as_str().into(),
                    token.into(),
                    now.into(),
                    secret.as_ref().map(SigningSecret::as_str).into(),
                ],
            )
            .or_not_found("flow", &current.id),
            get(ws, &current.id),
        ],
        secret,
    )
}

pub fn delete(ws: &WorkspaceId, id: &FlowId) -> Stmt {
    Stmt::new(
        "DELETE FROM flows WHERE workspace_id = $1 AND id = $2",
        vec![ws.as_str().into(), id.as_str().into()],
    )
    .or_not_found("flow", id)
    .changes(Cached::Flows)
}

/// One version's document.
pub fn version(ws: &WorkspaceId, id: &FlowId, version: i64) -> Stmt {
    Stmt::new(
        "SELECT v.document FROM flow_versions v JOIN flows f ON f.id = v.flow_id
         WHERE f.workspace_id = $1 AND v.flow_id = $2 AND v.version = $3",
        vec![ws.as_str().into(), id.as_str().into(), version.into()],
    )
    .or_not_found("flow version", format!("{id}@{version}"))
}

/// A flow write's statements (ending with a read of the flow) and the
/// secret it offered, if the document asks for signed calls.
pub struct FlowWrite(pub Vec<Stmt>, pub Option<SigningSecret>);

impl FlowWrite {
    /// Runs the write; the flow as its last statement read it, marked with
    /// whether the secret offered is the one now stored (then new: shown
    /// once).
    pub async fn run(self, store: &(impl super::Store + ?Sized)) -> Result<FlowRecord> {
        let FlowWrite(script, secret) = self;
        let done = store.run_sql(script).await?;
        let read = done
            .last()
            .ok_or_else(|| StoreError::Internal("a flow write returned no read".into()))?;
        after_write(read, secret.as_ref())
    }
}
