//! A small cache of API keys by hash, shared by both stores.
//!
//! Why: every request authenticates, and a database read per request (a
//! thread hop on SQLite, a round trip on PostgreSQL) cost more than the rest
//! of a contact upsert. Only known keys are cached (random keys sent by a
//! scanner are never stored), entries expire after `ttl`, and a revocation
//! through this store evicts the entry at once. A key revoked by another
//! process (the CLI, another server) stops working within `ttl`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ApiKeyRecord;
use crate::domain::ApiKeyId;

/// Upper bound on cached keys; the cache is cleared when it is reached.
const MAX_ENTRIES: usize = 10_000;

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (ApiKeyRecord, Instant)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
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

    pub fn put(&self, rec: &ApiKeyRecord) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(rec.hash.clone(), (rec.clone(), Instant::now()));
        }
    }

    pub fn evict(&self, id: &ApiKeyId) {
        if let Ok(mut map) = self.entries.lock() {
            map.retain(|_, (rec, _)| &rec.id != id);
        }
    }
}
