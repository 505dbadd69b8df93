//! The leased job queue's SQL on PostgreSQL (see `store::queue`). Claims of
//! one kind take a transaction advisory lock first, so two processes never
//! both count a key's leases before either has written: per-key limits hold
//! across processes. Workers of different kinds never wait on each other.

use sqlx::PgConnection;

use super::internal;
use crate::store::Result;
use crate::store::queue::{Job, JobClaim};

pub async fn claim(c: &mut PgConnection, claim: &JobClaim) -> Result<Vec<Job>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
        .bind(format!("jobs/{}", claim.kind))
        .execute(&mut *c)
        .await
        .map_err(internal)?;
    crate::store::logic::queue::claim(&mut super::engine::PgTx::new(c), claim).await
}
