//! The events API (IN-8): `POST /v1/events` records one event,
//! `POST /v1/events/bulk` up to [`MAX_BULK`] (a JSON array, or NDJSON with
//! `Content-Type: application/x-ndjson`). An event creates its contact if
//! new, starts flows triggered by its name and resumes runs waiting for it.
//! In a batch each event stands alone: the answer says, by index, which
//! were recorded and why the others were refused.

use crate::domain::ErrorCode;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::extract::{AnyKey, JsonBody, is_json, media_type, parse_json, read_body, refuse_nul};
use crate::domain::{Email, Millis};
use crate::store::{EventIn, EventRecorded};

/// Most events in one bulk request.
pub const MAX_BULK: usize = 10_000;
/// Largest bulk body: room for `MAX_BULK` events of ~1.6 KiB each.
pub const MAX_BULK_BYTES: usize = 16 * 1024 * 1024;

/// An event.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// The event's name, which flows' `event` triggers and event waits name.
    #[schema(
        example = "order_placed",
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// The contact's email; a new contact is created if needed.
    #[schema(format = Email)]
    pub email: String,
    /// Free-form data, available to conditions as `event.PATH`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Value>,
    /// When it happened (RFC 3339); default: when received.
    #[schema(format = DateTime)]
    pub time: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventAccepted {
    pub event_id: String,
    pub contact_id: String,
    /// Runs started by flows triggered by this event.
    pub runs_started: Vec<String>,
    /// Runs that were waiting for this event and now go on.
    pub runs_resumed: u64,
}

impl From<EventRecorded> for EventAccepted {
    fn from(e: EventRecorded) -> Self {
        Self {
            event_id: e.event_id,
            contact_id: e.contact_id,
            runs_started: e.runs_started,
            runs_resumed: e.runs_resumed,
        }
    }
}

/// The schema of the bulk route's body: 1 to [`MAX_BULK`] events (the
/// handler reads the body itself, one event at a time).
pub struct EventBatch;

impl utoipa::PartialSchema for EventBatch {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(utoipa::openapi::Ref::from_schema_name("NewEvent"))
            .min_items(Some(1))
            .max_items(Some(MAX_BULK))
            .into()
    }
}

impl ToSchema for EventBatch {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            "NewEvent".into(),
            <NewEvent as utoipa::PartialSchema>::schema(),
        ));
        <NewEvent as ToSchema>::schemas(schemas);
    }
}

/// The outcome for one event of a batch.
#[derive(Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BulkItem {
    /// Stored: the event as `POST /v1/events` would have answered it.
    Accepted {
        index: usize,
        #[serde(flatten)]
        event: EventAccepted,
    },
    /// Not stored: why, naming the event's field at fault.
    Rejected { index: usize, error: ErrorDetail },
}

#[derive(Serialize, ToSchema)]
pub struct BulkResult {
    pub accepted: usize,
    pub rejected: usize,
    /// One entry per event, in the order sent.
    pub results: Vec<BulkItem>,
}

/// Checks an event; the error names the field at fault.
fn parse_event(e: NewEvent, now: Millis) -> Result<EventIn, ApiError> {
    // PostgreSQL cannot store NUL in text: refused for both stores.
    refuse_nul(&serde_json::json!({ "name": &e.name }))?;
    let name = e.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid(
            ErrorCode::InvalidEventName,
            "name",
            "an event name must be 1 to 200 characters",
        ));
    }
    let email = Email::parse(&e.email)
        .map_err(|err| ApiError::invalid(ErrorCode::InvalidEmail, "email", err.to_string()))?;
    let properties = match e.properties {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::invalid(
                ErrorCode::InvalidProperties,
                "properties",
                "properties must be a JSON object",
            ));
        }
    };
    refuse_nul(&properties)?;
    let occurred_at = match &e.time {
        None => now,
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|_| {
                ApiError::invalid(
                    ErrorCode::InvalidTime,
                    "time",
                    format!("`{t}` is not an RFC 3339 time"),
                )
            })?
            .timestamp_millis(),
    };
    Ok(EventIn {
        name: name.to_owned(),
        email,
        properties,
        occurred_at,
    })
}

/// The per-key rate limit of inbound traffic (`inbound_rate_per_key`) applies
/// to the events API too; a bulk request counts as one call.
fn check_rate(state: &AppState, key: &crate::domain::ApiKeyId) -> Result<(), ApiError> {
    state
        .inbound_limits
        .per_key
        .check(key.as_str())
        .map_err(|wait| {
            ApiError::rate_limited(
                "this API key sends more calls per second than `inbound_rate_per_key` allows; retry later",
                wait,
            )
        })
}

/// Record one event.
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = NewEvent,
    responses((status = 202, body = EventAccepted), (status = 401, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn record_event(
    State(state): State<AppState>,
    AnyKey(p): AnyKey,
    JsonBody(body): JsonBody<NewEvent>,
) -> Result<(StatusCode, Json<EventAccepted>), ApiError> {
    check_rate(&state, &p.key_id)?;
    let now = state.engine.now();
    let ev = parse_event(body, now)?;
    let mut out = state
        .store
        .record_events(&p.workspace_id, vec![ev], now)
        .await?;
    let one = out
        .pop()
        .ok_or_else(ApiError::internal)?
        .map_err(ApiError::from)?;
    if !one.runs_started.is_empty() || one.runs_resumed > 0 {
        state.engine.wake();
    }
    Ok((StatusCode::ACCEPTED, Json(one.into())))
}

/// Record up to 10,000 events: a JSON array, or NDJSON (one event per
/// line) with `Content-Type: application/x-ndjson`. Each event is recorded
/// or refused on its own; the answer lists the outcome per index.
#[utoipa::path(post, path = "/v1/events/bulk", tag = "events", request_body(content = EventBatch, description = "A JSON array of events, or NDJSON"),
    responses((status = 200, body = BulkResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn record_events_bulk(
    State(state): State<AppState>,
    AnyKey(p): AnyKey,
    req: Request,
) -> Result<Json<BulkResult>, ApiError> {
    check_rate(&state, &p.key_id)?;
    let ndjson = media_type(req.headers())
        .is_some_and(|mime| mime == "application/x-ndjson" || mime == "application/jsonl");
    if !ndjson && !is_json(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "send a JSON array with `Content-Type: application/json`, or NDJSON with `application/x-ndjson`",
        ));
    }
    let bytes = read_body(req, &state).await?;
    // Each event's raw JSON, at most MAX_BULK + 1 of them: a body of tiny
    // items is refused before anything is parsed per event.
    let items: Vec<&[u8]> = if ndjson {
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .take(MAX_BULK + 1)
            .collect()
    } else {
        let capped: Capped = serde_json::from_slice(&bytes).map_err(|_| {
            ApiError::invalid(
                ErrorCode::InvalidBody,
                ".",
                "the body must be a JSON array of events",
            )
        })?;
        let mut items: Vec<&[u8]> = capped.items.iter().map(|r| r.get().as_bytes()).collect();
        if capped.over {
            items.push(b"");
        }
        items
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            ErrorCode::EmptyBatch,
            ".",
            "the batch holds no events",
        ));
    }
    if items.len() > MAX_BULK {
        return Err(ApiError::invalid(
            ErrorCode::BatchTooLarge,
            ".",
            format!("a batch holds at most {MAX_BULK} events; this one has more"),
        ));
    }
    let now = state.engine.now();
    let mut results: Vec<Option<BulkItem>> = Vec::with_capacity(items.len());
    let mut valid: Vec<(usize, EventIn)> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match parse_json::<NewEvent>(item).and_then(|e| parse_event(e, now)) {
            Ok(ev) => {
                valid.push((index, ev));
                results.push(None);
            }
            Err(e) => results.push(Some(rejected(index, e))),
        }
    }
    let mut woke = false;
    let mut failed: Option<ErrorDetail> = None;
    let mut pending = valid.into_iter().peekable();
    // The store decides how many events one write may carry.
    let chunk = state.store.events_per_write().max(1);
    while pending.peek().is_some() {
        let (indexes, events): (Vec<usize>, Vec<EventIn>) = pending.by_ref().take(chunk).unzip();
        // Chunks before a store failure are committed: their events stay
        // accepted, and this one and the rest are reported as not recorded,
        // so a retry resends exactly those.
        let outcomes = match &failed {
            Some(_) => None,
            None => match state
                .store
                .record_events(&p.workspace_id, events, now)
                .await
            {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::error!(error = %e, "recording a chunk of bulk events failed");
                    failed = Some(ApiError::from(e).detail());
                    None
                }
            },
        };
        let outcomes = match (outcomes, &failed) {
            (Some(outcomes), _) => outcomes,
            (None, failed) => {
                let error = failed
                    .clone()
                    .unwrap_or_else(|| ApiError::internal().detail());
                for index in indexes {
                    results[index] = Some(BulkItem::Rejected {
                        index,
                        error: error.clone(),
                    });
                }
                continue;
            }
        };
        for (index, outcome) in indexes.into_iter().zip(outcomes) {
            results[index] = Some(match outcome {
                Ok(rec) => {
                    woke |= !rec.runs_started.is_empty() || rec.runs_resumed > 0;
                    BulkItem::Accepted {
                        index,
                        event: rec.into(),
                    }
                }
                Err(e) => rejected(index, e.into()),
            });
        }
    }
    if woke {
        state.engine.wake();
    }
    let results: Vec<BulkItem> = results.into_iter().flatten().collect();
    let accepted = results
        .iter()
        .filter(|r| matches!(r, BulkItem::Accepted { .. }))
        .count();
    Ok(Json(BulkResult {
        accepted,
        rejected: results.len() - accepted,
        results,
    }))
}

fn rejected(index: usize, e: ApiError) -> BulkItem {
    BulkItem::Rejected {
        index,
        error: e.detail(),
    }
}

/// A JSON array of events, each kept as its raw JSON; past `MAX_BULK`
/// elements the rest is only skipped over (nothing is kept), and `over` says
/// the batch is too large.
struct Capped<'a> {
    items: Vec<&'a serde_json::value::RawValue>,
    over: bool,
}

impl<'de> serde::Deserialize<'de> for Capped<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = Capped<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON array of events")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == MAX_BULK {
                        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                        return Ok(Capped { items, over: true });
                    }
                    items.push(item);
                }
                Ok(Capped { items, over: false })
            }
        }
        d.deserialize_seq(Items)
    }
}
