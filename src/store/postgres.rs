//! The PostgreSQL store, for several hookflow processes sharing one
//! database. Each write is one transaction; rows a write depends on are read
//! inside that transaction, and concurrent upserts of the same email are
//! serialised with a transaction-scoped advisory lock so that two processes
//! never both decide "new contact".

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};

use super::{
    AdvanceOutcome, ClaimedRun, ContactRecord, Result, RunAdvance, Store, StoreError, StoreOptions,
    now_millis, plan,
};
use crate::domain::{ContactId, Email, FieldDef, FieldName, ListId, Millis, Phone, WorkspaceId};

pub struct PgStore {
    pool: PgPool,
    /// Contact upserts and flow entries, batched (see `batch.rs`).
    batcher: batch::Batcher,
    keys: super::key_cache::KeyCache,
}

/// A stored enum column, decoded loudly: text no variant has is an error
/// naming it, never a default (see `domain::stored`).
fn stored<T: crate::domain::Stored>(r: &PgRow, col: &str) -> Result<T> {
    let raw: String = r.try_get(col).map_err(internal)?;
    T::decode(&raw).map_err(|e| StoreError::Internal(format!("{col}: {e}")))
}

fn internal(e: sqlx::Error) -> StoreError {
    // 40P01 deadlock_detected, 40001 serialization_failure: the transaction
    // was rolled back whole, so the request can be retried as is.
    match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "40P01" || code == "40001" => StoreError::Busy(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

impl PgStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let opts: PgConnectOptions = url.parse().map_err(internal)?;
        // No sequential or bitmap scans on our connections: every statement
        // here is a probe by key or an ordered walk of an index made for it.
        // A bitmap scan is what the planner picks instead while a table has
        // no statistics yet (a fresh or fast-growing database under load);
        // on `runs_due` it read every entry below the due time, the dead
        // entries of finished runs included, and visited their heap pages
        // (35,000 entries and 3,300 pages for one `next_due` in a 30k-call
        // run), and it never marks those entries dead, as an index scan
        // does. A sequential scan is what a plan made while a table was
        // small keeps using as it grows. With both off, the statements can
        // be prepared once and their generic plans kept, saving a parse and
        // a plan per statement. Measured A/B with `hookflow-bench inbound`:
        // bitmap scans off +6 to +10 % calls/s; then prepared statements
        // with sequential scans off +30 to +35 % (prepared with them on:
        // -40 %, and the engine fell 9-16 s behind).
        let opts = opts.options([("enable_bitmapscan", "off"), ("enable_seqscan", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(2))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(opts)
            .await
            .map_err(internal)?;
        if !options.create {
            let ours: bool = sqlx::query_scalar("SELECT to_regclass('workspaces') IS NOT NULL")
                .fetch_one(&pool)
                .await
                .map_err(internal)?;
            if !ours {
                pool.close().await;
                return Err(StoreError::NoDatabase(
                    "the database has no hookflow tables".into(),
                ));
            }
        }
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        Ok(Self {
            batcher: batch::Batcher::start(pool.clone()),
            pool,
            keys: super::key_cache::KeyCache::new(options.key_cache_ttl),
        })
    }
}

// ---- row mapping ---------------------------------------------------------------

const CONTACT_COLS: &str = "c.id, c.email, c.phone, c.status, c.fields, c.created_at, c.updated_at";

fn contact_row(r: &PgRow) -> Result<ContactRecord> {
    let _status: String = r.try_get("status").map_err(internal)?;
    let fields: Value = r.try_get("fields").map_err(internal)?;
    Ok(ContactRecord {
        id: ContactId::from_trusted(r.try_get("id").map_err(internal)?),
        email: Email::from_trusted(r.try_get("email").map_err(internal)?),
        phone: r
            .try_get::<Option<String>, _>("phone")
            .map_err(internal)?
            .map(Phone::from_trusted),
        status: stored(r, "status")?,
        fields: match fields {
            Value::Object(m) => m,
            other => {
                return Err(StoreError::Internal(format!(
                    "contacts.fields holds {other}, not an object"
                )));
            }
        },
        created_at: r.try_get("created_at").map_err(internal)?,
        updated_at: r.try_get("updated_at").map_err(internal)?,
    })
}

fn field_row(r: &PgRow) -> Result<FieldDef> {
    let name: String = r.try_get("name").map_err(internal)?;
    let options: Value = r.try_get("options").map_err(internal)?;
    Ok(FieldDef {
        name: FieldName::parse(&name).map_err(StoreError::Internal)?,
        kind: stored(r, "type")?,
        options: serde_json::from_value(options)
            .map_err(|e| StoreError::Internal(format!("list_fields.options: {e}")))?,
    })
}

// ---- queries usable inside or outside a transaction -------------------------------

async fn field_defs_for(
    c: &mut PgConnection,
    ws: &WorkspaceId,
    contact: Option<&ContactId>,
    extra: &[ListId],
) -> Result<Vec<FieldDef>> {
    let mut defs = Vec::new();
    if !extra.is_empty() {
        // One statement for every list named: share-locks it (so it is not
        // deleted under this write) and reads its fields; a list without
        // fields is one row of NULLs, a list not in the workspace no row.
        let ids: Vec<&str> = extra.iter().map(ListId::as_str).collect();
        let rows = sqlx::query(
            "SELECT l.id AS list_id, f.name, f.type, f.options FROM lists l
             LEFT JOIN list_fields f ON f.list_id = l.id
             WHERE l.workspace_id = $1 AND l.id = ANY($2)
             ORDER BY l.id, f.position FOR SHARE OF l",
        )
        .bind(ws.as_str())
        .bind(&ids)
        .fetch_all(&mut *c)
        .await
        .map_err(internal)?;
        let mut by_list: std::collections::HashMap<String, Vec<FieldDef>> = Default::default();
        for r in &rows {
            let list: String = r.try_get("list_id").map_err(internal)?;
            let fields = by_list.entry(list).or_default();
            if r.try_get::<Option<String>, _>("name")
                .map_err(internal)?
                .is_some()
            {
                fields.push(field_row(r)?);
            }
        }
        for (i, list) in extra.iter().enumerate() {
            let Some(fields) = by_list.get(list.as_str()) else {
                return Err(plan::unknown_list(i, list));
            };
            defs.extend(fields.iter().cloned());
        }
    }
    if let Some(id) = contact {
        let rows = sqlx::query(
            "SELECT f.name, f.type, f.options FROM list_fields f JOIN memberships m ON m.list_id = f.list_id
             WHERE m.contact_id = $1",
        )
        .bind(id.as_str())
        .fetch_all(&mut *c)
        .await
        .map_err(internal)?;
        for r in &rows {
            defs.push(field_row(r)?);
        }
    }
    Ok(defs)
}

/// The advisory-lock key that serialises upserts of one email (the single
/// path, the batch writer's locks and its one-write-per-email rule).
fn email_lock_key(ws: &WorkspaceId, email: &Email) -> String {
    format!("{ws}/{email}")
}

/// The advisory-lock key of an idempotency key in its scope.
fn idempotency_lock_key(ws: &WorkspaceId, scope: &str, key: &str) -> String {
    format!("{ws}/idem/{scope}/{key}")
}

/// Serialises upserts of one email across processes until the transaction
/// ends, so "is there a contact with this email?" has one answer.
async fn lock_email(c: &mut PgConnection, ws: &WorkspaceId, email: &Email) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(email_lock_key(ws, email))
        .execute(&mut *c)
        .await
        .map_err(internal)?;
    Ok(())
}

mod batch;
mod engine;
mod queue;
mod sql;
mod store_impl;
