//! SQL for the inbound-call log (SQLite). Batches arrive from
//! `flows::inbound_log`'s writer task as one group-commit job.

use rusqlite::{Connection, params};

use super::internal;
use crate::domain::{FlowId, WorkspaceId};
use crate::store::{InboundCallRecord, Result};

pub fn record(c: &Connection, calls: &[InboundCallRecord], keep: usize) -> Result<()> {
    // A call whose flow was deleted meanwhile is skipped, not a foreign-key
    // failure that would lose the whole batch.
    let mut insert = c
        .prepare_cached(
            "INSERT INTO inbound_calls (workspace_id, flow_id, received_at, status, code, message,
                 run_id, contact_id, caller_ip, body, body_size)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11
             WHERE EXISTS (SELECT 1 FROM flows WHERE id = ?2 AND workspace_id = ?1)",
        )
        .map_err(internal)?;
    for call in calls {
        insert
            .execute(params![
                call.workspace_id.as_str(),
                call.flow_id.as_str(),
                call.received_at,
                call.status,
                call.code,
                call.message,
                call.run_id,
                call.contact_id,
                call.caller_ip,
                call.body.as_deref(),
                call.body_size,
            ])
            .map_err(internal)?;
    }
    let mut trim = c
        .prepare_cached(
            "DELETE FROM inbound_calls WHERE flow_id = ?1 AND id <= (
                 SELECT id FROM inbound_calls WHERE flow_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )
        .map_err(internal)?;
    let mut flows: Vec<&str> = calls.iter().map(|c| c.flow_id.as_str()).collect();
    flows.sort_unstable();
    flows.dedup();
    for flow in flows {
        trim.execute(params![flow, keep as i64]).map_err(internal)?;
    }
    Ok(())
}

pub fn list(
    c: &Connection,
    ws: &WorkspaceId,
    flow: &FlowId,
    limit: usize,
) -> Result<Vec<InboundCallRecord>> {
    let mut stmt = c
        .prepare_cached(
            "SELECT received_at, status, code, message, run_id, contact_id, caller_ip, body, body_size
             FROM inbound_calls WHERE workspace_id = ?1 AND flow_id = ?2
             ORDER BY id DESC LIMIT ?3",
        )
        .map_err(internal)?;
    let rows = stmt
        .query_map(params![ws.as_str(), flow.as_str(), limit as i64], |r| {
            Ok(InboundCallRecord {
                workspace_id: ws.clone(),
                flow_id: flow.clone(),
                received_at: r.get(0)?,
                status: r.get(1)?,
                code: r.get(2)?,
                message: r.get(3)?,
                run_id: r.get(4)?,
                contact_id: r.get(5)?,
                caller_ip: r.get(6)?,
                body: r.get::<_, Option<Vec<u8>>>(7)?.map(bytes::Bytes::from),
                body_size: r.get(8)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<std::result::Result<_, _>>()
        .map_err(internal)
}
