//! `POST /hooks/{token}`: the inbound API call entry point (IN-1..IN-7).
//!
//! A call carries a key (admin or ingest) of the flow's workspace and a JSON
//! object with `email`. The flow's mapping copies values at JSON paths onto
//! list fields; the whole body is kept as the run's event data. The 202 is
//! sent only after contact, membership, run and idempotency answer are
//! committed and synced (the store's one atomic `enter_flow`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{AnyKey, JsonBody, PathParam, refuse_nul};
use crate::domain::flow::{FlowDoc, Trigger};
use crate::domain::jsonpath::JsonPath;
use crate::domain::{Email, ListId, Phone};
use crate::store::{ContactUpsert, EntryRequest, EntryResult, FlowStatus, StoreError};

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
#[utoipa::path(post, path = "/hooks/{token}", tag = "inbound", params(("token" = String, Path, description = "The flow's inbound token")),
    request_body(content = Object, description = "A JSON object with `email`; other values are mapped by the flow"),
    responses((status = 202, body = InboundAccepted), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn inbound_call(
    State(state): State<AppState>,
    AnyKey(p): AnyKey,
    PathParam(token): PathParam<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let (ws, flow) = match state.store.flow_by_token(&token).await {
        Ok(found) => found,
        Err(StoreError::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    // Another workspace's key learns nothing about this URL.
    if ws != p.workspace_id {
        return Err(not_found());
    }
    refuse_nul(&body)?;
    // An answered key is answered again, before anything about the flow or
    // the body is re-checked: a retry after a pause still learns its result.
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })?;
            // serde_json maps keep keys sorted: equal bodies hash equally.
            let hash = Sha256::digest(body.to_string().as_bytes()).to_vec();
            Some((key.to_owned(), hash))
        }
    };
    if let Some((key, hash)) = &idempotency
        && let Some(result) = state
            .store
            .idempotent_answer(&ws, flow.id.as_str(), key, hash)
            .await?
    {
        return Ok(accepted(result, true));
    }
    if flow.status != FlowStatus::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "flow_not_active",
            format!(
                "the flow is {}; activate it to accept calls",
                flow.status.as_str()
            ),
        ));
    }
    let doc: FlowDoc =
        serde_json::from_value(flow.document.clone()).map_err(|_| ApiError::internal())?;
    let Trigger::Inbound { list_id, mapping } = &doc.trigger else {
        return Err(not_found());
    };
    let Value::Object(fields_in) = &body else {
        return Err(ApiError::invalid(
            "invalid_body",
            ".",
            "the body must be a JSON object",
        ));
    };
    let email = match fields_in.get("email") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "missing_field",
                "email",
                "email is required",
            ));
        }
        Some(Value::String(s)) => Email::parse(s)
            .map_err(|e| ApiError::invalid("invalid_email", "email", e.to_string()))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_email",
                "email",
                "email must be a string",
            ));
        }
    };
    let mut phone = None;
    let mut fields = Map::new();
    let mut origin = Vec::new(); // (list field, body path) to name the body path in errors
    for (path, target) in mapping {
        let Ok(jp) = JsonPath::parse(path) else {
            continue;
        };
        let Some(v) = jp.get(&body).filter(|v| !v.is_null()) else {
            continue;
        };
        if target == "phone" {
            let s = v.as_str().ok_or_else(|| {
                ApiError::invalid(
                    "invalid_phone",
                    path.clone(),
                    "a phone number must be a string",
                )
            })?;
            phone = Some(Some(Phone::parse(s).map_err(|e| {
                ApiError::invalid("invalid_phone", path.clone(), e.to_string())
            })?));
        } else {
            fields.insert(target.clone(), v.clone());
            origin.push((format!("fields.{target}"), path.clone()));
        }
    }
    let list = ListId::parse(list_id).map_err(|_| ApiError::internal())?;
    let req = EntryRequest {
        flow_id: flow.id.clone(),
        flow_version: flow.version,
        first_step: doc.steps.first().map(|s| s.id.clone()).unwrap_or_default(),
        repeat: doc.repeat,
        has_exits: !doc.exit_conditions.is_empty(),
        contact: ContactUpsert {
            email: Some(email),
            phone,
            status: None,
            fields,
            lists: vec![list],
        },
        event_data: body.clone(),
        idempotency,
    };
    let out = match state.store.enter_flow(&ws, req).await {
        Ok(out) => out,
        Err(StoreError::Invalid {
            code: "unknown_list",
            ..
        }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "flow_misconfigured",
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
    Ok(accepted(out.result, out.replayed))
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
