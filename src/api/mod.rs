//! The HTTP API (axum only; no SQL here).
//!
//! Every route is registered through utoipa's `OpenApiRouter`, so the
//! OpenAPI document is generated from the same table that routes requests
//! and cannot forget a route (a test also checks it).

pub mod budget;
pub mod contacts;
pub mod error;
pub mod events;
pub mod extract;
pub mod flows;
pub mod inbound;
mod json_keys;
pub mod limits;
pub mod lists;
pub mod ops;
pub mod runs;
pub mod views;
pub mod webhooks;

use crate::domain::ErrorCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::store::Store;
use error::ApiError;

/// What every handler can reach: one `Arc`, because axum clones the state
/// for every extractor of every request (one atomic increment instead of
/// one per field; the clones showed in the upsert benchmark's profile).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state's contents.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub metrics: PrometheusHandle,
    /// The OpenAPI document, rendered once at start.
    pub openapi: Bytes,
    /// The flow engine: its clock, and a wake-up for work just accepted.
    pub engine: Arc<crate::flows::Engine>,
    pub inbound_limits: Arc<limits::InboundLimits>,
    /// Flows by inbound token, briefly (see `flows::inbound::lookup`).
    pub inbound_cache: Arc<crate::flows::inbound::InboundCache>,
    /// The most recent calls per inbound URL (`GET /v1/flows/{id}/inbound-calls`).
    pub inbound_log: Arc<crate::flows::inbound_log::InboundLog>,
    /// The SHA-256 of the bearer token `/metrics` requires; `None`: not served.
    pub metrics_token_hash: Option<Vec<u8>>,
    /// Outbound requests: the target policy and the guarded clients.
    pub outbound: Arc<crate::outbound::delivery::Outbound>,
}

/// Settings of the HTTP layer (from [`crate::config::Config::api_options`]).
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Inbound calls per second per API key; 0 is unlimited.
    pub inbound_rate_per_key: u32,
    /// Inbound calls per second per flow; 0 is unlimited.
    pub inbound_rate_per_flow: u32,
    /// Calls kept per flow in its inbound-call log; 0 keeps none.
    pub inbound_log_per_flow: usize,
    /// Longest wait for a request's headers, on a new connection or an idle
    /// keep-alive one (hyper times both with one timer).
    pub header_timeout: std::time::Duration,
    /// Longest wait for a whole request body once its headers arrived.
    pub body_timeout: std::time::Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// The SHA-256 of the bearer token `/metrics` requires (the token itself
    /// is never kept past start-up); `None`: metrics are not served.
    pub metrics_token_hash: Option<Vec<u8>>,
    /// Memory request bodies may take at once (see `budget`).
    pub max_body_memory_bytes: usize,
    /// How long a request waits for room in that budget before 503.
    pub body_budget_wait: std::time::Duration,
    /// Outbound webhooks: target safety, throttle, retention.
    pub outbound: crate::outbound::delivery::OutboundSettings,
}

impl Default for ApiOptions {
    fn default() -> Self {
        crate::config::Config::default().api_options()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "hookflow", description = "Marketing automation built around webhooks."),
    modifiers(&SecurityAddon),
    security(("bearer" = []), ("api_key" = [])),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The `metrics_token` setting, for `/metrics` only"))
                    .build(),
            ),
        );
    }
}

/// The routes and the OpenAPI document they produce, before state is bound.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::whoami))
        .routes(routes!(lists::create_list, lists::list_lists))
        .routes(routes!(
            lists::get_list,
            lists::rename_list,
            lists::delete_list
        ))
        .routes(routes!(lists::add_field))
        .routes(routes!(lists::remove_field))
        .routes(routes!(lists::list_members, lists::add_member))
        .routes(routes!(lists::remove_member))
        .routes(routes!(contacts::upsert_contact, contacts::list_contacts))
        .routes(routes!(contacts::lookup_contact))
        .routes(routes!(
            contacts::get_contact,
            contacts::update_contact,
            contacts::delete_contact
        ))
        .routes(routes!(contacts::contact_lists))
        .routes(routes!(flows::create_flow, flows::list_flows))
        .routes(routes!(
            flows::get_flow,
            flows::update_flow,
            flows::delete_flow
        ))
        .routes(routes!(flows::activate_flow))
        .routes(routes!(flows::pause_flow))
        .routes(routes!(flows::rotate_token))
        .routes(routes!(flows::inbound_calls))
        .routes(routes!(inbound::inbound_call))
        .routes(routes!(runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::update_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::enable_webhook))
        .routes(routes!(webhooks::disable_webhook))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::test_inline))
        .routes(routes!(webhooks::test_stored))
        .routes(routes!(
            webhooks::create_subscription,
            webhooks::list_subscriptions
        ))
        .routes(routes!(
            webhooks::get_subscription,
            webhooks::update_subscription,
            webhooks::delete_subscription
        ))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::get_delivery))
        .routes(routes!(webhooks::resend_delivery))
        .routes(routes!(webhooks::resend_deliveries))
        .routes(routes!(events::record_event))
        .routes({
            // A batch of 10,000 events is larger than one request's limit.
            let (schemas, paths, method) = routes!(events::record_events_bulk);
            (
                schemas,
                paths,
                method
                    .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(
                        events::MAX_BULK_BYTES,
                    ))
                    .layer::<_, std::convert::Infallible>(axum::Extension(
                        extract::BodyLimit::bulk(),
                    )),
            )
        })
        .split_for_parts()
}

/// The OpenAPI document as served at `/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = routes().1;
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    add_common_responses(&mut doc);
    open_schemas_used_in_all_of(&mut doc);
    doc
}

/// A struct that refuses unknown fields (`deny_unknown_fields`) gets
/// `additionalProperties: false`; where it is one part of an `allOf` (a
/// flattened struct, such as the wait forms inside a step), that refuses
/// the other parts' properties (`id`, `type`) and no document can match.
/// Such parts are opened; the whole still refuses unknown fields on the
/// wire, which the server checks.
fn open_schemas_used_in_all_of(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let mut parts = std::collections::BTreeSet::new();
    for schema in components.schemas.values() {
        let mut stack = vec![schema];
        while let Some(s) = stack.pop() {
            match s {
                RefOr::T(Schema::AllOf(all)) => {
                    for item in &all.items {
                        if let RefOr::Ref(r) = item {
                            parts
                                .insert(r.ref_location.rsplit('/').next().unwrap_or("").to_owned());
                        }
                        stack.push(item);
                    }
                }
                RefOr::T(Schema::OneOf(one)) => stack.extend(one.items.iter()),
                _ => {}
            }
        }
    }
    for name in parts {
        if let Some(RefOr::T(Schema::Object(o))) = components.schemas.get_mut(&name) {
            o.additional_properties = None;
        }
    }
}

/// The answers that the extractors and layers give on every operation of a
/// kind, documented once here rather than on each handler (where they were
/// missing): a body can be malformed, too large, of another media type,
/// wrong in a value, too slow or refused for memory; a query can be
/// malformed; a key can be missing or of the wrong scope. A handler's own
/// description of a status, where it has one, is kept.
fn add_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    let global_security = doc.security.clone().unwrap_or_default();
    for item in doc.paths.paths.values_mut() {
        for op in [
            item.get.as_mut(),
            item.post.as_mut(),
            item.put.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            let mut add = |status: &str, description: &str| {
                op.responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error(description));
            };
            let has_query = op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query));
            let has_body = op.request_body.is_some();
            let security = op.security.as_ref().unwrap_or(&global_security);
            let needs_key = security.iter().any(|s| {
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_object().map(|o| o.contains_key("bearer")))
                    .unwrap_or(false)
            });
            if has_body {
                add(
                    "400",
                    "The body is not JSON (`malformed_json`), repeats a key (`duplicate_key`) or cannot be read (`unreadable_body`), or the `Idempotency-Key` header is malformed (`invalid_idempotency_key`)",
                );
                add(
                    "408",
                    "The body did not arrive within `http_body_timeout_secs` (`body_timeout`)",
                );
                add(
                    "413",
                    "The body is larger than the limit, which the message names (`payload_too_large`)",
                );
                add(
                    "415",
                    "The body is not `application/json` in UTF-8 (`unsupported_media_type`)",
                );
                add(
                    "422",
                    "A value is of the wrong type, out of range or invalid; `field` names its JSON path",
                );
                add(
                    "503",
                    "The server's memory for request bodies is taken; retry after `Retry-After` seconds (`server_busy`)",
                );
            }
            if has_query {
                add(
                    "400",
                    "A query parameter is malformed (`invalid_query`, `invalid_limit`, `invalid_id`, `invalid_email`), or the cursor is not one this API returned (`invalid_cursor`)",
                );
            }
            if needs_key {
                add(
                    "401",
                    "No API key, an unknown or revoked one, or two different keys (`unauthorized`)",
                );
                add(
                    "403",
                    "The key's scope does not allow this operation (`forbidden`)",
                );
                add(
                    "503",
                    "The database is busy (`database_busy`); retry after `Retry-After` seconds",
                );
            }
        }
    }
}

/// A request path fit for logs: an inbound URL's token is a secret (anyone
/// holding it and a key of the workspace can start runs), so it is cut.
/// The span is made before routing, so the route template is not known yet.
fn loggable_path(path: &str) -> &str {
    if path.starts_with("/hooks/") {
        "/hooks/{token}"
    } else {
        path
    }
}

/// After any write under `/v1/flows` (save, activate, pause, rotate,
/// delete), drops the inbound cache, so the next call to a flow's URL reads
/// it afresh (see `flows::inbound::lookup`). Changes by other processes are caught by
/// the entry's own re-check of status and token.
async fn forget_inbound_flows(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let write =
        req.method() != axum::http::Method::GET && req.uri().path().starts_with("/v1/flows");
    let resp = next.run(req).await;
    if write {
        state.inbound_cache.clear();
    }
    resp
}

/// The complete application: routes, error fallbacks and middleware.
pub fn app(
    store: Arc<dyn Store>,
    options: &ApiOptions,
    engine: Arc<crate::flows::Engine>,
    inbound_log: Arc<crate::flows::inbound_log::InboundLog>,
    outbound: Arc<crate::outbound::delivery::Outbound>,
) -> Router {
    let (router, _) = routes();
    let doc = openapi_document();
    let state = AppState(Arc::new(Shared {
        store,
        metrics: crate::telemetry::metrics_handle(),
        openapi: Bytes::from(doc.to_json().unwrap_or_default()),
        engine,
        inbound_cache: Arc::default(),
        inbound_log,
        metrics_token_hash: options.metrics_token_hash.clone(),
        outbound,
        inbound_limits: Arc::new(limits::InboundLimits {
            per_key: limits::RateLimit::per_second(options.inbound_rate_per_key),
            per_flow: limits::RateLimit::per_second(options.inbound_rate_per_flow),
            unauthenticated_log: limits::RateLimit::per_second(limits::UNAUTHENTICATED_LOG_RATE),
        }),
    }));
    let request_id = HeaderName::from_static("x-request-id");
    router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forget_inbound_flows,
        ))
        .route_layer(axum::middleware::from_fn(ops::track_metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, ErrorCode::RouteNotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "this endpoint does not accept that method")
        })
        .with_state(state)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(axum::Extension(extract::BodyLimit::setting(options.max_body_bytes)))
        .layer(axum::Extension(extract::BodyTimeout(options.body_timeout)))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(budget::BodyBudget::new(
                options.max_body_memory_bytes,
                options.body_budget_wait,
            )),
            budget::charge_body,
        ))
        .layer(CatchPanicLayer::custom(|payload: Box<dyn std::any::Any + Send>| {
            let cause = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%cause, "a request handler panicked");
            ApiError::internal().into_response()
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %loggable_path(req.uri().path()), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    #[test]
    fn inbound_tokens_never_reach_the_request_span() {
        assert_eq!(
            super::loggable_path("/hooks/Dcp0IPKitxCH4uukoJ"),
            "/hooks/{token}"
        );
        assert_eq!(super::loggable_path("/v1/lists"), "/v1/lists");
    }
}
