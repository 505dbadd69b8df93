//! Decisions for a contact entering a flow, shared by both stores.

use super::{EntryRequest, EntryResult, FlowStatus, StoreError};
use crate::domain::ErrorCode;

/// Why a contact's entry started no run (the answer's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryRefusal {
    /// The flow does not repeat and the contact went through it before.
    AlreadyEntered,
    /// A run of the contact in this flow is unfinished.
    RunActive,
}

crate::stored_enum!(EntryRefusal, "entry refusal", {
    AlreadyEntered => "already_entered",
    RunActive => "run_active",
});

/// Whether a new run may start, given what the store found (FL-3): without
/// `repeat` a contact enters a flow at most once, ever; with it, never while
/// a run of theirs in that flow is unfinished.
pub fn run_decision(repeat: bool, any_run: bool, active_run: bool) -> Option<EntryRefusal> {
    if !repeat && any_run {
        Some(EntryRefusal::AlreadyEntered)
    } else if active_run {
        Some(EntryRefusal::RunActive)
    } else {
        None
    }
}

pub fn key_reused() -> StoreError {
    StoreError::Conflict {
        code: ErrorCode::IdempotencyKeyReused,
        message: "this Idempotency-Key was used with a different request".into(),
    }
}

pub fn flow_not_active() -> StoreError {
    StoreError::Conflict {
        code: ErrorCode::FlowNotActive,
        message: "the flow is not active; activate it to accept calls".into(),
    }
}

/// Whether the flow, as the entry's transaction reads it, still takes this
/// entry: active, and (for an inbound call) still reached by the token the
/// call came through. The API caches flows by token for a moment, so this
/// is what makes a pause, a deletion or a rotation by another process take
/// effect at once.
pub fn check_flow(
    status: FlowStatus,
    token: Option<&str>,
    req: &EntryRequest,
) -> Result<(), StoreError> {
    if let Some(used) = &req.inbound_token
        && token != Some(used.as_str())
    {
        return Err(StoreError::not_found("inbound URL", "this token"));
    }
    match status {
        FlowStatus::Active => Ok(()),
        _ => Err(flow_not_active()),
    }
}

pub fn decode(raw: &str) -> Result<EntryResult, StoreError> {
    serde_json::from_str(raw)
        .map_err(|e| StoreError::Internal(format!("stored idempotent answer: {e}")))
}

/// Reads the answer stored for idempotency key `key` in `scope`
/// ([`stored_answer`] checks it against the request).
pub fn answer_stmt(ws: &crate::domain::WorkspaceId, scope: &str, key: &str) -> super::sql::Stmt {
    super::sql::Stmt::new(
        "SELECT request_hash, response FROM idempotency_keys
         WHERE workspace_id = $1 AND scope = $2 AND key = $3",
        vec![ws.as_str().into(), scope.into(), key.into()],
    )
}

/// The answer an [`answer_stmt`] found, if any; a Conflict if the key came
/// with another request (`hash`).
pub fn stored_answer(done: &super::sql::Done, hash: &[u8]) -> super::Result<Option<EntryResult>> {
    use super::sql::RowExt;
    let Some(r) = done.rows.first() else {
        return Ok(None);
    };
    if r.bytes(0)? != hash {
        return Err(key_reused());
    }
    decode(r.str_at(1)?).map(Some)
}

/// Stores `answer` for idempotency key `key` in `scope`.
pub fn store_answer_stmt(
    ws: &crate::domain::WorkspaceId,
    scope: &str,
    key: &str,
    hash: &[u8],
    answer: &EntryResult,
    now: crate::domain::Millis,
) -> super::Result<super::sql::Stmt> {
    Ok(super::sql::Stmt::new(
        "INSERT INTO idempotency_keys (workspace_id, scope, key, request_hash, response, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        vec![
            ws.as_str().into(),
            scope.into(),
            key.into(),
            hash.to_vec().into(),
            super::sql::Arg::json(answer)?,
            now.into(),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_rules() {
        assert_eq!(run_decision(false, false, false), None);
        assert_eq!(
            run_decision(false, true, false),
            Some(EntryRefusal::AlreadyEntered)
        );
        assert_eq!(run_decision(true, true, false), None);
        assert_eq!(
            run_decision(true, true, true),
            Some(EntryRefusal::RunActive)
        );
    }
}
