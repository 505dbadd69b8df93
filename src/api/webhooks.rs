//! `/v1/webhooks` (WH-1, WH-2, WH-10): reusable outbound webhooks, their
//! signing secrets and test requests; `/v1/deliveries` (WH-11): the
//! activity log of every message sent, with each attempt, and resends.

use crate::domain::ErrorCode;
use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{AdminKey, JsonBody, PathParam, QueryParams};
use super::views::PageQuery;
use crate::domain::signature::SigningSecret;
use crate::domain::{DeliveryId, WebhookId, millis_to_rfc3339};
use crate::outbound::config::{MASK, WebhookConfig};
use crate::outbound::delivery::{Outbound, render, secrets};
use crate::outbound::schedule::Verdict;
use crate::outbound::template::{ContactVars, FlowVars, IdVars, RenderContext};
use crate::store::outbound::{
    self as out, AttemptRecord, DeliveryFilter, DeliveryRecord, DeliveryStatus, NewWebhook,
    WebhookRecord,
};

/// How long a rotated-out signing secret goes on signing.
pub const OLD_SECRET_SIGNS_MS: i64 = 24 * 3600 * 1000;

#[derive(Deserialize, Serialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Latin letters and digits only, 1 to 100 (the SendPulse rule).
    #[schema(pattern = "^[A-Za-z0-9]{1,100}$", example = "CrmSync")]
    pub name: String,
    /// `http://` or `https://`; must not be a private, loopback or
    /// link-local address (unless the operator allows its range).
    #[schema(example = "https://crm.example.com/hooks/hookflow")]
    pub url: String,
    /// `POST` (default), `PUT`, `PATCH`, `GET` or `DELETE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Default `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Extra request headers; no hop-by-hop headers, no `Content-Type`,
    /// `Authorization` or `webhook-*` (they have settings of their own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `{"type": "none"}`, `{"type": "basic", "user", "password"}` or
    /// `{"type": "bearer", "token"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
    /// Retries after a failed attempt, 0 to 20 (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 20)]
    pub retries: Option<u8>,
    /// Per attempt, 1 to 60000 (default 15000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<u64>,
    /// Requests in progress at once to this webhook (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 256)]
    pub max_concurrency: Option<u16>,
    /// Requests per second, across every process; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_per_second: Option<u32>,
    /// A 2xx answer that is not JSON counts as a failure.
    #[serde(default)]
    pub strict_json: bool,
    /// Follow redirects (each hop checked like the URL); off by default.
    #[serde(default)]
    pub follow_redirects: bool,
    /// Body template (minijinja); absent: the default body, SendPulse's
    /// shape. Variables: `contact`, `event`, `flow`, `run`, `step`, `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A webhook, secrets masked.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    #[schema(example = "wh_01j9zq3k0f8x5m2v7c4b6n1d0e")]
    pub id: String,
    pub name: String,
    pub url: String,
    pub method: String,
    pub content_type: String,
    pub headers: BTreeMap<String, String>,
    /// Secrets masked (`********`).
    #[schema(value_type = Object)]
    pub auth: Value,
    pub retries: u8,
    pub timeout_ms: u64,
    pub max_concurrency: u16,
    pub rate_per_second: Option<u32>,
    pub strict_json: bool,
    pub follow_redirects: bool,
    pub template: Option<String>,
    pub enabled: bool,
    /// Why it was disabled (by a user, a 410 Gone answer, or failing
    /// deliveries).
    pub disabled_reason: Option<String>,
    /// What the receiver answers with to verify it (the whole body, or a
    /// JSON field `verification_key`); until then one delivery per hour.
    pub verification_key: String,
    pub verified: bool,
    /// The next delivery may not start before this time.
    pub next_allowed_at: Option<String>,
    /// Made by a flow save for a `send_webhook` step's inline `webhook`:
    /// saving that flow again overwrites it.
    pub inline: bool,
    /// The signing secret (`whsec_…`): only in the answer that created or
    /// rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookPage {
    pub items: Vec<WebhookView>,
    pub next_cursor: Option<String>,
}

fn view(w: WebhookRecord, config: Option<&WebhookConfig>, show_secret: bool) -> WebhookView {
    let m = config
        .map(WebhookConfig::masked)
        .unwrap_or_else(|| w.spec.clone());
    let headers = m["headers"]
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    WebhookView {
        id: w.id.to_string(),
        name: w.name,
        url: m["url"].as_str().unwrap_or_default().to_owned(),
        method: m["method"].as_str().unwrap_or("POST").to_owned(),
        content_type: m["content_type"]
            .as_str()
            .unwrap_or("application/json")
            .to_owned(),
        headers,
        auth: if config.is_some() {
            m["auth"].clone()
        } else {
            json!({ "type": MASK })
        },
        retries: m["retries"].as_u64().unwrap_or(8) as u8,
        timeout_ms: m["timeout_ms"].as_u64().unwrap_or(15_000),
        max_concurrency: m["max_concurrency"].as_u64().unwrap_or(8) as u16,
        rate_per_second: m["rate_per_second"].as_u64().map(|r| r as u32),
        strict_json: m["strict_json"].as_bool().unwrap_or(false),
        follow_redirects: m["follow_redirects"].as_bool().unwrap_or(false),
        template: m["template"].as_str().map(str::to_owned),
        enabled: w.enabled,
        disabled_reason: w.disabled_reason,
        verification_key: w.verification_key,
        verified: w.verified,
        next_allowed_at: (w.next_allowed_at > 0).then(|| millis_to_rfc3339(w.next_allowed_at)),
        inline: w.inline,
        signing_secret: show_secret.then_some(w.secret),
        created_at: millis_to_rfc3339(w.created_at),
        updated_at: millis_to_rfc3339(w.updated_at),
    }
}

/// The checked configuration of an input, or 422 naming every problem.
fn check(outbound: &Outbound, input: &WebhookInput) -> Result<(Value, WebhookConfig), ApiError> {
    let spec = serde_json::to_value(input).map_err(|_| ApiError::internal())?;
    match outbound.config(&spec) {
        Ok(c) => Ok((spec, c)),
        Err(problems) => {
            let first = problems.first().cloned();
            let mut e = ApiError::invalid(
                ErrorCode::InvalidWebhook,
                first.as_ref().map_or_else(String::new, |p| p.field.clone()),
                first.map_or_else(
                    || "the webhook is not valid".to_owned(),
                    |p| format!("{}: {}", p.field, p.message),
                ),
            );
            e.details = Some(
                problems
                    .into_iter()
                    .map(|p| json!({ "field": p.field, "message": p.message }))
                    .collect(),
            );
            Err(e)
        }
    }
}

fn stored_view(outbound: &Outbound, w: WebhookRecord, show_secret: bool) -> WebhookView {
    let config = outbound.config(&w.spec).ok();
    view(w, config.as_ref(), show_secret)
}

/// Create a webhook. The answer is the only one that shows its signing
/// secret.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = WebhookInput,
    responses((status = 201, body = WebhookView), (status = 422, body = ErrorBody)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    JsonBody(body): JsonBody<WebhookInput>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let (spec, config) = check(&state.outbound, &body)?;
    let w = out::create_webhook(
        &*state.store,
        &p.workspace_id,
        NewWebhook {
            name: &config.name,
            max_concurrency: config.max_concurrency,
            spec: &spec,

            verified: !state.outbound.settings.verification,
            event_types: None,
            inline: false,
        },
        state.engine.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view(w, Some(&config), true))))
}

/// List the workspace's webhooks.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(PageQuery),
    responses((status = 200, body = WebhookPage), (status = 400, body = ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<WebhookPage>, ApiError> {
    let page = out::list_webhooks(&*state.store, &p.workspace_id, &q.to_request()?, false).await?;
    Ok(Json(WebhookPage {
        next_cursor: page.next.map(|c| c.encode()),
        items: page
            .items
            .into_iter()
            .map(|w| stored_view(&state.outbound, w, false))
            .collect(),
    }))
}

/// Get one webhook (secrets masked).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = WebhookId::parse(&id)?;
    let w = out::get_webhook(&*state.store, &p.workspace_id, &id).await?;
    Ok(Json(stored_view(&state.outbound, w, false)))
}

/// Replace a webhook's configuration (its secret and state stay).
/// Secrets left masked (`********`) keep their stored values.
#[utoipa::path(put, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")),
    request_body = WebhookInput,
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_webhook(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(mut body): JsonBody<WebhookInput>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = WebhookId::parse(&id)?;
    let old = out::get_webhook(&*state.store, &p.workspace_id, &id).await?;
    // A client that sends back what it read keeps the stored secrets.
    let mut input = serde_json::to_value(&body).map_err(|_| ApiError::internal())?;
    crate::outbound::config::unmask(&mut input, &old.spec);
    body = serde_json::from_value(input).map_err(|_| ApiError::internal())?;
    let (spec, config) = check(&state.outbound, &body)?;
    let w = out::update_webhook(
        &*state.store,
        &p.workspace_id,
        &id,
        out::WebhookUpdate {
            name: &config.name,
            spec: &spec,
            max_concurrency: config.max_concurrency,
            event_types: None,
        },
        state.engine.now(),
    )
    .await?;
    Ok(Json(view(w, Some(&config), false)))
}

/// Delete a webhook with its deliveries. Flows whose steps name it fail
/// at those steps until they are changed.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let id = WebhookId::parse(&id)?;
    out::delete_webhook(&*state.store, &p.workspace_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable a webhook: deliveries held while it was disabled go out, in
/// order.
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)))]
pub async fn enable_webhook(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = WebhookId::parse(&id)?;
    let w = out::set_enabled(
        &*state.store,
        &p.workspace_id,
        &id,
        true,
        None,
        state.engine.now(),
    )
    .await?;
    state.engine.deliveries_wake().notify_one();
    Ok(Json(stored_view(&state.outbound, w, false)))
}

/// Disable a webhook: its deliveries wait (never dropped) until it is
/// enabled again.
#[utoipa::path(post, path = "/v1/webhooks/{id}/disable", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)))]
pub async fn disable_webhook(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = WebhookId::parse(&id)?;
    let w = out::set_enabled(
        &*state.store,
        &p.workspace_id,
        &id,
        false,
        Some("disabled through the API"),
        state.engine.now(),
    )
    .await?;
    Ok(Json(stored_view(&state.outbound, w, false)))
}

/// Replace the signing secret; the old one goes on signing (a second
/// signature) for 24 hours. The answer is the only one that shows it.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = WebhookId::parse(&id)?;
    let now = state.engine.now();
    let secret = SigningSecret::generate();
    let w = out::rotate_secret(
        &*state.store,
        &p.workspace_id,
        &id,
        secret.as_str(),
        now + OLD_SECRET_SIGNS_MS,
        now,
    )
    .await?;
    Ok(Json(stored_view(&state.outbound, w, true)))
}

// ---- test requests (WH-10) -----------------------------------------------------------

/// Sample data a test request renders with, where none is given.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TestData {
    /// The contact: `email`, `phone`, `status`, `fields`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub contact: Option<Value>,
    /// The run's event data.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub event: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineTest {
    pub webhook: WebhookInput,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub contact: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub event: Option<Value>,
}

/// The answer to a test request, in the seed's shape plus the exchange.
#[derive(Serialize, ToSchema)]
pub struct TestResult {
    /// True when the request succeeded.
    pub status: bool,
    pub message: String,
    /// 1 success; 21111011 the template failed; 11110111 the request failed
    /// (connection, timeout, non-2xx); 11110112 invalid response format
    /// (strict JSON); 11110113 the verification key did not match;
    /// 11110114 incorrect URL IP.
    pub code: u64,
    /// The request sent, secrets masked.
    #[schema(value_type = Object)]
    pub request: Value,
    /// `status`, `headers`, `body`, `duration_ms`; null when there was no
    /// answer.
    #[schema(value_type = Option<Object>)]
    pub response: Option<Value>,
}

/// `contact` and `event` of a test request must be objects when given.
fn objects(contact: &Option<Value>, event: &Option<Value>) -> Result<(), ApiError> {
    for (name, v) in [("contact", contact), ("event", event)] {
        if v.as_ref().is_some_and(|v| !v.is_object() && !v.is_null()) {
            return Err(ApiError::invalid(
                ErrorCode::InvalidTestData,
                name,
                format!("`{name}` must be a JSON object"),
            ));
        }
    }
    Ok(())
}

fn sample_context(contact: Option<Value>, event: Option<Value>, now: i64) -> RenderContext {
    let c = contact.unwrap_or_else(|| json!({}));
    let text = |k: &str, d: &str| c.get(k).and_then(Value::as_str).unwrap_or(d).to_owned();
    RenderContext {
        contact: ContactVars {
            id: "ct_00000000000000000000000000".into(),
            email: text("email", "example@example.com"),
            phone: c
                .get("phone")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| Some("+380631234567".into())),
            status: text("status", "subscribed"),
            fields: c
                .get("fields")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_else(|| {
                    json!({ "name": "Example" })
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                }),
        },
        event: event.unwrap_or_else(|| json!({})),
        flow: FlowVars {
            id: "fl_00000000000000000000000000".into(),
            name: "Test".into(),
        },
        run: IdVars {
            id: "run_00000000000000000000000000".into(),
        },
        step: IdVars { id: "test".into() },
        now: chrono::DateTime::from_timestamp_millis(now).unwrap_or_default(),
    }
}

async fn test_request(
    outbound: &Outbound,
    config: &WebhookConfig,
    record: Option<&WebhookRecord>,
    ctx: &RenderContext,
    now: i64,
) -> TestResult {
    let request_shape = json!({ "method": config.method.as_str(), "url": config.url.as_str() });
    let body = match render(config, ctx) {
        Ok(b) => b,
        Err(message) => {
            return TestResult {
                status: false,
                message,
                code: 21_111_011,
                request: request_shape,
                response: None,
            };
        }
    };
    let secret_list = match record {
        Some(w) => secrets(w, now),
        None => vec![SigningSecret::generate()],
    };
    let id = DeliveryId::generate();
    let a = outbound
        .attempt(config, id.as_str(), &body, &secret_list, now)
        .await;
    let duration_ms = i64::try_from(a.duration.as_millis()).unwrap_or(i64::MAX);
    let response = a.response.as_ref().map(|r| {
        json!({
            "status": r.status,
            "headers": r.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(&r.body),
            "duration_ms": duration_ms,
        })
    });
    let (status, code, message) = match &a.verdict {
        Verdict::Delivered => {
            let key_ok = match record {
                Some(w) if !w.verified && outbound.settings.verification => {
                    a.response.as_ref().is_some_and(|r| {
                        crate::outbound::schedule::verification_matches(
                            &r.body,
                            &w.verification_key,
                        )
                    })
                }
                _ => true,
            };
            if key_ok {
                (true, 1, "the request succeeded".to_owned())
            } else {
                (
                    false,
                    11_110_113,
                    "the receiver answered 2xx but not with the webhook's verification key"
                        .to_owned(),
                )
            }
        }
        Verdict::Retry { reason, .. } | Verdict::Final { reason, .. } => {
            let text = a
                .error
                .clone()
                .map_or_else(|| reason.clone(), |e| format!("{reason}: {e}"));
            let code = if reason.starts_with("incorrect_url_ip") {
                11_110_114
            } else if reason.starts_with("invalid response format") {
                11_110_112
            } else {
                11_110_111
            };
            (false, code, text)
        }
    };
    TestResult {
        status,
        message,
        code,
        request: json!(a.request),
        response,
    }
}

/// Send one real request with an inline configuration, now (not subject to
/// the hourly throttle; subject to target safety).
#[utoipa::path(post, path = "/v1/webhooks/test", tag = "webhooks", request_body = InlineTest,
    responses((status = 200, body = TestResult), (status = 422, body = ErrorBody)))]
pub async fn test_inline(
    State(state): State<AppState>,
    AdminKey(_p): AdminKey,
    JsonBody(body): JsonBody<InlineTest>,
) -> Result<Json<TestResult>, ApiError> {
    objects(&body.contact, &body.event)?;
    let (_, config) = check(&state.outbound, &body.webhook)?;
    let now = state.engine.now();
    let ctx = sample_context(body.contact, body.event, now);
    Ok(Json(
        test_request(&state.outbound, &config, None, &ctx, now).await,
    ))
}

/// Send one real request to a stored webhook, now, signed with its secret.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path, description = "Webhook id")),
    request_body = TestData,
    responses((status = 200, body = TestResult), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn test_stored(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(raw): JsonBody<Value>,
) -> Result<Json<TestResult>, ApiError> {
    let id = WebhookId::parse(&id)?;
    // An object only: serde would also read a struct of optional fields
    // from an array.
    if !raw.is_object() {
        return Err(ApiError::invalid(
            ErrorCode::InvalidTestData,
            "",
            "the body must be a JSON object (it may be empty: {})",
        ));
    }
    let body: TestData = serde_json::from_value(raw)
        .map_err(|e| ApiError::invalid(ErrorCode::InvalidTestData, "", e.to_string()))?;
    objects(&body.contact, &body.event)?;
    let w = out::get_webhook(&*state.store, &p.workspace_id, &id).await?;
    let config = state.outbound.config(&w.spec).map_err(|problems| {
        ApiError::invalid(
            ErrorCode::InvalidWebhook,
            "",
            problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let now = state.engine.now();
    let ctx = sample_context(body.contact, body.event, now);
    Ok(Json(
        test_request(&state.outbound, &config, Some(&w), &ctx, now).await,
    ))
}

// ---- deliveries (WH-11) --------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(pattern = r"^wh_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub webhook_id: Option<String>,
    /// Only deliveries of this event subscription.
    #[param(pattern = r"^sub_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub subscription_id: Option<String>,
    #[param(pattern = r"^fl_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub flow_id: Option<String>,
    #[param(pattern = r"^run_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub run_id: Option<String>,
    #[param(pattern = r"^ct_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub contact_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    /// Created at or after (RFC 3339).
    pub since: Option<String>,
    /// Created before (RFC 3339).
    pub until: Option<String>,
}

fn time_param(raw: Option<&str>, field: &str) -> Result<Option<i64>, ApiError> {
    raw.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_millis())
            .map_err(|_| {
                ApiError::bad_request(
                    ErrorCode::InvalidTime,
                    format!("`{field}` must be an RFC 3339 time such as 2026-01-31T09:00:00Z"),
                )
                .with_field(field)
            })
    })
    .transpose()
}

/// An id in a filter, checked: 400 naming the parameter when it is not
/// one (a filter is not a path: nothing is "not found").
fn id_check<T: ToString>(
    raw: Option<&str>,
    field: &str,
    parse: impl Fn(&str) -> Result<T, crate::domain::IdError>,
) -> Result<Option<String>, ApiError> {
    raw.map(|r| {
        parse(r).map(|id| id.to_string()).map_err(|e| {
            ApiError::bad_request(ErrorCode::InvalidId, e.to_string()).with_field(field)
        })
    })
    .transpose()
}

impl DeliveryQuery {
    fn filter(&self) -> Result<DeliveryFilter, ApiError> {
        Ok(DeliveryFilter {
            webhook_id: match (
                id_check(self.webhook_id.as_deref(), "webhook_id", WebhookId::parse)?,
                id_check(
                    self.subscription_id.as_deref(),
                    "subscription_id",
                    crate::domain::SubscriptionId::parse,
                )?,
            ) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(
                        ErrorCode::InvalidFilter,
                        "give `webhook_id` or `subscription_id`, not both",
                    ));
                }
                (w, s) => w.or(s).map(WebhookId::from_trusted),
            },
            flow_id: id_check(
                self.flow_id.as_deref(),
                "flow_id",
                crate::domain::FlowId::parse,
            )?,
            run_id: id_check(
                self.run_id.as_deref(),
                "run_id",
                crate::domain::RunId::parse,
            )?,
            contact_id: id_check(
                self.contact_id.as_deref(),
                "contact_id",
                crate::domain::ContactId::parse,
            )?,
            status: self.status,
            since: time_param(self.since.as_deref(), "since")?,
            until: time_param(self.until.as_deref(), "until")?,
        })
    }
}

/// One message to a webhook.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    /// Sent as `webhook-id` on every attempt.
    #[schema(example = "msg_01j9zq3k0f8x5m2v7c4b6n1d0e")]
    pub id: String,
    pub webhook_id: String,
    /// `flow.step` for a flow's `send_webhook` step.
    pub event_type: String,
    pub flow_id: Option<String>,
    pub run_id: Option<String>,
    pub contact_id: Option<String>,
    pub step: Option<String>,
    pub status: DeliveryStatus,
    /// Attempts toward the current retry budget.
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(d: DeliveryRecord) -> Self {
        Self {
            id: d.id.to_string(),
            webhook_id: d.webhook_id.to_string(),
            event_type: d.event_type,
            flow_id: d.flow_id,
            run_id: d.run_id,
            contact_id: d.contact_id,
            step: d.step,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(millis_to_rfc3339),
            last_error: d.last_error,
            created_at: millis_to_rfc3339(d.created_at),
            updated_at: millis_to_rfc3339(d.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

/// One HTTP attempt: the exact request (secrets masked) and what came back.
#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub id: String,
    pub started_at: String,
    /// `method`, `url`, `headers` (pairs), `body`.
    #[schema(value_type = Object)]
    pub request: Value,
    pub response_status: Option<i64>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub response_headers: Option<Value>,
    /// The response body as text (at most 64 KiB are kept).
    pub response_body: Option<String>,
    /// The response body went on past 64 KiB (the rest was not read).
    pub response_truncated: bool,
    pub duration_ms: i64,
    pub error: Option<String>,
    /// `succeeded`, `retry` or `failed`.
    pub outcome: String,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            id: a.id.to_string(),
            started_at: millis_to_rfc3339(a.started_at),
            request: a.request,
            response_status: a.response_status,
            response_headers: a.response_headers,
            response_body: a
                .response_body
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            response_truncated: a.truncated,
            duration_ms: a.duration_ms,
            error: a.error,
            outcome: a.outcome,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub attempts_made: Vec<AttemptView>,
}

/// The activity log: deliveries, newest first.
#[utoipa::path(get, path = "/v1/deliveries", tag = "deliveries", params(DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<DeliveryQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let page = PageQuery {
        cursor: q.cursor.clone(),
        limit: q.limit,
    }
    .to_request()?;
    let found = out::list_deliveries(
        &*state.store,
        &p.workspace_id,
        &q.filter()?,
        &page,
        state.engine.now(),
    )
    .await?;
    Ok(Json(DeliveryPage {
        next_cursor: found.next.map(|c| c.encode()),
        items: found.items.into_iter().map(DeliveryView::from).collect(),
    }))
}

/// A delivery with every attempt, oldest first.
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "deliveries", params(("id" = String, Path, description = "Delivery id (msg_…)")),
    responses((status = 200, body = DeliveryDetail), (status = 404, body = ErrorBody)))]
pub async fn get_delivery(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let id = DeliveryId::parse(&id)?;
    let (d, attempts) =
        out::get_delivery(&*state.store, &p.workspace_id, &id, state.engine.now()).await?;
    Ok(Json(DeliveryDetail {
        delivery: d.into(),
        attempts_made: attempts.into_iter().map(AttemptView::from).collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Resent {
    /// The deliveries queued again (under their own ids).
    pub resent: Vec<String>,
}

/// Send a delivery again now, under the same `webhook-id`, with a fresh
/// retry budget (409 while an attempt of it is in flight).
#[utoipa::path(post, path = "/v1/deliveries/{id}/resend", tag = "deliveries", params(("id" = String, Path, description = "Delivery id (msg_…)")),
    responses((status = 202, body = Resent), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resend_delivery(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<(StatusCode, Json<Resent>), ApiError> {
    let id = DeliveryId::parse(&id)?;
    let ids = out::resend(
        &*state.store,
        &p.workspace_id,
        &DeliveryFilter::default(),
        Some(&id),
        state.engine.now(),
    )
    .await?;
    if ids.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AttemptInFlight,
            format!("an attempt of delivery `{id}` is in flight; resend it once it has ended"),
        ));
    }
    state.engine.deliveries_wake().notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            resent: ids.into_iter().map(|d| d.to_string()).collect(),
        }),
    ))
}

/// Which deliveries a bulk resend sends again (every field narrows; at
/// least `webhook_id` or `status`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendFilter {
    #[schema(pattern = r"^wh_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub webhook_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    /// Created at or after (RFC 3339).
    pub since: Option<String>,
    /// Created before (RFC 3339).
    pub until: Option<String>,
}

/// Send again every delivery a filter finds (e.g. every failed delivery of
/// a webhook since a time), each under its own `webhook-id`.
#[utoipa::path(post, path = "/v1/deliveries/resend", tag = "deliveries", request_body = ResendFilter,
    responses((status = 202, body = Resent), (status = 422, body = ErrorBody)))]
pub async fn resend_deliveries(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    JsonBody(body): JsonBody<ResendFilter>,
) -> Result<(StatusCode, Json<Resent>), ApiError> {
    if body.webhook_id.is_none() && body.status.is_none() {
        return Err(ApiError::invalid(
            ErrorCode::FilterTooWide,
            "",
            "give `webhook_id` or `status` (or both): a bulk resend of everything is refused",
        ));
    }
    let filter = DeliveryFilter {
        webhook_id: body
            .webhook_id
            .as_deref()
            .map(|w| {
                WebhookId::parse(w).map_err(|e| {
                    ApiError::invalid(ErrorCode::InvalidId, "webhook_id", e.to_string())
                })
            })
            .transpose()?,
        status: body.status,
        since: time_param(body.since.as_deref(), "since")?,
        until: time_param(body.until.as_deref(), "until")?,
        ..DeliveryFilter::default()
    };
    let ids = out::resend(
        &*state.store,
        &p.workspace_id,
        &filter,
        None,
        state.engine.now(),
    )
    .await?;
    state.engine.deliveries_wake().notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            resent: ids.into_iter().map(|d| d.to_string()).collect(),
        }),
    ))
}

// ---- subscriptions (WH-13) -------------------------------------------------------------

/// An event subscription: a URL with a webhook's delivery settings and the
/// events it wants.
#[derive(Deserialize, ToSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// Latin letters and digits only (default `Subscription`).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9]{1,100}$")]
    pub name: Option<String>,
    #[schema(example = "https://crm.example.com/hooks/unsubscribes")]
    pub url: String,
    /// Any of `flow.goal_reached`, `flow.completed`, `flow.exited`,
    /// `webhook.disabled`, `contact.unsubscribed`,
    /// `contact.spam_complaint`, `contact.bounced`.
    #[schema(min_items = 1)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub retries: Option<u8>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60000)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 256)]
    pub max_concurrency: Option<u16>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_per_second: Option<u32>,
    #[serde(default)]
    pub follow_redirects: bool,
}

/// A subscription, secrets masked.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionView {
    #[serde(flatten)]
    pub webhook: WebhookView,
    pub event_types: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionPage {
    pub items: Vec<SubscriptionView>,
    pub next_cursor: Option<String>,
}

impl SubscriptionInput {
    /// The webhook this subscription delivers through, and its events,
    /// checked (422 naming what is wrong).
    fn checked(self, outbound: &Outbound) -> Result<(Value, WebhookConfig, Vec<String>), ApiError> {
        let mut events = self.event_types;
        events.sort();
        events.dedup();
        if events.is_empty() {
            return Err(ApiError::invalid(
                ErrorCode::InvalidSubscription,
                "event_types",
                "give at least one event type",
            ));
        }
        if let Some(bad) = events
            .iter()
            .find(|e| !out::EVENT_TYPES.contains(&e.as_str()))
        {
            return Err(ApiError::invalid(
                ErrorCode::InvalidSubscription,
                "event_types",
                format!(
                    "`{bad}` is not an event type; they are {}",
                    out::EVENT_TYPES.join(", ")
                ),
            ));
        }
        let input = WebhookInput {
            name: self.name.unwrap_or_else(|| "Subscription".into()),
            url: self.url,
            method: None,
            content_type: None,
            headers: self.headers,
            auth: self.auth,
            retries: self.retries,
            timeout_ms: self.timeout_ms,
            max_concurrency: self.max_concurrency,
            rate_per_second: self.rate_per_second,
            strict_json: false,
            follow_redirects: self.follow_redirects,
            template: None,
        };
        let (spec, config) = check(outbound, &input)?;
        Ok((spec, config, events))
    }
}

fn sub_view(outbound: &Outbound, w: WebhookRecord, show_secret: bool) -> SubscriptionView {
    let events = w.event_types.clone().unwrap_or_default();
    SubscriptionView {
        webhook: stored_view(outbound, w, show_secret),
        event_types: events,
    }
}

fn sub_id(raw: &str) -> Result<WebhookId, ApiError> {
    let id = crate::domain::SubscriptionId::parse(raw)?;
    Ok(WebhookId::from_trusted(id.to_string()))
}

/// Subscribe a URL to events. The answer is the only one that shows its
/// signing secret.
#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", request_body = SubscriptionInput,
    responses((status = 201, body = SubscriptionView), (status = 422, body = ErrorBody)))]
pub async fn create_subscription(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    JsonBody(body): JsonBody<SubscriptionInput>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let (spec, config, events) = body.checked(&state.outbound)?;
    let w = out::create_webhook(
        &*state.store,
        &p.workspace_id,
        NewWebhook {
            name: &config.name,
            max_concurrency: config.max_concurrency,
            spec: &spec,

            verified: !state.outbound.settings.verification,
            event_types: Some(&events),
            inline: false,
        },
        state.engine.now(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(sub_view(&state.outbound, w, true)),
    ))
}

/// List the workspace's subscriptions.
#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", params(PageQuery),
    responses((status = 200, body = SubscriptionPage), (status = 400, body = ErrorBody)))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<SubscriptionPage>, ApiError> {
    let page = out::list_webhooks(&*state.store, &p.workspace_id, &q.to_request()?, true).await?;
    Ok(Json(SubscriptionPage {
        next_cursor: page.next.map(|c| c.encode()),
        items: page
            .items
            .into_iter()
            .map(|w| sub_view(&state.outbound, w, false))
            .collect(),
    }))
}

/// Get one subscription (secrets masked).
#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")),
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody)))]
pub async fn get_subscription(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let w = out::get_webhook(&*state.store, &p.workspace_id, &sub_id(&id)?).await?;
    Ok(Json(sub_view(&state.outbound, w, false)))
}

/// Replace a subscription's URL, settings and events (its secret and state
/// stay).
#[utoipa::path(put, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")),
    request_body = SubscriptionInput,
    responses((status = 200, body = SubscriptionView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_subscription(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<SubscriptionInput>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = sub_id(&id)?;
    let (spec, config, events) = body.checked(&state.outbound)?;
    let w = out::update_webhook(
        &*state.store,
        &p.workspace_id,
        &id,
        out::WebhookUpdate {
            name: &config.name,
            spec: &spec,
            max_concurrency: config.max_concurrency,
            event_types: Some(&events),
        },
        state.engine.now(),
    )
    .await?;
    Ok(Json(sub_view(&state.outbound, w, false)))
}

/// Delete a subscription with its deliveries.
#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_subscription(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    out::delete_webhook(&*state.store, &p.workspace_id, &sub_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
