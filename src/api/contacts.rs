//! `/v1/contacts`: upsert by email, read, filter, update, delete, and the
//! contact's list memberships.

use crate::domain::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{AdminKey, JsonBody, PathParam, QueryParams};
use super::views::{ContactPage, ContactView, MembershipView};
use crate::domain::{ContactId, ContactStatus, Email, ListId, Phone};
use crate::store::{ContactFilter, ContactPatch, ContactUpsert};

/// Distinguishes an absent key (`None`: keep) from `null` (`Some(None)`: clear).
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertContact {
    /// The key of the upsert: trimmed and lowercased.
    #[schema(example = "jane@example.com", format = Email)]
    pub email: String,
    /// E.164, e.g. `+380631234567` (spaces, dots, dashes and brackets are
    /// dropped); `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[ .()-]*\+[ .()-]*[1-9]([ .()-]*[0-9]){7,14}[ .()-]*$")]
    pub phone: Option<Option<String>>,
    pub status: Option<ContactStatus>,
    /// Custom field values; each must be defined by one of the contact's lists
    /// (including `lists` below). `null` removes a value.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    /// Lists to add the contact to, in the same transaction.
    #[serde(default)]
    pub lists: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchContact {
    #[schema(format = Email)]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[ .()-]*\+[ .()-]*[1-9]([ .()-]*[0-9]){7,14}[ .()-]*$")]
    pub phone: Option<Option<String>>,
    pub status: Option<ContactStatus>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContactQuery {
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Only members of this list.
    #[param(pattern = r"^ls_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub list_id: Option<String>,
    pub status: Option<ContactStatus>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    #[param(format = Email)]
    pub email: String,
}

fn parse_email(raw: &str) -> Result<Email, ApiError> {
    Email::parse(raw)
        .map_err(|e| ApiError::invalid(ErrorCode::InvalidEmail, "email", e.to_string()))
}

fn parse_phone(raw: Option<Option<String>>) -> Result<Option<Option<Phone>>, ApiError> {
    raw.map(|p| {
        p.map(|s| {
            Phone::parse(&s)
                .map_err(|e| ApiError::invalid(ErrorCode::InvalidPhone, "phone", e.to_string()))
        })
        .transpose()
    })
    .transpose()
}

/// Create a contact, or update the one with this email.
#[utoipa::path(post, path = "/v1/contacts", tag = "contacts", request_body = UpsertContact,
    responses((status = 201, description = "Created", body = ContactView), (status = 200, description = "Updated", body = ContactView),
        (status = 422, body = ErrorBody)))]
pub async fn upsert_contact(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    JsonBody(body): JsonBody<UpsertContact>,
) -> Result<(StatusCode, Json<ContactView>), ApiError> {
    let email = parse_email(&body.email)?;
    let phone = parse_phone(body.phone)?;
    let lists = body
        .lists
        .iter()
        .enumerate()
        .map(|(i, l)| {
            ListId::parse(l).map_err(|e| {
                ApiError::invalid(ErrorCode::InvalidId, format!("lists[{i}]"), e.to_string())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let input = ContactUpsert {
        email: Some(email),
        phone,
        status: body.status,
        fields: body.fields,
        lists,
    };
    let out = state.store.upsert_contact(&p.workspace_id, input).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(out.contact.into())))
}

/// List contacts, optionally only a list's members or one status.
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", params(ContactQuery),
    responses((status = 200, body = ContactPage), (status = 400, body = ErrorBody)))]
pub async fn list_contacts(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<ContactQuery>,
) -> Result<Json<ContactPage>, ApiError> {
    let page = super::views::PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .to_request()?;
    let list_id = q
        .list_id
        .as_deref()
        .map(|l| {
            ListId::parse(l).map_err(|e| {
                ApiError::bad_request(ErrorCode::InvalidId, e.to_string()).with_field("list_id")
            })
        })
        .transpose()?;
    let filter = ContactFilter {
        list_id,
        status: q.status,
    };
    Ok(Json(
        state
            .store
            .list_contacts(&p.workspace_id, &filter, &page)
            .await?
            .into(),
    ))
}

/// Find a contact by email.
#[utoipa::path(get, path = "/v1/contacts/lookup", tag = "contacts", params(LookupQuery),
    responses((status = 200, body = ContactView), (status = 404, body = ErrorBody)))]
pub async fn lookup_contact(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<LookupQuery>,
) -> Result<Json<ContactView>, ApiError> {
    let email = Email::parse(&q.email).map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidEmail, e.to_string()).with_field("email")
    })?;
    Ok(Json(
        state
            .store
            .contact_by_email(&p.workspace_id, &email)
            .await?
            .into(),
    ))
}

/// Get a contact by id.
#[utoipa::path(get, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path, description = "Contact id")),
    responses((status = 200, body = ContactView), (status = 404, body = ErrorBody)))]
pub async fn get_contact(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<ContactView>, ApiError> {
    let id = ContactId::parse(&id)?;
    Ok(Json(
        state.store.get_contact(&p.workspace_id, &id).await?.into(),
    ))
}

/// Update some of a contact's attributes.
#[utoipa::path(patch, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path, description = "Contact id")),
    request_body = PatchContact,
    responses((status = 200, body = ContactView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update_contact(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<PatchContact>,
) -> Result<Json<ContactView>, ApiError> {
    let id = ContactId::parse(&id)?;
    let patch = ContactPatch {
        email: body.email.as_deref().map(parse_email).transpose()?,
        phone: parse_phone(body.phone)?,
        status: body.status,
        fields: body.fields,
    };
    Ok(Json(
        state
            .store
            .update_contact(&p.workspace_id, &id, patch)
            .await?
            .into(),
    ))
}

/// Delete a contact and its memberships.
#[utoipa::path(delete, path = "/v1/contacts/{id}", tag = "contacts", params(("id" = String, Path, description = "Contact id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_contact(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let id = ContactId::parse(&id)?;
    state.store.delete_contact(&p.workspace_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The lists a contact belongs to.
#[utoipa::path(get, path = "/v1/contacts/{id}/lists", tag = "contacts", params(("id" = String, Path, description = "Contact id")),
    responses((status = 200, body = Vec<MembershipView>), (status = 404, body = ErrorBody)))]
pub async fn contact_lists(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<Vec<MembershipView>>, ApiError> {
    let id = ContactId::parse(&id)?;
    let lists = state.store.contact_lists(&p.workspace_id, &id).await?;
    Ok(Json(lists.into_iter().map(Into::into).collect()))
}
