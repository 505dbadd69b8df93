//! Operational endpoints: liveness, readiness, metrics, the OpenAPI document,
//! and "who am I" for a key.

use crate::domain::ErrorCode;
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::AdminKey;
use crate::domain::Scope;
use crate::domain::keys::{hash_presented, hashes_match};

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(), responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
}

/// The store answers; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(),
    responses((status = 200, body = Readiness), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "the database does not answer",
        )
    })?;
    Ok(Json(Readiness {
        status: "ready",
        store: state.store.kind(),
    }))
}

/// Prometheus metrics in the text exposition format. Served only when the
/// `metrics_token` setting is set, to a request that carries it as
/// `Authorization: Bearer <token>` (Prometheus: `authorization` in the
/// scrape config): the counts describe every workspace together, so they
/// are the operator's, not any API key holder's.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("metrics_token" = [])),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 401, description = "The bearer token is missing or wrong", body = ErrorBody),
        (status = 404, description = "Metrics are off (no `metrics_token` set)", body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let Some(token) = &state.metrics_token_hash else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::MetricsDisabled,
            "metrics are off: set the `metrics_token` setting and scrape with `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::extract::bearer_token)
        .unwrap_or("");
    // Hashes of equal length, compared in constant time (as API keys are):
    // neither the token's bytes nor its length show in the timing.
    if !hashes_match(&hash_presented(presented), token) {
        return ApiError::unauthorized("metrics need `Authorization: Bearer <metrics_token>`")
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(),
    responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    pub workspace_id: String,
    pub workspace_name: String,
    pub scope: Scope,
}

/// The workspace of the calling key.
#[utoipa::path(get, path = "/v1/workspace", tag = "workspace",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn whoami(AdminKey(p): AdminKey) -> Json<WhoAmI> {
    Json(WhoAmI {
        workspace_id: p.workspace_id.to_string(),
        workspace_name: p.workspace_name,
        scope: p.scope,
    })
}

/// Counts requests and times them, labelled by route template (never the
/// raw path, whose ids would explode the label set) and status.
pub async fn track_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("hookflow_http_requests_total", &labels).increment(1);
    metrics::histogram!("hookflow_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    resp
}
