//! The inbound-call log's SQL, written once (`store::sql`): a batch is one
//! insert per chunk and one trim per flow, on either database.

use super::sql::{Arg, Done, RowExt, Stmt};
use super::{InboundCallRecord, Result, StoreError};
use crate::domain::{FlowId, WorkspaceId};

/// Most calls per `INSERT` (12 parameters each, far below either
/// database's limit); chunks are powers of two (`sql::pow2_chunks`).
const CHUNK: usize = 256;

/// Appends `calls` in order (ids in arrival order: the log lists newest
/// first by id), skipping a call whose flow was deleted meanwhile rather
/// than failing the batch on its foreign key; then keeps each flow's newest
/// `keep` calls.
pub fn record_script(calls: &[InboundCallRecord], keep: usize) -> Vec<Stmt> {
    let mut script: Vec<Stmt> = super::sql::pow2_chunks(calls, CHUNK)
        .map(|chunk| {
            let mut rows = Vec::with_capacity(chunk.len());
            let mut args: Vec<Arg> = Vec::with_capacity(12 * chunk.len());
            for (i, c) in chunk.iter().enumerate() {
                rows.push(format!("({})", super::sql::params(1 + 12 * i, 12)));
                args.extend([
                    Arg::from(i as i64),
                    c.workspace_id.as_str().into(),
                    c.flow_id.as_str().into(),
                    c.received_at.into(),
                    i64::from(c.status).into(),
                    c.code.as_str().into(),
                    c.message.clone().into(),
                    c.run_id.clone().into(),
                    c.contact_id.clone().into(),
                    c.caller_ip.clone().into(),
                    c.body.as_ref().map(|b| b.to_vec()).into(),
                    c.body_size.into(),
                ]);
            }
            // VALUES columns are column1, column2 … on both databases.
            Stmt::new(
                format!(
                    "INSERT INTO inbound_calls (workspace_id, flow_id, received_at, status, code, message,
                       run_id, contact_id, caller_ip, body, body_size)
                     SELECT column2, column3, column4, column5, column6, column7, column8, column9,
                       column10, column11, column12
                     FROM (VALUES {}) v
                     WHERE EXISTS (SELECT 1 FROM flows f WHERE f.id = v.column3 AND f.workspace_id = v.column2)
                     ORDER BY v.column1",
                    rows.join(", ")
                ),
                args,
            )
        })
        .collect();
    let mut flows: Vec<&str> = calls.iter().map(|c| c.flow_id.as_str()).collect();
    flows.sort_unstable();
    flows.dedup();
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    script.extend(flows.into_iter().map(|flow| {
        Stmt::new(
            "DELETE FROM inbound_calls WHERE flow_id = $1 AND id <= (
               SELECT id FROM inbound_calls WHERE flow_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            vec![flow.into(), keep.into()],
        )
    }));
    script
}

/// A flow's newest `limit` calls ([`calls`] reads them).
pub fn list_stmt(ws: &WorkspaceId, flow: &FlowId, limit: usize) -> Stmt {
    Stmt::new(
        "SELECT received_at, status, code, message, run_id, contact_id, caller_ip, body, body_size
         FROM inbound_calls WHERE workspace_id = $1 AND flow_id = $2
         ORDER BY id DESC LIMIT $3",
        vec![
            ws.as_str().into(),
            flow.as_str().into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    )
}

/// The rows of a [`list_stmt`].
pub fn calls(done: &Done, ws: &WorkspaceId, flow: &FlowId) -> Result<Vec<InboundCallRecord>> {
    done.rows
        .iter()
        .map(|r| {
            Ok(InboundCallRecord {
                workspace_id: ws.clone(),
                flow_id: flow.clone(),
                received_at: r.int(0)?,
                status: u16::try_from(r.int(1)?).map_err(|e| {
                    StoreError::Internal(format!("inbound_calls.status out of range: {e}"))
                })?,
                code: r.text(2)?,
                message: r.opt_text(3)?,
                run_id: r.opt_text(4)?,
                contact_id: r.opt_text(5)?,
                caller_ip: r.opt_text(6)?,
                body: r.opt_bytes(7)?.map(bytes::Bytes::from),
                body_size: r.int(8)?,
            })
        })
        .collect()
}
