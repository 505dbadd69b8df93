//! `POST /hooks/{token}`: the inbound API call entry point (IN-1..IN-7, IN-9).
//!
//! A call carries a key (admin or ingest) of the flow's workspace, or, when
//! the flow asks for it, a Standard Webhooks signature instead, and a JSON
//! object with `email`. The flow's mapping copies values at JSON paths onto
//! list fields; the whole body is kept as the run's event data. The 202 is
//! sent only after contact, membership, run and idempotency answer are
//! committed and synced (the store's one atomic `enter_flow`).

use crate::domain::ErrorCode;
use axum::Json;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{PathParam, authenticate_headers, parse_json, read_json, refuse_nul};
use crate::domain::flow::{self, Trigger};
use crate::domain::signature::{self, SignatureError, SignedHeaders};
use crate::domain::{ApiKeyId, WorkspaceId};
use crate::flows::inbound::{InboundError, Target, entry_request, lookup};
use crate::store::{EntryRequest, EntryResult, FlowRecord, FlowStatus, StoreError};

#[derive(Serialize, ToSchema)]
pub struct InboundAccepted {
    pub contact_id: String,
    /// The run that started, if one did.
    pub run_id: Option<String>,
    pub run_started: bool,
    /// Why no run started: `already_entered` (the flow does not repeat and
    /// the contact went through it before) or `run_active`.
    pub reason: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::not_found("no inbound URL has this token (it may have been rotated)")
}

/// Call a flow's inbound URL: upsert the contact into the flow's list and
/// start a run.
#[utoipa::path(post, path = "/hooks/{token}", tag = "inbound", params(("token" = String, Path, description = "The flow's inbound token"),
        ("webhook-id" = Option<String>, Header, description = "Signed calls (flows with `signature`): the message id, also the idempotency key unless `Idempotency-Key` is sent"),
        ("webhook-timestamp" = Option<String>, Header, description = "Signed calls: seconds since the epoch, within 5 minutes of the server's time"),
        ("webhook-signature" = Option<String>, Header, description = "Signed calls: space-separated `v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}`")),
    request_body(content = Object, description = "A JSON object with `email`; other values are mapped by the flow"),
    responses((status = 202, body = InboundAccepted), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 403, description = "The caller's address is not in the flow's `allowed_ips`", body = ErrorBody),
        (status = 429, description = "A rate limit was reached; `Retry-After` says when to retry", body = ErrorBody)))]
pub async fn inbound_call(
    State(state): State<AppState>,
    PathParam(token): PathParam<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let mut seen = Seen::default();
    let outcome = receive(&state, &token, peer, request, &mut seen).await;
    // A caller who proved nothing (no valid key or signature) is logged
    // without a body, and at most a few times a second per flow: whoever
    // holds only the URL may neither write to the database at will nor push
    // the owner's calls out of the log.
    if let Some((ws, flow)) = seen.flow
        && (seen.authenticated
            || state
                .inbound_limits
                .unauthenticated_log
                .check(flow.as_str())
                .is_ok())
    {
        state
            .inbound_log
            .record(log_record(ws, flow, peer, seen.body.as_ref(), &outcome));
    }
    outcome.map(|(result, replayed)| accepted(result, replayed))
}

/// What the inbound-call log needs to know of a call, gathered as it is
/// handled: the flow its token leads to, whether the caller proved who it
/// is, and the body once it was read and the caller authenticated.
#[derive(Default)]
struct Seen {
    flow: Option<(WorkspaceId, crate::domain::FlowId)>,
    authenticated: bool,
    body: Option<bytes::Bytes>,
}

fn log_record(
    workspace_id: WorkspaceId,
    flow_id: crate::domain::FlowId,
    peer: Option<IpAddr>,
    body: Option<&bytes::Bytes>,
    outcome: &Result<(EntryResult, bool), ApiError>,
) -> crate::store::InboundCallRecord {
    let (body, body_size) = match body {
        Some(b) => {
            let (kept, size) = crate::flows::inbound_log::kept_body(b);
            (Some(kept), size)
        }
        None => (None, 0),
    };
    let mut record = crate::store::InboundCallRecord {
        workspace_id,
        flow_id,
        received_at: chrono::Utc::now().timestamp_millis(),
        status: StatusCode::ACCEPTED.as_u16(),
        code: String::new(),
        message: None,
        run_id: None,
        contact_id: None,
        caller_ip: peer.map(|ip| ip.to_canonical().to_string()),
        body,
        body_size,
    };
    match outcome {
        Ok((r, replayed)) => {
            record.code = r
                .not_started
                .clone()
                .unwrap_or_else(|| "run_started".into());
            record.message = replayed.then(|| {
                "replayed: the stored answer to an earlier call with this idempotency key".into()
            });
            record.run_id = r.run_id.clone();
            record.contact_id = Some(r.contact_id.clone());
        }
        Err(e) => {
            record.status = e.status.as_u16();
            record.code = e.code.as_str().to_owned();
            record.message = Some(e.message.clone());
        }
    }
    record
}

/// Handles a call: authentication, checks, mapping and the entry. `seen`
/// collects what the inbound-call log keeps, whatever the outcome.
async fn receive(
    state: &AppState,
    token: &str,
    peer: Option<IpAddr>,
    request: Request,
    seen: &mut Seen,
) -> Result<(EntryResult, bool), ApiError> {
    let headers = request.headers().clone();
    let found = lookup(&*state.store, &state.inbound_cache, token).await?;
    seen.flow = found.as_ref().map(|t| (t.ws.clone(), t.flow.id.clone()));
    // A flow that asks for signed calls is authenticated by the signature
    // alone (which covers the body, so the body is read first); any other by
    // an API key of its workspace, checked before the body is read and
    // before anything is said about the token (no key: 401, known token or
    // not).
    let (target, bytes, message_id) = match found {
        Some(t) if t.signature().is_some() => {
            let bytes = read_json(request, state).await?;
            let id = check_signature(&t.flow, &headers, &bytes)?;
            seen.authenticated = true;
            check_peer(&t, peer)?;
            seen.body = Some(bytes.clone());
            check_limits(state, None, &t.flow)?;
            (t, bytes, Some(id))
        }
        found => {
            let p = authenticate_headers(&headers, state).await?;
            // Another workspace's key learns nothing about this URL.
            let t = found
                .filter(|t| t.ws == p.workspace_id)
                .ok_or_else(not_found)?;
            seen.authenticated = true;
            check_peer(&t, peer)?;
            check_limits(state, Some(&p.key_id), &t.flow)?;
            let bytes = read_json(request, state).await?;
            seen.body = Some(bytes.clone());
            (t, bytes, None)
        }
    };
    let body: Value = parse_json(&bytes)?;
    refuse_nul(&body)?;
    let (ws, flow, doc) = (&target.ws, &target.flow, &target.doc);
    let idempotency = idempotency(&headers, &body, message_id.as_deref())?;
    // An answered key is answered again, before anything about the flow or
    // the body is re-checked: a retry after a pause still learns its result.
    if let Some((key, hash)) = &idempotency
        && let Some(result) = state
            .store
            .idempotent_answer(ws, flow.id.as_str(), key, hash)
            .await?
    {
        return Ok((result, true));
    }
    if flow.status != FlowStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::FlowNotActive,
            format!(
                "the flow is {}; activate it to accept calls",
                flow.status.as_str()
            ),
        ));
    }
    let (mut req, origin) = entry_request(flow, doc, body, idempotency).map_err(|e| match e {
        InboundError::NotInbound => not_found(),
        InboundError::Invalid {
            code,
            field,
            message,
        } => ApiError::invalid(code, field, message),
        InboundError::Internal(cause) => {
            tracing::error!(%cause, "an inbound call met a broken flow");
            ApiError::internal()
        }
    })?;
    req.inbound_token = Some(token.to_owned());
    let entered = enter(state, ws, req, &origin).await;
    if let Err(e) = &entered
        && matches!(e.code, ErrorCode::NotFound | ErrorCode::FlowNotActive)
    {
        // The flow changed under the cached copy (paused, rotated or deleted
        // by another process): the next call reads it afresh. A caller's own
        // bad data says nothing about the flow and keeps the cache.
        state.inbound_cache.evict(token);
    }
    entered
}

/// The flow's `allowed_ips` (403 `ip_not_allowed`), against the TCP peer.
/// `X-Forwarded-For` is not consulted: any caller can write it, so trusting
/// it would let anyone claim an allowed address. Behind a reverse proxy,
/// every peer is the proxy: restrict addresses there instead.
fn check_peer(target: &Target, peer: Option<IpAddr>) -> Result<(), ApiError> {
    let Trigger::Inbound { allowed_ips, .. } = &target.doc.trigger else {
        return Ok(());
    };
    if allowed_ips.is_empty() {
        return Ok(());
    }
    match peer {
        Some(ip) if flow::ip_allowed(allowed_ips, ip) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::IpNotAllowed,
            match peer {
                Some(ip) => format!(
                    "calls from {} are not allowed by this flow's `allowed_ips`",
                    ip.to_canonical()
                ),
                None => {
                    "the caller's address is unknown, and this flow only allows listed addresses"
                        .to_owned()
                }
            },
        )),
    }
}

/// The per-key and per-flow rate limits (429 `rate_limited` with
/// `Retry-After`); checked once the caller is authenticated, so that nobody
/// else can spend a key's or a flow's allowance.
fn check_limits(
    state: &AppState,
    key: Option<&ApiKeyId>,
    flow: &FlowRecord,
) -> Result<(), ApiError> {
    let limits = &state.inbound_limits;
    if let Some(key) = key {
        limits.per_key.check(key.as_str()).map_err(|wait| {
            ApiError::rate_limited(
                "this API key sends more inbound calls per second than `inbound_rate_per_key` allows; retry later",
                wait,
            )
        })?;
    }
    limits.per_flow.check(flow.id.as_str()).map_err(|wait| {
        ApiError::rate_limited(
            "this flow receives more calls per second than `inbound_rate_per_flow` allows; retry later",
            wait,
        )
    })
}

/// Verifies a signed call (IN-9); the message's `webhook-id`. 401 with
/// `missing_signature`, `invalid_signature` or `timestamp_out_of_tolerance`.
fn check_signature(
    flow: &FlowRecord,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ApiError> {
    let Some(secret) = &flow.inbound_secret else {
        // Only if the column was emptied by hand: the store makes a secret
        // whenever a document asking for signatures is saved or activated.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::FlowMisconfigured,
            "the flow asks for signed calls but has no signing secret; rotate its token to make one",
        ));
    };
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = SignedHeaders {
        id: text("webhook-id"),
        timestamp: text("webhook-timestamp"),
        signature: text("webhook-signature"),
    };
    let now = chrono::Utc::now().timestamp();
    match signature::verify(secret, &signed, body, now) {
        Ok(id) => Ok(id.to_owned()),
        Err(e) => {
            let code = match e {
                SignatureError::Missing(_) => ErrorCode::MissingSignature,
                SignatureError::Invalid(_) => ErrorCode::InvalidSignature,
                SignatureError::OutOfTolerance(_) => ErrorCode::TimestampOutOfTolerance,
            };
            Err(ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string()))
        }
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters
/// (no space, no control), sent once. Anything else is 400
/// `invalid_idempotency_key` rather than a key silently altered or chosen.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key is sent more than once; send it once",
        ));
    }
    let bytes = first.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)",
        ));
    }
    // Visible ASCII is valid text.
    Ok(first.to_str().ok())
}

/// The idempotency key (the `Idempotency-Key` header, else a signed call's
/// `webhook-id`, so a redelivery is recognised) and a hash of the body.
fn idempotency(
    headers: &HeaderMap,
    body: &Value,
    message_id: Option<&str>,
) -> Result<Option<(String, Vec<u8>)>, ApiError> {
    let key = idempotency_key(headers)?.or(message_id);
    // serde_json maps keep keys sorted: equal bodies hash equally.
    Ok(key.map(|k| {
        (
            k.to_owned(),
            Sha256::digest(body.to_string().as_bytes()).to_vec(),
        )
    }))
}

/// Records the entry; the 202 once it is committed and synced.
async fn enter(
    state: &AppState,
    ws: &WorkspaceId,
    req: EntryRequest,
    origin: &[(String, String)],
) -> Result<(EntryResult, bool), ApiError> {
    let out = match state.store.enter_flow(ws, req).await {
        Ok(out) => out,
        Err(StoreError::Invalid {
            code: ErrorCode::UnknownList,
            ..
        }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::FlowMisconfigured,
                "the flow's list no longer exists; fix and save the flow",
            ));
        }
        Err(StoreError::Invalid {
            code,
            field,
            message,
        }) => {
            // Name the body's path, not the list field it maps to.
            let at = origin
                .iter()
                .find(|(f, _)| *f == field)
                .map_or(field, |(_, p)| p.clone());
            return Err(ApiError::invalid(code, at, message));
        }
        Err(e) => return Err(e.into()),
    };
    if out.result.run_id.is_some() {
        state.engine.wake();
    }
    Ok((out.result, out.replayed))
}

fn accepted(r: EntryResult, replayed: bool) -> Response {
    let body = InboundAccepted {
        contact_id: r.contact_id,
        run_started: r.run_id.is_some(),
        run_id: r.run_id,
        reason: r.not_started,
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}
