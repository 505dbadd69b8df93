//! A small cache of API keys by hash, shared by both stores.
//!
//! Why: every request authenticates, and a database read per request (a
//! thread hop on SQLite, a round trip on PostgreSQL) cost more than the rest
//! of a contact upsert. Only known keys are cached (random keys sent by a
//! scanner are never stored), entries expire after `ttl`, and a revocation
//! through this store evicts the entry at once. A key revoked by another
//! process (the CLI, another server) stops working within `ttl`
//! ([`super::KEY_CACHE_TTL`], 100 ms), which `hookflow keys revoke` waits out
//! before it returns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ApiKeyRecord;
use crate::domain::ApiKeyId;

/// Upper bound on cached keys; the cache is cleared when it is reached.
const MAX_ENTRIES: usize = 10_000;

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (ApiKeyRecord, Instant)>>,
    /// Bumped by every eviction. A lookup that started before a revocation
    /// must not put the key it read (still unrevoked) back into the cache.
    evictions: AtomicU64,
}

/// Taken before reading a key from the database; see [`KeyCache::put`].
/// Carries the time the read started: an entry is as old as its read, so a
/// read that began before another process's revocation and ended late is
/// not kept for a whole TTL after it.
pub struct Ticket(u64, Instant);

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn get(&self, hash: &[u8]) -> Option<ApiKeyRecord> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.entries.lock().ok()?;
        let (rec, at) = map.get(hash)?;
        (at.elapsed() < self.ttl).then(|| rec.clone())
    }

    /// Call before reading the key from the database.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.evictions.load(Ordering::SeqCst), Instant::now())
    }

    /// Caches `rec`, unless an eviction happened since `ticket` was taken
    /// (the record read may predate a revocation).
    pub fn put(&self, ticket: Ticket, rec: &ApiKeyRecord) {
        if self.ttl.is_zero() || rec.revoked_at.is_some() {
            return;
        }
        if let Ok(mut map) = self.entries.lock() {
            if self.evictions.load(Ordering::SeqCst) != ticket.0 {
                return;
            }
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(rec.hash.clone(), (rec.clone(), ticket.1));
        }
    }

    pub fn evict(&self, id: &ApiKeyId) {
        if let Ok(mut map) = self.entries.lock() {
            self.evictions.fetch_add(1, Ordering::SeqCst);
            map.retain(|_, (rec, _)| &rec.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Scope, WorkspaceId};

    fn rec() -> ApiKeyRecord {
        ApiKeyRecord {
            id: ApiKeyId::generate(),
            workspace_id: WorkspaceId::generate(),
            workspace_name: "w".into(),
            name: None,
            scope: Scope::Admin,
            prefix: "hfk_abc".into(),
            hash: vec![1, 2, 3],
            created_at: 0,
            revoked_at: None,
        }
    }

    #[test]
    fn a_lookup_racing_a_revocation_does_not_resurrect_the_key() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let r = rec();
        let ticket = cache.ticket(); // a request starts reading the key…
        cache.evict(&r.id); // …the key is revoked meanwhile…
        cache.put(ticket, &r); // …and the stale read must not be cached.
        assert!(cache.get(&r.hash).is_none());
        let fresh = cache.ticket();
        cache.put(fresh, &r);
        assert!(cache.get(&r.hash).is_some());
    }
}
