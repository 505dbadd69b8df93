//! SQLite's executor of the shared statements (`store::sql`).

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

use super::internal;
use crate::store::Result;
use crate::store::sql::{Arg, Done, Stmt, Val, sqlite_text};

thread_local! {
    /// The SQLite text of each literal statement, by its address: literals
    /// live for the whole program, so the address names the text.
    static SQLITE_TEXT: std::cell::RefCell<std::collections::HashMap<(usize, usize), String>> =
        Default::default();
}

/// Runs one statement on `conn` (inside the caller's transaction).
pub fn exec(conn: &Connection, stmt: &Stmt) -> Result<Done> {
    let mut s = match &stmt.sql {
        // A literal's SQLite text is made once per thread, not per call.
        std::borrow::Cow::Borrowed(text) => SQLITE_TEXT.with_borrow_mut(|cache| {
            let sql = cache
                .entry((text.as_ptr() as usize, text.len()))
                .or_insert_with(|| sqlite_text(text));
            conn.prepare_cached(sql)
        }),
        std::borrow::Cow::Owned(text) => conn.prepare_cached(&sqlite_text(text)),
    }
    .map_err(internal)?;
    match stmt.changes {
        Some(crate::store::sql::Cached::Flows) => super::cache::flows_changed(),
        Some(crate::store::sql::Cached::Lists) => super::cache::lists_changed(),
        None => {}
    }
    let args = stmt.args.iter().map(Bind);
    let failed = |e: rusqlite::Error| match &stmt.on_unique {
        Some(taken) if super::is_unique_violation(&e) => taken.error(),
        _ => internal(e),
    };
    let done = if s.column_count() == 0 {
        let changed = s
            .execute(rusqlite::params_from_iter(args))
            .map_err(failed)?;
        Done {
            rows: Vec::new(),
            changed: changed as u64,
        }
    } else {
        let n = s.column_count();
        let mut rows = Vec::new();
        let mut q = s.query(rusqlite::params_from_iter(args)).map_err(failed)?;
        while let Some(r) = q.next().map_err(failed)? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i).map_err(internal)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Real(v) => Val::Int(v as i64),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                });
            }
            rows.push(row);
        }
        let changed = rows.len() as u64;
        Done { rows, changed }
    };
    stmt.check(&done)?;
    Ok(done)
}

/// An argument bound as it is: text and bytes by reference (an attempt's
/// request is kilobytes, copied once less on the writer thread).
struct Bind<'a>(&'a Arg);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Arg::Int(v) => ToSqlOutput::Owned(v.map_or(Value::Null, Value::Integer)),
            Arg::Bytes(v) => {
                ToSqlOutput::Borrowed(v.as_deref().map_or(ValueRef::Null, ValueRef::Blob))
            }
            Arg::Text(v) | Arg::Json(v) => ToSqlOutput::Borrowed(
                v.as_deref()
                    .map_or(ValueRef::Null, |t| ValueRef::Text(t.as_bytes())),
            ),
        })
    }
}

/// Runs a script, each statement checked, stopping at the first error.
pub fn script(conn: &Connection, stmts: &[Stmt]) -> Result<Vec<Done>> {
    stmts.iter().map(|s| exec(conn, s)).collect()
}
