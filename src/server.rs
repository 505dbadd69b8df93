//! Runs the application on a bound listener until a shutdown signal.
//!
//! Shutdown protocol: when `shutdown` resolves, the server stops accepting
//! connections and lets in-flight requests finish, for at most `grace`;
//! requests still running then are dropped (their transactions were either
//! committed, and answered, or will be rolled back: never half-written).
//! Then the flow engine stops after its current batch, and the inbound-call
//! log writes what it has queued. Finally the store is closed, which lets SQLite's writer commit what is
//! queued and checkpoint.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::flows::Engine;
use crate::store::Store;

pub async fn serve(
    store: Arc<dyn Store>,
    listener: TcpListener,
    options: crate::api::ApiOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    engine: Arc<Engine>,
) -> std::io::Result<()> {
    let (inbound_log, log_task) =
        crate::flows::inbound_log::InboundLog::start(store.clone(), options.inbound_log_per_flow);
    let app = crate::api::app(store.clone(), &options, engine.clone(), inbound_log.clone());
    let engine_stop = Arc::new(tokio::sync::Notify::new());
    let engine_task = tokio::spawn(engine.run(engine_stop.clone()));
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    // The peer address reaches handlers (inbound URLs' `allowed_ips`).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
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
    // The engine finishes its batch (its transactions commit or roll back
    // whole; a claim left behind expires) before the store closes.
    engine_stop.notify_one();
    let _ = engine_task.await;
    // The log writes what is queued and ends (connections dropped after the
    // grace period may still hold its sender: it is told, not waited for).
    inbound_log.stop();
    if let Some(mut task) = log_task
        && tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
    {
        task.abort();
        tracing::warn!("the inbound-call log did not finish writing in 5 s; its queue is lost");
    }
    store.close().await;
    tracing::info!("stopped");
    result
}

/// Resolves on SIGINT or SIGTERM. The handlers are registered when this
/// function is called, not when the future is first polled: a signal that
/// arrives between "listening" being printed and the server's first poll
/// must still mean "shut down gracefully", not the default "die". Call it
/// inside the runtime, before announcing the address.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
