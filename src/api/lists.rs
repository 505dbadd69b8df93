//! `/v1/lists`: lists, their field definitions and their members.

use crate::domain::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{AdminKey, JsonBody, PathParam, QueryParams};
use super::views::{ListPage, ListView, MemberPage, MembershipView, PageQuery};
use crate::domain::{ContactId, FieldDef, FieldType, ListId};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldInput {
    /// A letter, then letters, digits or `_` (at most 64).
    #[schema(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Allowed values; required for, and only for, `enum` fields.
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateList {
    /// Unique in the workspace, 1 to 200 characters, no control characters.
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[serde(default)]
    pub fields: Vec<FieldInput>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameList {
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    #[schema(pattern = r"^ct_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")]
    pub contact_id: String,
}

pub(super) fn list_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            ErrorCode::InvalidName,
            "name",
            "a list name must be 1 to 200 characters, none of them control characters",
        ));
    }
    Ok(name.to_owned())
}

fn field_def(input: FieldInput, path: &str) -> Result<FieldDef, ApiError> {
    // Point at the part at fault: the name, or else the options.
    let part = if FieldDef::definable_name(&input.name).is_err() {
        "name"
    } else {
        "options"
    };
    let at = if path.is_empty() {
        part.to_owned()
    } else {
        format!("{path}.{part}")
    };
    FieldDef::new(&input.name, input.kind, input.options)
        .map_err(|m| ApiError::invalid(ErrorCode::InvalidFieldDefinition, at, m))
}

/// Create a list, optionally with field definitions.
#[utoipa::path(post, path = "/v1/lists", tag = "lists", request_body = CreateList,
    responses((status = 201, body = ListView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_list(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    JsonBody(body): JsonBody<CreateList>,
) -> Result<(StatusCode, Json<ListView>), ApiError> {
    let name = list_name(&body.name)?;
    let mut fields = Vec::with_capacity(body.fields.len());
    let mut seen = std::collections::HashSet::new();
    for (i, f) in body.fields.into_iter().enumerate() {
        let path = format!("fields[{i}]");
        let def = field_def(f, &path)?;
        if !seen.insert(def.name.clone()) {
            return Err(ApiError::invalid(
                ErrorCode::DuplicateField,
                path,
                format!("field `{}` is defined twice", def.name),
            ));
        }
        fields.push(def);
    }
    let list = state
        .store
        .create_list(&p.workspace_id, &name, fields)
        .await?;
    Ok((StatusCode::CREATED, Json(list.into())))
}

/// List the workspace's lists.
#[utoipa::path(get, path = "/v1/lists", tag = "lists", params(PageQuery),
    responses((status = 200, body = ListPage)))]
pub async fn list_lists(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<ListPage>, ApiError> {
    let page = state
        .store
        .list_lists(&p.workspace_id, &q.to_request()?)
        .await?;
    Ok(Json(page.into()))
}

/// Get one list with its fields and member count.
#[utoipa::path(get, path = "/v1/lists/{id}", tag = "lists", params(("id" = String, Path, description = "List id")),
    responses((status = 200, body = ListView), (status = 404, body = ErrorBody)))]
pub async fn get_list(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<Json<ListView>, ApiError> {
    let id = ListId::parse(&id)?;
    Ok(Json(
        state.store.get_list(&p.workspace_id, &id).await?.into(),
    ))
}

/// Rename a list.
#[utoipa::path(patch, path = "/v1/lists/{id}", tag = "lists", params(("id" = String, Path, description = "List id")),
    request_body = RenameList,
    responses((status = 200, body = ListView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rename_list(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<RenameList>,
) -> Result<Json<ListView>, ApiError> {
    let id = ListId::parse(&id)?;
    let name = list_name(&body.name)?;
    Ok(Json(
        state
            .store
            .rename_list(&p.workspace_id, &id, &name)
            .await?
            .into(),
    ))
}

/// Delete a list and its memberships (contacts stay).
#[utoipa::path(delete, path = "/v1/lists/{id}", tag = "lists", params(("id" = String, Path, description = "List id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_list(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let id = ListId::parse(&id)?;
    state.store.delete_list(&p.workspace_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a field definition to a list.
#[utoipa::path(post, path = "/v1/lists/{id}/fields", tag = "lists", params(("id" = String, Path, description = "List id")),
    request_body = FieldInput,
    responses((status = 201, body = ListView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_field(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<FieldInput>,
) -> Result<(StatusCode, Json<ListView>), ApiError> {
    let id = ListId::parse(&id)?;
    let def = field_def(body, "")?;
    let list = state
        .store
        .add_list_field(&p.workspace_id, &id, def)
        .await?;
    Ok((StatusCode::CREATED, Json(list.into())))
}

/// Remove a field definition from a list (contacts keep their values).
#[utoipa::path(delete, path = "/v1/lists/{id}/fields/{name}", tag = "lists",
    params(("id" = String, Path, description = "List id"), ("name" = String, Path, description = "Field name")),
    responses((status = 200, body = ListView), (status = 404, body = ErrorBody)))]
pub async fn remove_field(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam((id, name)): PathParam<(String, String)>,
) -> Result<Json<ListView>, ApiError> {
    let id = ListId::parse(&id)?;
    let name = crate::domain::FieldName::parse(&name).map_err(|_| {
        ApiError::not_found(format!(
            "the list has no field named `{}`",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    Ok(Json(
        state
            .store
            .remove_list_field(&p.workspace_id, &id, name.as_str())
            .await?
            .into(),
    ))
}

/// List a list's members.
#[utoipa::path(get, path = "/v1/lists/{id}/members", tag = "lists",
    params(("id" = String, Path, description = "List id"), PageQuery),
    responses((status = 200, body = MemberPage), (status = 404, body = ErrorBody)))]
pub async fn list_members(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<MemberPage>, ApiError> {
    let id = ListId::parse(&id)?;
    let page = state
        .store
        .list_members(&p.workspace_id, &id, &q.to_request()?)
        .await?;
    Ok(Json(page.into()))
}

/// Add a contact to a list (idempotent).
#[utoipa::path(post, path = "/v1/lists/{id}/members", tag = "lists", params(("id" = String, Path, description = "List id")),
    request_body = AddMember,
    responses((status = 200, body = MembershipView), (status = 404, body = ErrorBody)))]
pub async fn add_member(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<AddMember>,
) -> Result<Json<MembershipView>, ApiError> {
    let id = ListId::parse(&id)?;
    let contact = ContactId::parse(&body.contact_id)
        .map_err(|e| ApiError::invalid(ErrorCode::InvalidId, "contact_id", e.to_string()))?;
    let m = state
        .store
        .add_membership(&p.workspace_id, &id, &contact)
        .await?;
    Ok(Json(m.into()))
}

/// Remove a contact from a list.
#[utoipa::path(delete, path = "/v1/lists/{id}/members/{contact_id}", tag = "lists",
    params(("id" = String, Path, description = "List id"), ("contact_id" = String, Path, description = "Contact id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    AdminKey(p): AdminKey,
    PathParam((id, contact)): PathParam<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = ListId::parse(&id)?;
    let contact = ContactId::parse(&contact)?;
    state
        .store
        .remove_membership(&p.workspace_id, &id, &contact)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
