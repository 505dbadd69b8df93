//! PostgreSQL's executor of the shared statements (`store::sql`).

use sqlx::postgres::PgRow;
use sqlx::{Column, PgConnection, Row, TypeInfo};

use super::internal;
use crate::store::sql::{Arg, Done, Stmt, Val};
use crate::store::{Result, StoreError};

/// Runs one statement on `c` (inside the caller's transaction, if any).
pub async fn exec(c: &mut PgConnection, stmt: &Stmt) -> Result<Done> {
    let mut q = sqlx::query(&stmt.sql);
    for a in &stmt.args {
        q = match a {
            // Sent as the text it is (`jsonb` on the wire, not re-serialised).
            Arg::Json(v) => q.bind(
                v.as_deref()
                    .map(serde_json::from_str::<&serde_json::value::RawValue>)
                    .transpose()
                    .map_err(|e| StoreError::Internal(format!("JSON text argument: {e}")))?
                    .map(sqlx::types::Json),
            ),
            Arg::Int(v) => q.bind(*v),
            // Borrowed, not cloned: an attempt's request and body are
            // kilobytes (SQLite's executor borrows them too).
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Bytes(v) => q.bind(v.as_deref()),
        };
    }
    let head = stmt.sql.trim_start();
    let starts = |word: &str| {
        head.get(..word.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(word))
    };
    let failed = |e: sqlx::Error| match &stmt.on_unique {
        Some(taken)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            taken.error()
        }
        _ => internal(e),
    };
    let done = if starts("SELECT") || starts("WITH") || stmt.sql.contains("RETURNING") {
        let rows = q.fetch_all(&mut *c).await.map_err(failed)?;
        let rows = rows.iter().map(decode).collect::<Result<Vec<_>>>()?;
        let changed = rows.len() as u64;
        Done { rows, changed }
    } else {
        let changed = q.execute(&mut *c).await.map_err(failed)?.rows_affected();
        Done {
            rows: Vec::new(),
            changed,
        }
    };
    stmt.check(&done)?;
    Ok(done)
}

fn decode(r: &PgRow) -> Result<Vec<Val>> {
    r.columns()
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let v = match col.type_info().name() {
                "INT8" => r.try_get::<Option<i64>, _>(i).map(|v| v.map(Val::Int)),
                "INT4" => r
                    .try_get::<Option<i32>, _>(i)
                    .map(|v| v.map(|v| Val::Int(v.into()))),
                "INT2" => r
                    .try_get::<Option<i16>, _>(i)
                    .map(|v| v.map(|v| Val::Int(v.into()))),
                "BOOL" => r
                    .try_get::<Option<bool>, _>(i)
                    .map(|v| v.map(|v| Val::Int(v.into()))),
                "BYTEA" => r
                    .try_get::<Option<Vec<u8>>, _>(i)
                    .map(|v| v.map(Val::Bytes)),
                // As the text it is: `RowExt::json` parses it once, into
                // the type the caller wants.
                "JSON" | "JSONB" => r
                    .try_get::<Option<sqlx::types::Json<Box<serde_json::value::RawValue>>>, _>(i)
                    .map(|v| v.map(|v| Val::Text(v.0.get().to_owned()))),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => {
                    r.try_get::<Option<String>, _>(i).map(|v| v.map(Val::Text))
                }
                other => {
                    return Err(StoreError::Internal(format!(
                        "column `{}` has type {other}, which shared statements do not read",
                        col.name()
                    )));
                }
            };
            Ok(v.map_err(internal)?.unwrap_or(Val::Null))
        })
        .collect()
}

/// Runs a script, each statement checked, stopping at the first error.
pub async fn script(c: &mut PgConnection, stmts: &[Stmt]) -> Result<Vec<Done>> {
    let mut out = Vec::with_capacity(stmts.len());
    for s in stmts {
        out.push(exec(c, s).await?);
    }
    Ok(out)
}
