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

    async fn logic_write(&self, op: logic::Op) -> Result<logic::OpDone> {
        // Upserts and entries go to the batching writer (several callers'
        // in one transaction); the rest take a transaction each.
        let (ws, write) = match op {
            logic::Op::Upsert(ws, input) => (ws, Write::Upsert(input)),
            logic::Op::Enter(ws, req) => (ws, Write::Enter(req)),
            op => {
                let mut tx = self.pool.begin().await.map_err(internal)?;
                let done =
                    logic::perform(&mut engine::PgTx::new(&mut tx), &op, now_millis()).await?;
                tx.commit().await.map_err(internal)?;
                return Ok(done);
            }
        };
        Ok(match self.batcher.write(&ws, write).await? {
            Written::Upserted(out) => logic::OpDone::Upserted(out),
            Written::Entered(out) => logic::OpDone::Entered(out),
        })
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
}
