//! SQL for the inbound-call log (PostgreSQL): a batch is one `UNNEST`
//! insert and one trim, whatever its size.

use sqlx::{PgConnection, Row};

use super::internal;
use crate::domain::{FlowId, WorkspaceId};
use crate::store::{InboundCallRecord, Result};

pub async fn record(c: &mut PgConnection, calls: &[InboundCallRecord], keep: usize) -> Result<()> {
    let col = |f: fn(&InboundCallRecord) -> Option<String>| calls.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO inbound_calls (workspace_id, flow_id, received_at, status, code, message,
             run_id, contact_id, caller_ip, body, body_size)
         SELECT t.workspace_id, t.flow_id, t.received_at, t.status, t.code, t.message, t.run_id,
             t.contact_id, t.caller_ip, t.body, t.body_size
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::int[], $5::text[],
             $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[], $11::bigint[])
             WITH ORDINALITY
             AS t(workspace_id, flow_id, received_at, status, code, message, run_id, contact_id,
                  caller_ip, body, body_size, n)
         WHERE EXISTS (SELECT 1 FROM flows f WHERE f.id = t.flow_id AND f.workspace_id = t.workspace_id)
         -- ids in arrival order: the log lists newest first by id
         ORDER BY t.n",
    )
    .bind(col(|c| Some(c.workspace_id.as_str().to_owned())))
    .bind(col(|c| Some(c.flow_id.as_str().to_owned())))
    .bind(calls.iter().map(|c| c.received_at).collect::<Vec<i64>>())
    .bind(calls.iter().map(|c| i32::from(c.status)).collect::<Vec<i32>>())
    .bind(col(|c| Some(c.code.clone())))
    .bind(col(|c| c.message.clone()))
    .bind(col(|c| c.run_id.clone()))
    .bind(col(|c| c.contact_id.clone()))
    .bind(col(|c| c.caller_ip.clone()))
    .bind(
        calls
            .iter()
            .map(|c| c.body.as_ref().map(|b| b.to_vec()))
            .collect::<Vec<Option<Vec<u8>>>>(),
    )
    .bind(calls.iter().map(|c| c.body_size).collect::<Vec<i64>>())
    .execute(&mut *c)
    .await
    .map_err(internal)?;
    let mut flows: Vec<String> = calls
        .iter()
        .map(|c| c.flow_id.as_str().to_owned())
        .collect();
    flows.sort_unstable();
    flows.dedup();
    sqlx::query(
        "DELETE FROM inbound_calls c USING (
             SELECT f, (SELECT id FROM inbound_calls WHERE flow_id = f ORDER BY id DESC
                        LIMIT 1 OFFSET $2) AS cut
             FROM UNNEST($1::text[]) AS f) t
         WHERE c.flow_id = t.f AND c.id <= t.cut",
    )
    .bind(flows)
    .bind(keep as i64)
    .execute(&mut *c)
    .await
    .map_err(internal)?;
    Ok(())
}

pub async fn list(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    flow: &FlowId,
    limit: usize,
) -> Result<Vec<InboundCallRecord>> {
    let rows = sqlx::query(
        "SELECT received_at, status, code, message, run_id, contact_id, caller_ip, body, body_size
         FROM inbound_calls WHERE workspace_id = $1 AND flow_id = $2
         ORDER BY id DESC LIMIT $3",
    )
    .bind(ws.as_str())
    .bind(flow.as_str())
    .bind(limit as i64)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    rows.iter()
        .map(|r| {
            Ok(InboundCallRecord {
                workspace_id: ws.clone(),
                flow_id: flow.clone(),
                received_at: r.try_get("received_at").map_err(internal)?,
                status: u16::try_from(r.try_get::<i32, _>("status").map_err(internal)?)
                    .map_err(|e| crate::store::StoreError::Internal(e.to_string()))?,
                code: r.try_get("code").map_err(internal)?,
                message: r.try_get("message").map_err(internal)?,
                run_id: r.try_get("run_id").map_err(internal)?,
                contact_id: r.try_get("contact_id").map_err(internal)?,
                caller_ip: r.try_get("caller_ip").map_err(internal)?,
                body: r
                    .try_get::<Option<Vec<u8>>, _>("body")
                    .map_err(internal)?
                    .map(bytes::Bytes::from),
                body_size: r.try_get("body_size").map_err(internal)?,
            })
        })
        .collect()
}
