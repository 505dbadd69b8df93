//! Synchronous SQL for SQLite, run either on the writer thread (inside the
//! group transaction) or on a reader connection.

use rusqlite::{Connection, Row};

use super::internal;
use crate::domain::{ContactId, FieldDef, FieldName, ListId, WorkspaceId};
use crate::store::{Result, plan};

// ---- lists --------------------------------------------------------------------

fn field_row(r: &Row) -> rusqlite::Result<(String, FieldDef)> {
    let list: String = r.get(0)?;
    let name: String = r.get(1)?;
    Ok((
        list,
        FieldDef {
            name: FieldName::parse(&name).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    format!("a stored field name does not parse: {e}").into(),
                )
            })?,
            kind: super::stored(r, 2)?,
            options: super::json(r, 3)?,
        },
    ))
}

pub fn list_fields(conn: &Connection, list: &ListId) -> Result<Vec<FieldDef>> {
    let mut s = conn
        .prepare_cached(
            "SELECT list_id, name, type, options, position FROM list_fields WHERE list_id = ?1",
        )
        .map_err(internal)?;
    // Sorted here rather than by ORDER BY, which made SQLite build a temp
    // B-tree on every call (this runs on the writer for each upsert).
    let mut rows: Vec<(i64, FieldDef)> = s
        .query_map([list.as_str()], |r| {
            Ok((r.get::<_, i64>(4)?, field_row(r)?.1))
        })
        .and_then(|rows| rows.collect())
        .map_err(internal)?;
    rows.sort_by_key(|(pos, _)| *pos);
    Ok(rows.into_iter().map(|(_, f)| f).collect())
}

/// The fields of a list of the workspace, `None` if it has no such list
/// (cached on the writer: see `cache.rs`).
pub fn list_fields_in(
    conn: &Connection,
    ws: &WorkspaceId,
    id: &ListId,
) -> Result<Option<Vec<FieldDef>>> {
    super::cache::list_fields(ws.as_str(), id.as_str(), || {
        let found = conn
            .prepare_cached("SELECT 1 FROM lists WHERE workspace_id = ?1 AND id = ?2")
            .and_then(|mut s| s.exists([ws.as_str(), id.as_str()]))
            .map_err(internal)?;
        if found {
            list_fields(conn, id).map(Some)
        } else {
            Ok(None)
        }
    })
}

/// Field definitions of the contact's lists plus `extra` lists, checking
/// that each extra list exists in the workspace.
pub fn field_defs_for(
    conn: &Connection,
    ws: &WorkspaceId,
    contact: Option<&ContactId>,
    extra: &[ListId],
) -> Result<Vec<FieldDef>> {
    let mut defs = Vec::new();
    for (i, list) in extra.iter().enumerate() {
        let Some(fields) = list_fields_in(conn, ws, list)? else {
            return Err(plan::unknown_list(i, list));
        };
        defs.extend(fields);
    }
    if let Some(c) = contact {
        let mut s = conn
            .prepare_cached(
                "SELECT f.list_id, f.name, f.type, f.options FROM list_fields f
                 JOIN memberships m ON m.list_id = f.list_id WHERE m.contact_id = ?1",
            )
            .map_err(internal)?;
        let rows = s.query_map([c.as_str()], field_row).map_err(internal)?;
        for r in rows {
            defs.push(r.map_err(internal)?.1);
        }
    }
    Ok(defs)
}

// ---- memberships ------------------------------------------------------------------
