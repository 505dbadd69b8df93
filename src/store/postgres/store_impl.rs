//! The [`Store`] contract on PostgreSQL: each method is one transaction (or
//! one statement) built from the queries of the parent module.

use super::*;
use crate::store::logic;

use crate::store::logic::batch::{Write, Written};

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    fn key_cache(&self) -> &crate::store::key_cache::KeyCache {
        &self.keys
    }

    fn exclusive(&self, key: &str) -> Option<crate::store::sql::Stmt> {
        // `pg_advisory_xact_lock` returns void, which a shared statement
        // cannot read: select a constant beside it.
        Some(crate::store::sql::Stmt::new(
            "SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 11))) l",
            vec![format!("exclusive/{key}").into()],
        ))
    }

    async fn upsert_contact(&self, ws: &WorkspaceId, input: ContactUpsert) -> Result<Upserted> {
        match self.batcher.write(ws, Write::Upsert(input)).await? {
            Written::Upserted(out) => Ok(out),
            Written::Entered(_) => Err(StoreError::Internal(
                "an upsert answered as an entry".into(),
            )),
        }
    }

    async fn update_contact(
        &self,
        ws: &WorkspaceId,
        id: &ContactId,
        patch: ContactPatch,
    ) -> Result<ContactRecord> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let updated = logic::patch_contact(
            &mut engine::PgTx::new(&mut tx),
            ws,
            id,
            &patch,
            now_millis(),
        )
        .await?;
        tx.commit().await.map_err(internal)?;
        Ok(updated)
    }

    async fn add_membership(
        &self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<Membership> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let m = logic::add_member(
            &mut engine::PgTx::new(&mut tx),
            ws,
            list,
            contact,
            now_millis(),
        )
        .await?;
        tx.commit().await.map_err(internal)?;
        Ok(m)
    }

    async fn remove_membership(
        &self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        logic::remove_member(
            &mut engine::PgTx::new(&mut tx),
            ws,
            list,
            contact,
            now_millis(),
        )
        .await?;
        tx.commit().await.map_err(internal)
    }

    async fn enter_flow(&self, ws: &WorkspaceId, req: EntryRequest) -> Result<EntryOutcome> {
        match self.batcher.write(ws, Write::Enter(req)).await? {
            Written::Entered(out) => Ok(out),
            Written::Upserted(_) => Err(StoreError::Internal(
                "an entry answered as an upsert".into(),
            )),
        }
    }

    async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: crate::store::ClaimLimit,
    ) -> Result<Vec<ClaimedRun>> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let runs = engine::claim(&mut tx, owner, now, lease_until, limit).await?;
        tx.commit().await.map_err(internal)?;
        Ok(runs)
    }

    async fn complete_runs(
        &self,
        owner: &str,
        now: Millis,
        advances: Vec<RunAdvance>,
    ) -> Result<Vec<AdvanceOutcome>> {
        // No savepoint per run (as on SQLite): nothing is written before the
        // lease check, a data error ends the run where it is, and any other
        // error rolls back the batch, whose runs are claimed again later.
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let out = engine::complete_batch(&mut tx, owner, now, advances).await?;
        tx.commit().await.map_err(internal)?;
        Ok(out)
    }

    async fn next_due(&self) -> Result<Option<Millis>> {
        let mut c = self.pool.acquire().await.map_err(internal)?;
        engine::next_due(&mut c).await
    }

    async fn claim_jobs(
        &self,
        claim: crate::store::queue::JobClaim,
    ) -> Result<Vec<crate::store::queue::Job>> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let jobs = super::queue::claim(&mut tx, &claim).await?;
        tx.commit().await.map_err(internal)?;
        Ok(jobs)
    }

    async fn run_sql(
        &self,
        script: Vec<crate::store::sql::Stmt>,
    ) -> Result<Vec<crate::store::sql::Done>> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let done = super::sql::script(&mut tx, &script).await?;
        tx.commit().await.map_err(internal)?;
        Ok(done)
    }

    async fn read_sql(
        &self,
        script: Vec<crate::store::sql::Stmt>,
    ) -> Result<Vec<crate::store::sql::Done>> {
        let mut c = self.pool.acquire().await.map_err(internal)?;
        super::sql::script(&mut c, &script).await
    }

    async fn list_runs(
        &self,
        ws: &WorkspaceId,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> Result<Page<RunRecord>> {
        let mut c = self.pool.acquire().await.map_err(internal)?;
        engine::page_runs(&mut c, ws, filter, page).await
    }

    async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> Result<(RunRecord, Vec<StepRecord>)> {
        let mut c = self.pool.acquire().await.map_err(internal)?;
        let run = engine::get_run(&mut c, ws, id, false).await?;
        let history = engine::history(&mut c, id).await?;
        Ok((run, history))
    }

    async fn cancel_run(&self, ws: &WorkspaceId, id: &RunId, now: Millis) -> Result<RunRecord> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let run = engine::cancel(&mut tx, ws, id, now).await?;
        tx.commit().await.map_err(internal)?;
        Ok(run)
    }

    async fn record_events(
        &self,
        ws: &WorkspaceId,
        events: Vec<EventIn>,
        now: Millis,
    ) -> Result<Vec<Result<EventRecorded>>> {
        let mut tx = self.pool.begin().await.map_err(internal)?;
        let mut out = Vec::with_capacity(events.len());
        for ev in &events {
            engine::savepoint_begin(&mut tx).await?;
            let one = engine::record_event(&mut tx, ws, ev, now).await;
            engine::savepoint_end(&mut tx, one.is_ok()).await?;
            match one {
                Err(e @ (StoreError::Internal(_) | StoreError::Busy(_))) => return Err(e),
                other => out.push(other),
            }
        }
        tx.commit().await.map_err(internal)?;
        Ok(out)
    }
}
