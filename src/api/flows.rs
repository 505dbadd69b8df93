//! `/v1/flows`: flow documents, validated when saved (FL-7), versioned on
//! every save, activated, paused and given an inbound URL.

use crate::domain::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{AdminKey, JsonBody, PathParam, QueryParams};
use super::views::{FlowPage, FlowView, InboundCallList, InboundCallsQuery, PageQuery};
use crate::domain::flow::FlowDoc;
use crate::domain::{FlowId, WorkspaceId};
use crate::flows::save::{self, SaveError};

/// Validates `doc` against the workspace, then keeps its steps' inline
/// webhooks; the document to save. 422 `invalid_flow` lists every
/// problem, the first one in `message` and `field` (`steps.ID.SETTING`).
async fn checked(
    state: &AppState,
    ws: &WorkspaceId,
    doc: &FlowDoc,
    replaces: save::Replaces<'_>,
) -> Result<(FlowDoc, Value), ApiError> {
    let store = &*state.store;
    let kept = match save::check(store, ws, doc, &state.outbound.policy, replaces).await {
        Ok(c) => {
            c.keep_inline(
                store,
                ws,
                state.outbound.settings.verification,
                state.engine.now(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match kept {
        Ok(v) => Ok(v),
        Err(SaveError::Store(e)) => Err(e.into()),
        Err(SaveError::Nul(path)) => Err(ApiError::invalid(
            ErrorCode::NulCharacter,
            path,
            "text may not contain the NUL character (\\u0000)",
        )),
        Err(SaveError::Invalid(errors)) => {
            let first = &errors[0];
            let field = match &first.step {
                Some(step) => format!("steps.{step}.{}", first.setting),
                None => first.setting.clone(),
            };
            let message = match &first.step {
                Some(step) => format!("step `{step}`, `{}`: {}", first.setting, first.message),
                None => format!("`{}`: {}", first.setting, first.message),
            };
            let mut err = ApiError::invalid(ErrorCode::InvalidFlow, field, message);
            err.details = Some(
                errors
                    .iter()
                    .map(|e| json!({"step": e.step, "setting": e.setting, "message": e.message}))
                    .collect(),
            );
            Err(err)
        }
    }
}

/// Create a flow (a draft) from a flow document.
#[utoipa::path(post, path = "/v1/flows", tag = "flows", request_body = FlowDoc,
    responses((status = 201, body = FlowView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_flow(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    JsonBody(doc): JsonBody<FlowDoc>,
) -> Result<(StatusCode, Json<FlowView>), ApiError> {
    let (doc, value) = checked(&state, &p.workspace_id, &doc, save::Replaces::Nothing).await?;
    let flow = state
        .store
        .create_flow(&p.workspace_id, doc.name.trim(), value)
        .await?;
    Ok((StatusCode::CREATED, Json(flow.into())))
}

/// List the workspace's flows.
#[utoipa::path(get, path = "/v1/flows", tag = "flows", params(PageQuery), responses((status = 200, body = FlowPage)))]
pub async fn list_flows(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<FlowPage>, ApiError> {
    let page = state
        .store
        .list_flows(&p.workspace_id, &q.to_request()?)
        .await?;
    Ok(Json(page.into()))
}

/// Get a flow and its current document.
#[utoipa::path(get, path = "/v1/flows/{id}", tag = "flows", params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowView), (status = 404, body = ErrorBody)))]
pub async fn get_flow(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<FlowView>, ApiError> {
    let id = FlowId::parse(&id)?;
    Ok(Json(
        state.store.get_flow(&p.workspace_id, &id).await?.into(),
    ))
}

/// Replace a flow's document: saved as a new version.
#[utoipa::path(put, path = "/v1/flows/{id}", tag = "flows", params(("id" = String, Path, description = "Flow id")),
    request_body = FlowDoc,
    responses((status = 200, body = FlowView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_flow(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(doc): JsonBody<FlowDoc>,
) -> Result<Json<FlowView>, ApiError> {
    let id = FlowId::parse(&id)?;
    let (doc, value) = checked(&state, &p.workspace_id, &doc, save::Replaces::Id(&id)).await?;
    let saved = state
        .store
        .update_flow(&p.workspace_id, &id, doc.name.trim(), value)
        .await?;
    Ok(Json(
        save::ensure_inbound_url(&*state.store, &p.workspace_id, saved)
            .await?
            .into(),
    ))
}

/// Delete a flow and its versions.
#[utoipa::path(delete, path = "/v1/flows/{id}", tag = "flows", params(("id" = String, Path, description = "Flow id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_flow(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let id = FlowId::parse(&id)?;
    state.store.delete_flow(&p.workspace_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Activate a flow; an `inbound` flow gets its URL (and its signing secret,
/// shown in this answer only, if it asks for signed calls and has none).
#[utoipa::path(post, path = "/v1/flows/{id}/activate", tag = "flows", params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowView), (status = 404, body = ErrorBody)))]
pub async fn activate_flow(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<FlowView>, ApiError> {
    let id = FlowId::parse(&id)?;
    Ok(Json(
        save::activate(&*state.store, &p.workspace_id, &id)
            .await?
            .into(),
    ))
}

/// Pause a flow: it takes no new entries (inbound calls get 409) and its
/// runs wait where they are until it is activated again.
#[utoipa::path(post, path = "/v1/flows/{id}/pause", tag = "flows", params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowView), (status = 404, body = ErrorBody)))]
pub async fn pause_flow(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<FlowView>, ApiError> {
    let id = FlowId::parse(&id)?;
    Ok(Json(
        save::pause(&*state.store, &p.workspace_id, &id)
            .await?
            .into(),
    ))
}

/// Replace the inbound URL's token; the old URL stops working at once. A
/// flow that asks for signed calls gets a new signing secret too, shown in
/// this answer only.
#[utoipa::path(post, path = "/v1/flows/{id}/rotate-token", tag = "flows", params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, body = FlowView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rotate_token(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<FlowView>, ApiError> {
    let id = FlowId::parse(&id)?;
    let flow = state.store.get_flow(&p.workspace_id, &id).await?;
    if !flow.is_inbound() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NotInbound,
            "only a flow with an `inbound` trigger has an inbound URL",
        ));
    }
    Ok(Json(
        state
            .store
            .rotate_inbound_token(&p.workspace_id, &id, save::new_token())
            .await?
            .into(),
    ))
}

/// The flow's most recent inbound calls, newest first: accepted and
/// refused, with the body as received and the answer given (see what a
/// sender really sends, and why a call was refused). Headers are never kept,
/// so no key or signature is shown. Calls appear within moments of their
/// answer; the log keeps `inbound_log_per_flow` calls per flow.
#[utoipa::path(get, path = "/v1/flows/{id}/inbound-calls", tag = "flows",
    params(("id" = String, Path, description = "Flow id"), InboundCallsQuery),
    responses((status = 200, body = InboundCallList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn inbound_calls(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    QueryParams(q): QueryParams<InboundCallsQuery>,
) -> Result<Json<InboundCallList>, ApiError> {
    let id = FlowId::parse(&id)?;
    let keep = state.inbound_log.keep();
    let limit = match q.limit {
        None => keep,
        Some(n) if n >= 1 && n as usize <= keep.max(1) => n as usize,
        Some(_) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidLimit,
                format!(
                    "limit must be between 1 and {} (the `inbound_log_per_flow` setting)",
                    keep.max(1)
                ),
            ));
        }
    };
    // 404 for a flow of another workspace, as everywhere.
    state.store.get_flow(&p.workspace_id, &id).await?;
    let calls = state
        .store
        .list_inbound_calls(&p.workspace_id, &id, limit)
        .await?;
    Ok(Json(InboundCallList {
        data: calls.into_iter().map(Into::into).collect(),
    }))
}
