//! Lists and their field definitions, written once (`store::sql`): the
//! statements the `Store` trait's default methods run on either database.
//! A list's reads come as two statements, the list then its fields in
//! order; writes end with them. Field writes drop SQLite's writer-thread
//! cache of list fields (`Stmt::changes`).

use super::sql::{Arg, Cached, Done, RowExt, Stmt, Val};
use super::{ListRecord, Result, StoreError, plan};
use crate::domain::{
    FieldDef, FieldName, FieldType, ListId, Millis, Page, PageRequest, Stored, WorkspaceId,
};

/// The list columns read, with its member count, then `$tail`.
macro_rules! list_select {
    ($tail:literal) => {
        concat!(
            "SELECT l.id, l.name, l.created_at, l.updated_at,
               (SELECT COUNT(*) FROM memberships m WHERE m.list_id = l.id)
             FROM lists l ",
            $tail
        )
    };
}

/// The list `id` of `ws` and its fields (NotFound if there is none).
pub fn read(ws: &WorkspaceId, id: &ListId) -> [Stmt; 2] {
    [
        Stmt::new(
            list_select!("WHERE l.workspace_id = $1 AND l.id = $2"),
            vec![ws.as_str().into(), id.as_str().into()],
        )
        .or_not_found("list", id),
        Stmt::new(
            "SELECT f.list_id, f.name, f.type, f.options FROM list_fields f
             WHERE f.list_id = $1 ORDER BY f.position",
            vec![id.as_str().into()],
        ),
    ]
}

/// A page of lists and, in a second statement, their fields.
pub fn page(ws: &WorkspaceId, page: &PageRequest) -> [Stmt; 2] {
    let args = || -> Vec<Arg> {
        vec![
            ws.as_str().into(),
            page.after_id().into(),
            i64::from(page.limit + 1).into(),
        ]
    };
    [
        Stmt::new(
            list_select!("WHERE l.workspace_id = $1 AND l.id > $2 ORDER BY l.id LIMIT $3"),
            args(),
        ),
        Stmt::new(
            "SELECT f.list_id, f.name, f.type, f.options FROM list_fields f
             WHERE f.list_id IN (SELECT l.id FROM lists l WHERE l.workspace_id = $1 AND l.id > $2
                                 ORDER BY l.id LIMIT $3)
             ORDER BY f.list_id, f.position",
            args(),
        ),
    ]
}

/// The lists `lists` (a [`read`] or [`page`]'s first result) with the fields
/// `fields` (its second) read for them.
fn records(lists: &Done, fields: &Done) -> Result<Vec<ListRecord>> {
    let mut out: Vec<ListRecord> = lists
        .rows
        .iter()
        .map(|r| {
            Ok(ListRecord {
                id: ListId::from_trusted(r.text(0)?),
                name: r.text(1)?,
                fields: Vec::new(),
                member_count: r.int(4)?,
                created_at: r.int(2)?,
                updated_at: r.int(3)?,
            })
        })
        .collect::<Result<_>>()?;
    for r in &fields.rows {
        let list = r.text(0)?;
        if let Some(l) = out.iter_mut().find(|l| l.id.as_str() == list) {
            l.fields.push(field(r)?);
        }
    }
    Ok(out)
}

/// The one list a script ending with a [`read`] found.
pub fn last(done: &[Done]) -> Result<ListRecord> {
    let [.., lists, fields] = done else {
        return Err(StoreError::Internal("a list read returned nothing".into()));
    };
    records(lists, fields)?
        .pop()
        .ok_or_else(|| StoreError::Internal("a list read found no row".into()))
}

pub fn to_page(done: &[Done], page: &PageRequest) -> Result<Page<ListRecord>> {
    let [lists, fields] = done else {
        return Err(StoreError::Internal("a list page returned nothing".into()));
    };
    Ok(Page::from_overfetch(
        records(lists, fields)?,
        page.limit,
        |l| l.id.as_str(),
    ))
}

fn field(r: &[Val]) -> Result<FieldDef> {
    Ok(FieldDef {
        name: FieldName::parse(&r.text(1)?).map_err(|e| {
            StoreError::Internal(format!("a stored field name does not parse: {e}"))
        })?,
        kind: FieldType::decode(r.str_at(2)?)?,
        options: r.json(3)?,
    })
}

/// Inserts field `f` of list `list` at `position`, or after the list's
/// last field (`None`); a taken name is a conflict.
fn insert_field(list: &ListId, f: &FieldDef, position: Option<i64>) -> Stmt {
    Stmt::new(
        "INSERT INTO list_fields (list_id, name, type, options, position)
         SELECT $1, $2, $3, $4, COALESCE($5, MAX(position) + 1, 0) FROM list_fields WHERE list_id = $1",
        vec![
            list.as_str().into(),
            f.name.as_str().into(),
            f.kind.as_str().into(),
            Arg::from(&serde_json::json!(f.options)),
            position.into(),
        ],
    )
    .on_unique(plan::field_exists(f.name.as_str()))
    .changes(Cached::Lists)
}

/// A new list with `fields` in order; then the list.
pub fn create(ws: &WorkspaceId, name: &str, fields: &[FieldDef], now: Millis) -> Vec<Stmt> {
    let id = ListId::generate();
    let mut script = vec![
        Stmt::new(
            "INSERT INTO lists (id, workspace_id, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
            vec![id.as_str().into(), ws.as_str().into(), name.into(), now.into()],
        )
        .on_unique(plan::list_name_taken(name)),
    ];
    script.extend(
        fields
            .iter()
            .enumerate()
            .map(|(i, f)| insert_field(&id, f, Some(i as i64))),
    );
    script.extend(read(ws, &id));
    script
}

/// Updates the list's time (NotFound if there is none); on PostgreSQL the
/// row lock also orders two field changes of one list.
fn touch(ws: &WorkspaceId, id: &ListId, now: Millis) -> Stmt {
    Stmt::new(
        "UPDATE lists SET updated_at = $3 WHERE workspace_id = $1 AND id = $2",
        vec![ws.as_str().into(), id.as_str().into(), now.into()],
    )
    .or_not_found("list", id)
}

pub fn rename(ws: &WorkspaceId, id: &ListId, name: &str, now: Millis) -> Vec<Stmt> {
    let mut script = vec![
        Stmt::new(
            "UPDATE lists SET name = $3, updated_at = $4 WHERE workspace_id = $1 AND id = $2",
            vec![
                ws.as_str().into(),
                id.as_str().into(),
                name.into(),
                now.into(),
            ],
        )
        .or_not_found("list", id)
        .on_unique(plan::list_name_taken(name)),
    ];
    script.extend(read(ws, id));
    script
}

pub fn delete(ws: &WorkspaceId, id: &ListId) -> Stmt {
    Stmt::new(
        "DELETE FROM lists WHERE workspace_id = $1 AND id = $2",
        vec![ws.as_str().into(), id.as_str().into()],
    )
    .or_not_found("list", id)
    .changes(Cached::Lists)
}

/// Adds a field after the list's last one; then the list.
pub fn add_field(ws: &WorkspaceId, id: &ListId, field: &FieldDef, now: Millis) -> Vec<Stmt> {
    let mut script = vec![touch(ws, id, now), insert_field(id, field, None)];
    script.extend(read(ws, id));
    script
}

/// Removes field `name` (NotFound if the list has none); then the list.
pub fn remove_field(ws: &WorkspaceId, id: &ListId, name: &str, now: Millis) -> Vec<Stmt> {
    let mut script = vec![
        touch(ws, id, now),
        Stmt::new(
            "DELETE FROM list_fields WHERE list_id = $1 AND name = $2",
            vec![id.as_str().into(), name.into()],
        )
        .or_not_found("field", name)
        .changes(Cached::Lists),
    ];
    script.extend(read(ws, id));
    script
}
