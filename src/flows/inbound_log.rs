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
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{InboundCallRecord, Store};

/// Largest part of a body kept; the rest is cut (`body_size` keeps the size).
pub const MAX_BODY: usize = 64 * 1024;
/// Bytes of bodies waiting for the writer at most (memory while the store
/// lags); records beyond it are dropped.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Records waiting at most, whatever their size.
const QUEUE: usize = 4096;
/// Records and body bytes written per store batch at most: one batch is one
/// job on SQLite's single writer, which must stay short.
const BATCH: usize = 512;
const BATCH_BYTES: usize = 1024 * 1024;
/// How long records gather before a write (the log's only delay).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

pub struct InboundLog {
    /// `None` when the log is off (`keep` 0).
    tx: Option<mpsc::Sender<InboundCallRecord>>,
    /// Body bytes queued and not yet written.
    queued_bytes: Arc<AtomicUsize>,
    /// Tells the writer to write what is queued and end (shutdown), even
    /// while connections still hold senders.
    stop: CancellationToken,
    /// Calls kept per flow.
    keep: usize,
}

impl InboundLog {
    /// Starts the writer task; [`InboundLog::stop`] it, then await it, before
    /// closing the store.
    pub fn start(store: Arc<dyn Store>, keep: usize) -> (Arc<Self>, Option<JoinHandle<()>>) {
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        if keep == 0 {
            let log = Self {
                tx: None,
                queued_bytes,
                stop,
                keep,
            };
            return (Arc::new(log), None);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(
            store,
            rx,
            keep,
            queued_bytes.clone(),
            stop.clone(),
        ));
        let log = Self {
            tx: Some(tx),
            queued_bytes,
            stop,
            keep,
        };
        (Arc::new(log), Some(task))
    }

    /// How many calls a flow's log keeps (what a listing may return).
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Queues a call; never waits. Dropped (and counted) when the queue is
    /// full by count or by bytes.
    pub fn record(&self, call: InboundCallRecord) {
        let Some(tx) = &self.tx else { return };
        let bytes = body_len(&call);
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > QUEUE_BYTES || tx.try_send(call).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            metrics::counter!("hookflow_inbound_log_dropped_total").increment(1);
        }
    }

    /// Asks the writer to write what is queued now and end.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A body as the log keeps it: cut at [`MAX_BODY`], with its whole size.
pub fn kept_body(bytes: &bytes::Bytes) -> (bytes::Bytes, i64) {
    let kept = if bytes.len() <= MAX_BODY {
        bytes.clone() // shared, not copied: the common case
    } else {
        // Copied, so the log does not keep the whole large body alive.
        bytes::Bytes::copy_from_slice(&bytes[..MAX_BODY])
    };
    (kept, bytes.len() as i64)
}

fn body_len(c: &InboundCallRecord) -> usize {
    c.body.as_ref().map_or(0, bytes::Bytes::len)
}

/// Takes every queued record without waiting; false once the channel is
/// closed and empty.
fn drain(rx: &mut mpsc::Receiver<InboundCallRecord>, batch: &mut Vec<InboundCallRecord>) -> bool {
    loop {
        match rx.try_recv() {
            Ok(call) => batch.push(call),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// The newest `keep` records of each flow, in arrival order: older ones
/// would be trimmed by the same write, so they are not written at all.
fn newest_per_flow(batch: Vec<InboundCallRecord>, keep: usize) -> Vec<InboundCallRecord> {
    let mut left: std::collections::HashMap<crate::domain::FlowId, usize> =
        std::collections::HashMap::new();
    let mut kept: Vec<InboundCallRecord> = batch
        .into_iter()
        .rev()
        .filter(|c| {
            let n = left.entry(c.flow_id.clone()).or_insert(keep);
            (*n > 0).then(|| *n -= 1).is_some()
        })
        .collect();
    kept.reverse();
    kept
}

/// Writes what has queued every [`FLUSH_EVERY`]: under load the store sees
/// at most a flow's `keep` newest calls per write, whatever the call rate
/// (at 10,000 calls/s, one write of 100 rows per flow instead of 1,000).
async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<InboundCallRecord>,
    keep: usize,
    queued_bytes: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut stopping = false;
    loop {
        let mut batch = Vec::new();
        if !stopping {
            tokio::select! {
                first = rx.recv() => match first {
                    Some(call) => batch.push(call),
                    None => return,
                },
                () = stop.cancelled() => stopping = true,
            }
        }
        if !stopping {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => {}
                () = stop.cancelled() => stopping = true,
            }
        }
        let open = drain(&mut rx, &mut batch);
        if batch.is_empty() {
            if stopping || !open {
                return;
            }
            continue;
        }
        let drained: usize = batch.iter().map(body_len).sum();
        let mut calls = newest_per_flow(batch, keep).into_iter().peekable();
        while calls.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some(c) = calls.next_if(|_| chunk.len() < BATCH && bytes < BATCH_BYTES) {
                bytes += body_len(&c);
                chunk.push(c);
            }
            let n = chunk.len();
            if let Err(e) = store.record_inbound_calls(chunk, keep).await {
                tracing::warn!(error = %e, calls = n, "could not write the inbound-call log");
            }
        }
        queued_bytes.fetch_sub(drained, Ordering::Relaxed);
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FlowId, WorkspaceId};

    fn call(flow: &str, n: i64) -> InboundCallRecord {
        InboundCallRecord {
            workspace_id: WorkspaceId::from_trusted("ws_1".into()),
            flow_id: FlowId::from_trusted(flow.into()),
            received_at: n,
            status: 202,
            code: "run_started".into(),
            message: None,
            run_id: None,
            contact_id: None,
            caller_ip: None,
            body: None,
            body_size: 0,
        }
    }

    #[test]
    fn only_each_flows_newest_calls_are_written_in_order() {
        let batch: Vec<_> = (0..5)
            .map(|n| call("fl_a", n))
            .chain([call("fl_b", 10)])
            .chain((5..7).map(|n| call("fl_a", n)))
            .collect();
        let kept: Vec<(String, i64)> = newest_per_flow(batch, 3)
            .into_iter()
            .map(|c| (c.flow_id.as_str().to_owned(), c.received_at))
            .collect();
        assert_eq!(
            kept,
            [
                ("fl_a".into(), 4),
                ("fl_b".into(), 10),
                ("fl_a".into(), 5),
                ("fl_a".into(), 6)
            ]
        );
    }
}
