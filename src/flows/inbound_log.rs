//! The inbound-call log: the most recent calls to each flow's inbound URL,
//! accepted or refused, with the body as received and the answer given (as
//! n8n's test URL shows a captured payload), for someone wiring a shop to a
//! URL to see what arrives and why it was refused.
//!
//! Off the request's path: a handler hands its record to a bounded channel
//! and answers; one task writes what has queued as one store batch (one
//! group-commit job on SQLite, one `UNNEST` insert on PostgreSQL) and trims
//! each flow's log to `keep` calls. The log is a diagnostic, not accepted
//! work: when the channel is full (the store is far behind) records are
//! dropped and counted (`hookflow_inbound_log_dropped_total`), never waited
//! for; a crash loses what was queued. It must not store a header: API keys
//! and signatures travel there.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::store::{InboundCallRecord, Store};

/// Largest part of a body kept; the rest is cut (`body_size` keeps the size).
pub const MAX_BODY: usize = 64 * 1024;
/// Records waiting for the writer at most.
const QUEUE: usize = 4096;
/// Records written per store batch at most.
const BATCH: usize = 512;

pub struct InboundLog {
    /// `None` when the log is off (`keep` 0).
    tx: Option<mpsc::Sender<InboundCallRecord>>,
    /// Calls kept per flow.
    keep: usize,
}

impl InboundLog {
    /// Starts the writer task, which ends once every `InboundLog` handle is
    /// dropped and the queue is written; await it before closing the store.
    pub fn start(store: Arc<dyn Store>, keep: usize) -> (Arc<Self>, Option<JoinHandle<()>>) {
        if keep == 0 {
            return (Arc::new(Self { tx: None, keep }), None);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(store, rx, keep));
        (Arc::new(Self { tx: Some(tx), keep }), Some(task))
    }

    /// How many calls a flow's log keeps (what a listing may return).
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Queues a call; never waits.
    pub fn record(&self, call: InboundCallRecord) {
        if let Some(tx) = &self.tx
            && tx.try_send(call).is_err()
        {
            metrics::counter!("hookflow_inbound_log_dropped_total").increment(1);
        }
    }
}

/// A body as the log keeps it: cut at [`MAX_BODY`], with its whole size.
pub fn kept_body(bytes: &[u8]) -> (Vec<u8>, i64) {
    (
        bytes[..bytes.len().min(MAX_BODY)].to_vec(),
        bytes.len() as i64,
    )
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<InboundCallRecord>,
    keep: usize,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let n = batch.len();
        if let Err(e) = store
            .record_inbound_calls(std::mem::take(&mut batch), keep)
            .await
        {
            tracing::warn!(error = %e, calls = n, "could not write the inbound-call log");
        }
    }
}
