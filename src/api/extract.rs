//! Extractors that turn requests into typed values or an [`ApiError`] in the
//! one error shape: JSON bodies, path and query parameters, API keys.

use crate::domain::ErrorCode;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::domain::keys::{hash_presented, hashes_match};
use crate::domain::{ApiKeyId, Scope, WorkspaceId};

/// A JSON request body. Checks the content type (415), the size (413), the
/// syntax (400) and the shape (422 naming the JSON path at fault).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_json(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The raw bytes of a JSON body, for handlers that need them as sent (a
/// signature covers the bytes, not the parsed value) or that authenticate
/// before reading: checks the content type (415) and reads the body within
/// the size limit (413) as [`JsonBody`] does; parse with [`parse_json`] for
/// the same syntax and shape errors.
pub async fn read_json<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if !is_json(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON in UTF-8, sent with `Content-Type: application/json`",
        ));
    }
    read_body(req, state).await
}

/// The body size limit in force for a route, carried as a request extension
/// beside axum's `DefaultBodyLimit` so that a 413 can say what the limit is
/// and what changes it.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit {
    pub bytes: usize,
    /// What raises it: a setting's name, or advice when it is fixed.
    pub remedy: &'static str,
    /// Memory a body of this route takes per byte while it is handled, for
    /// the body budget (see `budget`).
    pub parse_factor: usize,
}

impl BodyLimit {
    /// The server-wide limit, from the `max_body_bytes` setting.
    pub fn setting(bytes: usize) -> Self {
        Self {
            bytes,
            remedy: "the `max_body_bytes` setting (HOOKFLOW_MAX_BODY_BYTES) raises it",
            parse_factor: super::budget::PARSE_FACTOR,
        }
    }

    /// The bulk events route's own, fixed limit.
    pub fn bulk() -> Self {
        Self {
            bytes: super::events::MAX_BULK_BYTES,
            remedy: "it is fixed for bulk requests: send the events in several requests",
            parse_factor: super::budget::BULK_FACTOR,
        }
    }
}

/// How long a body may take to arrive once its headers have (a request
/// extension, from the `http_body_timeout_secs` setting): a client sending
/// its body a byte at a time gets 408 instead of holding a connection.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub std::time::Duration);

/// The whole body, whatever its type, within the route's size limit (413
/// beyond it, naming the limit and what raises it), its time limit (408) and
/// the memory budget (503; see `budget`).
pub async fn read_body<S: Send + Sync>(req: Request, _state: &S) -> Result<Bytes, ApiError> {
    use axum::RequestExt;
    let limit = req.extensions().get::<BodyLimit>().copied();
    let timeout = req.extensions().get::<BodyTimeout>().map(|t| t.0);
    let charge = req.extensions().get::<super::budget::Charge>().cloned();
    // A small declared body is charged once, before parsing: its raw bytes
    // are bounded by the connection cap anyway, and most requests are small.
    let small = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= super::budget::SMALL_BODY);
    let per_frame = if small { None } else { charge.as_ref() };
    let mut read = std::pin::pin!(collect(req.into_limited_body(), per_frame, limit));
    // Most bodies have arrived with their headers: read what is there first
    // and set the body timer (a timer registered with the runtime) only
    // when the rest must be waited for.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(read.as_mut().poll(cx))).await;
    let bytes = match (first, timeout) {
        (std::task::Poll::Ready(done), _) => done?,
        (std::task::Poll::Pending, Some(t)) => tokio::time::timeout(t, read).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BodyTimeout,
                format!(
                    "the body did not arrive within {} s; the `http_body_timeout_secs` setting changes this",
                    t.as_secs_f64()
                ),
            )
        })??,
        (std::task::Poll::Pending, None) => read.await?,
    };
    if let Some(charge) = &charge {
        let factor = limit.map_or(super::budget::PARSE_FACTOR, |l| l.parse_factor);
        charge.parsing(bytes.len(), factor).await?;
    }
    Ok(bytes)
}

/// Reads the body frame by frame, charging each frame's bytes as they come.
async fn collect(
    mut body: axum::body::Body,
    charge: Option<&super::budget::Charge>,
    limit: Option<BodyLimit>,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| unreadable(&e, limit))?;
        if let Ok(data) = frame.into_data() {
            if let Some(c) = charge {
                c.arrived(data.len()).await?;
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// 413 for a body over its limit (naming it and what raises it), else 400.
fn unreadable(e: &axum::Error, limit: Option<BodyLimit>) -> ApiError {
    let too_large =
        std::error::Error::source(e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
    if too_large {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            match limit {
                Some(l) => format!(
                    "the body is larger than the limit of {} bytes; {}",
                    l.bytes, l.remedy
                ),
                None => "the body is larger than the limit".to_owned(),
            },
        )
    } else {
        ApiError::bad_request(
            ErrorCode::UnreadableBody,
            format!("the body could not be read: {e}"),
        )
    }
}

/// The request's media type, lowercased, without parameters; `None` when
/// there is none, or when it names a charset other than UTF-8 (bodies are
/// read as UTF-8 only: `charset=utf-16` is refused, not misread).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    for param in parts {
        if let Some((name, value)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
            && !matches!(
                value.trim().trim_matches('"').to_ascii_lowercase().as_str(),
                "utf-8" | "utf8"
            )
        {
            return None;
        }
    }
    Some(mime)
}

pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|mime| {
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
    })
}

/// Deserialises `bytes`, mapping serde's errors to precise API errors: 400
/// for what is not JSON (or repeats a key in one object), 422 naming the
/// path for JSON of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(at) = super::json_keys::duplicate_key(bytes) {
        let mut err = ApiError::bad_request(
            ErrorCode::DuplicateKey,
            format!("the key `{at}` appears twice in one object; send each key once"),
        );
        err.field = Some(at);
        return Err(err);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde reports a value of the wrong type for an enum as a syntax
        // error ("expected value"); if the bytes are valid JSON, it is one.
        let syntax = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        // (Parsed as a `Value`, whose depth limit matches the typed parse;
        // on this error path only.)
        if syntax && serde_json::from_slice::<serde_json::Value>(bytes).is_ok() {
            return ApiError::invalid(
                ErrorCode::InvalidValue,
                path.clone(),
                format!("the value at `{path}` is not of the expected type"),
            );
        }
        // A value JSON's grammar allows but no value can be (`1e309`, a
        // lone surrogate `\ud800`), or bytes in a string that are not
        // UTF-8: the value at the path is at fault, not the document.
        let msg = inner.to_string();
        let bad_value = [
            "number out of range",
            "surrogate",
            "hex escape",
            "invalid unicode code point",
        ]
        .iter()
        .any(|m| msg.contains(m));
        if syntax && bad_value && !path.is_empty() && path != "." {
            let clean = msg.split(" at line ").next().unwrap_or(&msg);
            return ApiError::invalid(
                ErrorCode::InvalidValue,
                path.clone(),
                format!("the value at `{path}` is not valid: {clean}"),
            );
        }
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| json_error(".", &e))?;
    Ok(value)
}

fn json_error(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let msg = e.to_string();
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {msg}"),
        ),
        Category::Data => {
            // serde's messages end with " at line L column C"; the path says more.
            let clean = msg.split(" at line ").next().unwrap_or(&msg);
            // serde quotes the offending value; never echo a huge one back.
            let clean = if clean.chars().count() > 300 {
                format!("{}…", clean.chars().take(300).collect::<String>())
            } else {
                clean.to_owned()
            };
            let field = if path == "." {
                None
            } else {
                Some(path.to_owned())
            };
            let (code, field) = if let Some(name) = quoted_after(&clean, "unknown field `") {
                (
                    ErrorCode::UnknownField,
                    Some(join_path(field.as_deref(), &name)),
                )
            } else if let Some(name) = quoted_after(&clean, "missing field `") {
                (
                    ErrorCode::MissingField,
                    Some(join_path(field.as_deref(), &name)),
                )
            } else {
                (ErrorCode::InvalidValue, field)
            };
            let mut err = ApiError::invalid(code, "", clean);
            err.field = field;
            err
        }
    }
}

fn quoted_after(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    rest.split('`').next().map(str::to_owned)
}

fn join_path(parent: Option<&str>, name: &str) -> String {
    match parent {
        Some(p) if !p.is_empty() && p != "." => {
            // serde_path_to_error already points at the unknown key for
            // some shapes; don't repeat it.
            if p.ends_with(name) {
                p.to_owned()
            } else {
                format!("{p}.{name}")
            }
        }
        _ => name.to_owned(),
    }
}

/// A path parameter, with rejections in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParam<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::bad_request(ErrorCode::InvalidPath, e.body_text())
    }
}

/// Query parameters, with rejections in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        let text = e.body_text();
        let text = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!("invalid query string: {text}"),
        )
    }
}

/// Who is calling: the workspace and scope of a valid, unrevoked API key.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The key itself, for limits per key.
    pub key_id: ApiKeyId,
    pub workspace_id: WorkspaceId,
    pub workspace_name: String,
    pub scope: Scope,
}

/// Any valid key of the workspace, `admin` or `ingest`: for inbound calls
/// and events.
pub struct AnyKey(pub Principal);

/// An `admin` key: for everything else.
pub struct AdminKey(pub Principal);

impl FromRequestParts<AppState> for AnyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate_headers(&parts.headers, state)
            .await
            .map(AnyKey)
    }
}

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let p = authenticate_headers(&parts.headers, state).await?;
        if p.scope != Scope::Admin {
            return Err(ApiError::forbidden(
                "this endpoint needs an `admin` key; `ingest` keys may only send inbound calls and events",
            ));
        }
        Ok(AdminKey(p))
    }
}

/// The principal of the API key `headers` carry (401 without a valid one).
pub async fn authenticate_headers(
    headers: &HeaderMap,
    state: &AppState,
) -> Result<Principal, ApiError> {
    let presented = presented_key(headers)?;
    let hash = hash_presented(presented);
    let record = state.store.api_key_by_hash(&hash).await?;
    match record {
        Some(k) if k.revoked_at.is_none() && hashes_match(&k.hash, &hash) => Ok(Principal {
            key_id: k.id,
            workspace_id: k.workspace_id,
            workspace_name: k.workspace_name,
            scope: k.scope,
        }),
        Some(k) if k.revoked_at.is_some() => {
            Err(ApiError::unauthorized("this API key has been revoked"))
        }
        _ => Err(ApiError::unauthorized("the API key is not valid")),
    }
}

/// The one API key the request presents. Every `Authorization` and
/// `X-Api-Key` header is read: a request presenting two different keys is
/// refused (401) rather than judged by whichever header is looked at first,
/// so an invalid key is never hidden behind a valid one.
fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut keys: Vec<&str> = Vec::new();
    for v in headers.get_all(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        keys.push(bearer_token(v).ok_or_else(|| {
            ApiError::unauthorized(
                "use `Authorization: Bearer <API key>` or `X-Api-Key: <API key>`",
            )
        })?);
    }
    for v in headers.get_all("x-api-key") {
        keys.push(
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::unauthorized("the X-Api-Key header is not valid text"))?,
        );
    }
    match keys.as_slice() {
        [] => Err(ApiError::unauthorized(
            "an API key is required: send `Authorization: Bearer <API key>` or `X-Api-Key: <API key>`",
        )),
        [first, rest @ ..] if rest.iter().all(|k| k == first) => Ok(first),
        _ => Err(ApiError::unauthorized(
            "the request presents different API keys (in `Authorization` and `X-Api-Key`, or repeated headers); send one",
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any
/// case, as RFC 9110 has it), or `None` for another scheme or no token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 422 for a body holding a NUL character somewhere.
pub fn refuse_nul(v: &serde_json::Value) -> Result<(), ApiError> {
    match crate::domain::jsonpath::find_nul(v) {
        Some(path) => Err(ApiError::invalid(
            ErrorCode::NulCharacter,
            path,
            "text may not contain the NUL character (\\u0000)",
        )),
        None => Ok(()),
    }
}
