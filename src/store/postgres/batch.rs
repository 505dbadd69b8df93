//! The batching writer: contact upserts and flow entries from many callers
//! go through a few tasks, each of which takes every write queued (up to
//! `MAX_BATCH`), runs them in one transaction with one statement per step
//! for the whole batch (`store::logic::batch`), commits, and only then
//! answers each caller: SQLite's group commit, on PostgreSQL. A batch holds
//! one write per email and per idempotency key; a later one waits for the
//! next batch. A batch that fails on a database error is retried one write
//! per transaction, so one bad write never fails its neighbours.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::engine::PgTx;
use super::{CONTACT_COLS, contact_row, email_lock_key, field_row, idempotency_lock_key, internal};
use crate::domain::{ContactId, Email, FieldDef, FlowId, ListId, Millis, Phone, WorkspaceId};
use crate::store::logic::batch::{Write, Written, write_many};
use crate::store::logic::{self, NewRun};
use crate::store::{ContactRecord, Result, StoreError};

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 128;
/// Tasks writing batches at once (each holds one connection while it does).
const WRITERS: usize = 4;

struct Job {
    ws: WorkspaceId,
    write: Write,
    reply: oneshot::Sender<Result<Written>>,
}

/// The handle the store's `upsert_contact` and `enter_flow` send through.
pub(super) struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    pub(super) fn start(pool: PgPool) -> Self {
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(pool.clone(), rx.clone()));
        }
        Self { jobs }
    }

    /// Queues the write and waits for its answer, given after the commit.
    pub(super) async fn write(&self, ws: &WorkspaceId, write: Write) -> Result<Written> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            ws: ws.clone(),
            write,
            reply,
        };
        let stopped = || StoreError::Internal("the PostgreSQL writer stopped".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// What two writes of one batch must not share: the email they upsert and
/// the idempotency key they come with.
fn claims(job: &Job) -> Vec<String> {
    let mut out = Vec::with_capacity(2);
    if let Some(email) = &job.write.contact().email {
        out.push(email_lock_key(&job.ws, email));
    }
    if let Write::Enter(req) = &job.write
        && let Some((key, _)) = &req.idempotency
    {
        out.push(idempotency_lock_key(&job.ws, req.flow_id.as_str(), key));
    }
    out
}

async fn writer(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut held: VecDeque<Job> = VecDeque::new();
    loop {
        let mut batch = Vec::new();
        let mut taken = HashSet::new();
        let mut admit = |job: Job, held: &mut VecDeque<Job>, batch: &mut Vec<Job>| {
            let keys = claims(&job);
            if keys.iter().any(|k| taken.contains(k)) {
                held.push_back(job);
            } else {
                taken.extend(keys);
                batch.push(job);
            }
        };
        let mut later = VecDeque::new();
        while let Some(job) = held.pop_front() {
            admit(job, &mut later, &mut batch);
        }
        held = later;
        // Jobs held back from the last batch go first, without waiting for
        // the queue: another writer may be holding it while it waits for
        // new jobs.
        let rx = if batch.is_empty() {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => admit(job, &mut held, &mut batch),
                None => return,
            }
            Some(rx)
        } else {
            rx.try_lock().ok()
        };
        if let Some(mut rx) = rx {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => admit(job, &mut held, &mut batch),
                    Err(_) => break,
                }
            }
        }
        run(&pool, batch).await;
    }
}

async fn run(pool: &PgPool, batch: Vec<Job>) {
    let (items, replies): (Vec<(WorkspaceId, Write)>, Vec<_>) = batch
        .into_iter()
        .map(|j| ((j.ws, j.write), j.reply))
        .unzip();
    let answers = match attempt(pool, &items).await {
        Ok(answers) => answers,
        Err(Failed::Commit(e)) => {
            // Whether the commit took effect is unknown: no retry, which
            // could run a write twice.
            let again = |e: &StoreError| match e {
                StoreError::Busy(m) => StoreError::Busy(m.clone()),
                other => StoreError::Internal(other.to_string()),
            };
            items.iter().map(|_| Err(again(&e))).collect()
        }
        Err(Failed::Before(e)) => {
            tracing::warn!(error = %e, writes = items.len(), "a write batch failed; retrying its writes one per transaction");
            let mut answers = Vec::with_capacity(items.len());
            for (ws, write) in &items {
                answers.push(alone(pool, ws, write).await);
            }
            answers
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A caller that went away (its request was cancelled) has nobody to
        // tell; its write stands, as a single write's would.
        let _ = reply.send(answer);
    }
}

enum Failed {
    Before(StoreError),
    Commit(StoreError),
}

async fn attempt(
    pool: &PgPool,
    items: &[(WorkspaceId, Write)],
) -> std::result::Result<Vec<Result<Written>>, Failed> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| Failed::Before(internal(e)))?;
    let answers = write_many(&mut PgTx::new(&mut tx), items)
        .await
        .map_err(Failed::Before)?;
    tx.commit().await.map_err(|e| Failed::Commit(internal(e)))?;
    Ok(answers)
}

/// One write in its own transaction, through the single-caller path.
async fn alone(pool: &PgPool, ws: &WorkspaceId, write: &Write) -> Result<Written> {
    let mut tx = pool.begin().await.map_err(internal)?;
    let mut ptx = PgTx::new(&mut tx);
    let now = crate::store::now_millis();
    let out = match write {
        Write::Upsert(input) => {
            Written::Upserted(logic::upsert_contact(&mut ptx, ws, input, now).await?)
        }
        Write::Enter(req) => Written::Entered(logic::enter(&mut ptx, ws, req, now).await?),
    };
    tx.commit().await.map_err(internal)?;
    Ok(out)
}

// Every statement here is prepared once per connection, and PostgreSQL
// may keep one generic plan for it: our connections have sequential and
// bitmap scans off (`PgStore::connect`), so that plan walks the indexes
// whatever size the tables had when it was made. (With them on, a plan
// made while `contacts` was small seq-scanned it for good: upserts slowed
// from 5,600/s to 2,700/s over 60,000 rows.)
pub(super) async fn lock_emails(
    c: &mut PgConnection,
    keys: &[(&WorkspaceId, &Email)],
) -> Result<()> {
    // One statement, the locks taken in the order given (sorted by the
    // caller): two batches never wait on each other in a cycle.
    let keys: Vec<String> = keys.iter().map(|(ws, e)| email_lock_key(ws, e)).collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM UNNEST($1::text[]) AS k",
    )
    .bind(&keys)
    .execute(&mut *c)
    .await
    .map_err(internal)?;
    Ok(())
}

pub(super) async fn contacts_by_emails(
    c: &mut PgConnection,
    keys: &[(&WorkspaceId, &Email)],
) -> Result<Vec<Option<ContactRecord>>> {
    let keys: Vec<(&str, &str)> = keys.iter().map(|(w, e)| (w.as_str(), e.as_str())).collect();
    contacts_where(c, "email", &keys).await
}

pub(super) async fn contacts_for_update(
    c: &mut PgConnection,
    ids: &[(&WorkspaceId, &ContactId)],
) -> Result<Vec<Option<ContactRecord>>> {
    let keys: Vec<(&str, &str)> = ids.iter().map(|(w, c)| (w.as_str(), c.as_str())).collect();
    contacts_where(c, "id", &keys).await
}

/// The contact whose `col` (`email` or `id`) is each key's, in its
/// workspace, in the order asked; locked, in id order.
async fn contacts_where(
    c: &mut PgConnection,
    col: &str,
    keys: &[(&str, &str)],
) -> Result<Vec<Option<ContactRecord>>> {
    let (ws, vals): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let rows = sqlx::query(&format!(
        "SELECT k.i, {CONTACT_COLS} FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(ws, v, i)
         JOIN contacts c ON c.workspace_id = k.ws AND c.{col} = k.v
         ORDER BY c.id FOR UPDATE OF c"
    ))
    .bind(&ws)
    .bind(&vals)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    by_ordinal(&rows, keys.len(), contact_row)
}

pub(super) async fn field_defs_each(
    c: &mut PgConnection,
    items: &[(&WorkspaceId, Option<&ContactId>, &[ListId])],
) -> Result<Vec<Result<Vec<FieldDef>>>> {
    // The lists named: share-locked (not deleted under this write) and
    // their fields, in one statement; a list without fields is one row
    // of NULLs, a list not in its workspace no row.
    let mut named: Vec<(&str, &str)> = items
        .iter()
        .flat_map(|(ws, _, lists)| lists.iter().map(|l| (ws.as_str(), l.as_str())))
        .collect();
    named.sort_unstable();
    named.dedup();
    let mut by_list: HashMap<(String, String), Vec<FieldDef>> = HashMap::new();
    if !named.is_empty() {
        let (ws, ids): (Vec<&str>, Vec<&str>) = named.into_iter().unzip();
        let rows = sqlx::query(
            "SELECT l.workspace_id, l.id AS list_id, f.name, f.type, f.options FROM lists l
                 LEFT JOIN list_fields f ON f.list_id = l.id
                 WHERE (l.workspace_id, l.id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))
                 ORDER BY l.id, f.position FOR SHARE OF l",
        )
        .bind(&ws)
        .bind(&ids)
        .fetch_all(&mut *c)
        .await
        .map_err(internal)?;
        for r in &rows {
            let ws: String = r.try_get("workspace_id").map_err(internal)?;
            let list: String = r.try_get("list_id").map_err(internal)?;
            let fields = by_list.entry((ws, list)).or_default();
            if r.try_get::<Option<String>, _>("name")
                .map_err(internal)?
                .is_some()
            {
                fields.push(field_row(r)?);
            }
        }
    }
    // The fields of the lists the existing contacts are in.
    let mut contacts: Vec<&str> = items
        .iter()
        .filter_map(|(_, c, _)| c.map(ContactId::as_str))
        .collect();
    contacts.sort_unstable();
    contacts.dedup();
    let mut by_contact: HashMap<String, Vec<FieldDef>> = HashMap::new();
    if !contacts.is_empty() {
        let rows = sqlx::query(
            // One index probe per contact (a LATERAL subquery kept apart
            // by `OFFSET 0`), not `= ANY($1)` or a join: while
            // `memberships` has no statistics yet (a fresh database under
            // load) the planner guesses a third of the table matches and
            // reads all of it, once per batch.
            "SELECT k.id AS contact_id, f.name, f.type, f.options
               FROM UNNEST($1::text[]) AS k(id)
               CROSS JOIN LATERAL (SELECT list_id FROM memberships WHERE contact_id = k.id OFFSET 0) m
               JOIN list_fields f ON f.list_id = m.list_id",
        )
        .bind(&contacts)
        .fetch_all(&mut *c)
        .await
        .map_err(internal)?;
        for r in &rows {
            let contact: String = r.try_get("contact_id").map_err(internal)?;
            by_contact.entry(contact).or_default().push(field_row(r)?);
        }
    }
    Ok(items
        .iter()
        .map(|(ws, contact, lists)| {
            let mut defs = Vec::new();
            for (i, list) in lists.iter().enumerate() {
                let key = (ws.to_string(), list.to_string());
                let Some(fields) = by_list.get(&key) else {
                    return Err(crate::store::plan::unknown_list(i, list));
                };
                defs.extend(fields.iter().cloned());
            }
            if let Some(fields) = contact.and_then(|c| by_contact.get(c.as_str())) {
                defs.extend(fields.iter().cloned());
            }
            Ok(defs)
        })
        .collect())
}

pub(super) async fn write_contacts(
    c: &mut PgConnection,
    rows: &[(&WorkspaceId, &ContactRecord)],
) -> Result<()> {
    // Sorted by id: the order every other write locks contacts in.
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    let col = |f: fn(&ContactRecord) -> &str| rows.iter().map(|r| f(r.1)).collect::<Vec<_>>();
    let ws: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let phones: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.1.phone.as_ref().map(Phone::as_str))
        .collect();
    let fields: Vec<Value> = rows
        .iter()
        .map(|r| Value::Object(r.1.fields.clone()))
        .collect();
    let created: Vec<Millis> = rows.iter().map(|r| r.1.created_at).collect();
    let updated: Vec<Millis> = rows.iter().map(|r| r.1.updated_at).collect();
    sqlx::query(
            "INSERT INTO contacts (id, workspace_id, email, phone, status, fields, created_at, updated_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::bigint[], $8::bigint[])
             ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, phone = EXCLUDED.phone,
               status = EXCLUDED.status, fields = EXCLUDED.fields, updated_at = EXCLUDED.updated_at",
        )
        .bind(col(|c| c.id.as_str()))
        .bind(&ws)
        .bind(col(|c| c.email.as_str()))
        .bind(&phones)
        .bind(col(|c| c.status.as_str()))
        .bind(&fields)
        .bind(&created)
        .bind(&updated)
        .execute(&mut *c)
        .await
        .map_err(internal)?;
    Ok(())
}

pub(super) async fn add_memberships(
    c: &mut PgConnection,
    rows: &[(&WorkspaceId, &ListId, &ContactId)],
    now: Millis,
) -> Result<Vec<bool>> {
    // Each pair once (a second `ON CONFLICT DO UPDATE` of one row in a
    // statement is an error); a repeated pair is not new the second time.
    let mut pairs: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(w, l, c)| (l.as_str(), c.as_str(), w.as_str()))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (lists, contacts, ws): (Vec<&str>, Vec<&str>, Vec<&str>) =
        pairs
            .into_iter()
            .fold(Default::default(), |(mut l, mut c, mut w), p| {
                l.push(p.0);
                c.push(p.1);
                w.push(p.2);
                (l, c, w)
            });
    let added = sqlx::query(
            "INSERT INTO memberships (list_id, contact_id, workspace_id, status, since)
             SELECT l, c, w, 'subscribed', $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(l, c, w)
             ON CONFLICT (list_id, contact_id) DO UPDATE SET status = 'subscribed',
               since = EXCLUDED.since WHERE memberships.status <> 'subscribed'
             RETURNING list_id, contact_id",
        )
        .bind(&lists)
        .bind(&contacts)
        .bind(&ws)
        .bind(now)
        .fetch_all(&mut *c)
        .await
        .map_err(internal)?;
    let mut new: HashSet<(String, String)> = HashSet::new();
    for r in &added {
        new.insert((
            r.try_get("list_id").map_err(internal)?,
            r.try_get("contact_id").map_err(internal)?,
        ));
    }
    Ok(rows
        .iter()
        .map(|(_, l, c)| new.remove(&(l.to_string(), c.to_string())))
        .collect())
}

pub(super) async fn wake_exits_each(
    c: &mut PgConnection,
    rows: &[(&WorkspaceId, &ContactId, bool)],
    now: Millis,
) -> Result<Vec<bool>> {
    // A data-modifying CTE runs to completion whether or not the
    // statement reads it: the wake-ups, and which workspaces have
    // contact triggers, in one round trip. The runs are found by a probe
    // per contact (LATERAL, fenced by OFFSET 0): with no statistics yet,
    // `contact_id = ANY($1) AND status = 'waiting'` was planned as a
    // BitmapAnd with the whole of `runs_due` (its predicate is implied),
    // 125k entries and 4–13 ms a call in a 30k-call run; the probes take
    // 0.3 ms. A leased run is woken too (`woken_due!`). What depends on
    // the row's state is tested outside the probe: a row updated after
    // waiting for a lock (a claim not yet committed when the probe read)
    // is re-checked only against the outer WHERE, so the lease the claim
    // wrote is seen and the run is woken.
    let contacts: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let mut ws: Vec<&str> = rows.iter().filter(|r| r.2).map(|r| r.0.as_str()).collect();
    ws.sort_unstable();
    ws.dedup();
    let with_triggers: Vec<String> = sqlx::query_scalar(concat!(
        "WITH woken AS (
               UPDATE runs SET due_at = ",
        crate::woken_due!("$2"),
        " WHERE id IN (
                 SELECT r.id FROM UNNEST($1::text[]) AS k(id) CROSS JOIN LATERAL (
                   SELECT id FROM runs WHERE contact_id = k.id AND status = 'waiting'
                     AND has_exits OFFSET 0) r)
                 AND status = 'waiting' AND has_exits AND (due_at > $2 OR lease_until > $2)
               RETURNING 1)
             SELECT w FROM UNNEST($3::text[]) AS w WHERE EXISTS (
               SELECT 1 FROM flows WHERE workspace_id = w AND status = 'active'
               AND trigger_type IN ('list_added', 'field_changed'))"
    ))
    .bind(&contacts)
    .bind(now)
    .bind(&ws)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    Ok(rows
        .iter()
        .map(|(w, _, ask)| *ask && with_triggers.iter().any(|t| t == w.as_str()))
        .collect())
}

pub(super) async fn run_counts_each(
    c: &mut PgConnection,
    rows: &[(&FlowId, &ContactId)],
) -> Result<Vec<(bool, bool)>> {
    let (flows, contacts): (Vec<&str>, Vec<&str>) =
        rows.iter().map(|(f, c)| (f.as_str(), c.as_str())).unzip();
    let found = sqlx::query(
        "SELECT k.i, COUNT(r.id) > 0 AS any_run,
               COALESCE(BOOL_OR(r.status IN ('active', 'waiting')), false) AS active_run
             FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(f, c, i)
             LEFT JOIN runs r ON r.flow_id = k.f AND r.contact_id = k.c
             GROUP BY k.i",
    )
    .bind(&flows)
    .bind(&contacts)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    let counts = by_ordinal(&found, rows.len(), |r| {
        Ok((
            r.try_get("any_run").map_err(internal)?,
            r.try_get("active_run").map_err(internal)?,
        ))
    })?;
    // A pair with no runs still gets its row (LEFT JOIN, COUNT 0).
    Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
}

pub(super) async fn insert_runs(c: &mut PgConnection, runs: &[NewRun<'_>]) -> Result<Vec<bool>> {
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    let ws: Vec<&str> = runs.iter().map(|r| r.ws.as_str()).collect();
    let flows: Vec<&str> = runs.iter().map(|r| r.flow.as_str()).collect();
    let versions: Vec<i32> = runs.iter().map(|r| r.version as i32).collect();
    let contacts: Vec<&str> = runs.iter().map(|r| r.contact.as_str()).collect();
    let steps: Vec<&str> = runs.iter().map(|r| r.plan.first_step.as_str()).collect();
    let data: Vec<&str> = runs.iter().map(|r| r.event_data).collect();
    let bytes: Vec<i64> = runs.iter().map(|r| r.event_data.len() as i64).collect();
    let exits: Vec<bool> = runs.iter().map(|r| r.plan.has_exits).collect();
    let now: Vec<Millis> = runs.iter().map(|r| r.now).collect();
    let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO runs (id, workspace_id, flow_id, flow_version, contact_id, status, step, due_at,
                               event_data, event_bytes, has_exits, created_at, updated_at)
             SELECT id, ws, f, v, c, 'active', step, t, d::jsonb, b, x, t, t
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                         $7::text[], $8::bigint[], $9::bool[], $10::bigint[])
                  AS k(id, ws, f, v, c, step, d, b, x, t)
             ON CONFLICT (flow_id, contact_id) WHERE status IN ('active', 'waiting') DO NOTHING
             RETURNING id",
        )
        .bind(&ids)
        .bind(&ws)
        .bind(&flows)
        .bind(&versions)
        .bind(&contacts)
        .bind(&steps)
        .bind(&data)
        .bind(&bytes)
        .bind(&exits)
        .bind(&now)
        .fetch_all(&mut *c)
        .await
        .map_err(internal)?;
    let inserted: HashSet<String> = inserted.into_iter().collect();
    Ok(ids.iter().map(|id| inserted.contains(*id)).collect())
}

pub(super) async fn lock_lists(
    c: &mut PgConnection,
    lists: &[(&WorkspaceId, &ListId)],
) -> Result<Vec<bool>> {
    let (ws, ids): (Vec<&str>, Vec<&str>) =
        lists.iter().map(|(w, l)| (w.as_str(), l.as_str())).unzip();
    let found = sqlx::query(
        "SELECT l.workspace_id, l.id FROM lists l
         WHERE (l.workspace_id, l.id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))
         ORDER BY l.id FOR SHARE",
    )
    .bind(&ws)
    .bind(&ids)
    .fetch_all(&mut *c)
    .await
    .map_err(internal)?;
    let mut there = HashSet::new();
    for r in &found {
        let w: String = r.try_get("workspace_id").map_err(internal)?;
        let l: String = r.try_get("id").map_err(internal)?;
        there.insert((w, l));
    }
    Ok(lists
        .iter()
        .map(|(w, l)| there.contains(&(w.to_string(), l.to_string())))
        .collect())
}

/// Rows numbered by `WITH ORDINALITY` (column `i`, from 1), each decoded
/// into its slot of `n`.
fn by_ordinal<T>(
    rows: &[sqlx::postgres::PgRow],
    n: usize,
    decode: impl Fn(&sqlx::postgres::PgRow) -> Result<T>,
) -> Result<Vec<Option<T>>> {
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for r in rows {
        let i: i64 = r.try_get("i").map_err(internal)?;
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(decode(r)?);
        }
    }
    Ok(out)
}
