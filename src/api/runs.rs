//! `/v1/runs`: runs and their step history (FL-6), and cancelling a run.

use crate::domain::ErrorCode;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{AdminKey, PathParam, QueryParams};
use super::views::{PageQuery, RunDetail, RunPage, RunView};
use crate::domain::{ContactId, FlowId, RunId};
use crate::store::{RunFilter, RunStatus};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Only runs of this flow.
    #[param(pattern = r"^fl_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub flow_id: Option<String>,
    /// Only runs of this contact.
    #[param(pattern = r"^ct_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub contact_id: Option<String>,
    pub status: Option<RunStatus>,
}

fn id_param<T>(
    raw: Option<&str>,
    field: &str,
    parse: impl Fn(&str) -> Result<T, crate::domain::IdError>,
) -> Result<Option<T>, ApiError> {
    raw.map(|v| {
        parse(v).map_err(|e| {
            ApiError::bad_request(ErrorCode::InvalidId, e.to_string()).with_field(field)
        })
    })
    .transpose()
}

/// List runs, oldest first, optionally of one flow, one contact or one status.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(RunQuery),
    responses((status = 200, body = RunPage), (status = 400, body = ErrorBody)))]
pub async fn list_runs(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<RunQuery>,
) -> Result<Json<RunPage>, ApiError> {
    let page = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .to_request()?;
    let filter = RunFilter {
        flow_id: id_param(q.flow_id.as_deref(), "flow_id", FlowId::parse)?,
        contact_id: id_param(q.contact_id.as_deref(), "contact_id", ContactId::parse)?,
        status: q.status,
    };
    Ok(Json(
        state
            .store
            .list_runs(&p.workspace_id, &filter, &page)
            .await?
            .into(),
    ))
}

/// Get a run with its step history.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunDetail), (status = 404, body = ErrorBody)))]
pub async fn get_run(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = RunId::parse(&id)?;
    let (run, history) = state.store.get_run(&p.workspace_id, &id).await?;
    Ok(Json(RunDetail {
        run: run.into(),
        history: history.into_iter().map(Into::into).collect(),
    }))
}

/// Cancel an unfinished run: it ends with reason `cancelled` and executes
/// no further step. 409 `run_finished` if it had already ended.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RunView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_run(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<RunView>, ApiError> {
    let id = RunId::parse(&id)?;
    let run = state
        .store
        .cancel_run(&p.workspace_id, &id, state.engine.now())
        .await?;
    Ok(Json(run.into()))
}
