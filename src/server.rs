//! Runs the application on a bound listener until a shutdown signal.
//!
//! Shutdown protocol: when `shutdown` resolves, the server stops accepting
//! connections and lets in-flight requests finish, for at most `grace`;
//! requests still running then are dropped (their transactions were either
//! committed, and answered, or will be rolled back: never half-written).
//! Finally the store is closed, which lets SQLite's writer commit what is
//! queued and checkpoint.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::store::Store;

pub async fn serve(
    store: Arc<dyn Store>,
    listener: TcpListener,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = crate::api::app(store.clone(), max_body_bytes);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stopping_tx.send(());
    });
    let mut handle = tokio::spawn(async move { server.await });
    let early = tokio::select! {
        res = &mut handle => Some(res),
        _ = stopping_rx => None,
    };
    let result = match early {
        Some(res) => res.map_err(std::io::Error::other)?,
        None => match tokio::time::timeout(grace, &mut handle).await {
            Ok(res) => res.map_err(std::io::Error::other)?,
            Err(_) => {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "in-flight requests did not finish in time; dropping them"
                );
                handle.abort();
                Ok(())
            }
        },
    };
    store.close().await;
    tracing::info!("stopped");
    result
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
