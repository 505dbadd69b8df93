//! Runs the application on a bound listener until a shutdown signal.
//!
//! Connections are accepted by our own loop over hyper (`accept_until`):
//! header and idle timeouts, a connection cap, accept back-off.
//!
//! Shutdown protocol: every part stops on a `CancellationToken` (one
//! primitive for the server, the engine and every later worker). When
//! `shutdown` is cancelled, the server stops accepting
//! connections and lets in-flight requests finish, for at most `grace`;
//! requests still running then are dropped (their transactions were either
//! committed, and answered, or will be rolled back: never half-written).
//! Then the flow engine stops after its current batch, and the inbound-call
//! log writes what it has queued. Finally the store is closed, which lets SQLite's writer commit what is
//! queued and checkpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::flows::Engine;
use crate::store::Store;

pub async fn serve(
    store: Arc<dyn Store>,
    listener: TcpListener,
    options: crate::api::ApiOptions,
    shutdown: CancellationToken,
    grace: Duration,
    engine: Arc<Engine>,
) -> std::io::Result<()> {
    let (inbound_log, log_task) =
        crate::flows::inbound_log::InboundLog::start(store.clone(), options.inbound_log_per_flow);
    let outbound = crate::outbound::delivery::Outbound::new(options.outbound.clone())
        .map_err(std::io::Error::other)?;
    let app = crate::api::app(
        store.clone(),
        &options,
        engine.clone(),
        inbound_log.clone(),
        outbound.clone(),
    );
    // One primitive for every stop: a cancellation token. Each part gets
    // its own, cancelled in order: connections, then the engine, then the log.
    let engine_stop = CancellationToken::new();
    let engine_task = tokio::spawn(engine.clone().run(engine_stop.clone()));
    let outbound_stop = CancellationToken::new();
    let outbound_task = tokio::spawn(crate::outbound::delivery::run(
        store.clone(),
        engine.clock(),
        outbound,
        engine.deliveries_wake(),
        engine.wake_handle(),
        outbound_stop.clone(),
    ));
    let (connections, mut tasks) =
        accept_until(listener, app, &options, shutdown.cancelled_owned()).await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    // Idle keep-alive connections close at once; busy ones after their
    // response, for at most `grace`; then the rest are dropped, before the
    // engine stops and the store closes.
    if tokio::time::timeout(grace, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests did not finish in time; dropping them"
        );
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    // The engine finishes its batch (its transactions commit or roll back
    // whole; a claim left behind expires) before the store closes.
    engine_stop.cancel();
    let _ = engine_task.await;
    // Deliveries in flight finish (their attempts are recorded) or, past
    // the grace period, are left to their leases.
    outbound_stop.cancel();
    if tokio::time::timeout(grace, outbound_task).await.is_err() {
        tracing::warn!("deliveries in flight did not finish in time; their leases will expire");
    }
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
    Ok(())
}

/// Accepts connections until `shutdown`, serving each with hyper's HTTP/1
/// and these defences (none of which axum's own `serve` offers):
/// - a header timer (`http_header_timeout_secs`): hyper starts it whenever a
///   connection waits for a request, the first or the next on a keep-alive
///   connection, so a connection that sends nothing, or its headers too
///   slowly, is closed (bodies have their own timer, in `api::extract`);
/// - a write timer (`http_body_timeout_secs`): a connection whose client
///   stops reading its answers is closed once a write stalls that long;
/// - at most `http_max_connections` at once: at the limit, accepting waits
///   for a connection to close (logged, at most every 10 s), so descriptors
///   are never exhausted by connections alone;
/// - accept errors (`EMFILE`, …) back off from 5 ms to 1 s instead of
///   spinning, while existing connections go on being served.
///
/// Returns the connections still open, for a graceful shutdown, and their
/// tasks, to drop those still running after it.
async fn accept_until(
    listener: TcpListener,
    app: Router,
    options: &crate::api::ApiOptions,
    shutdown: impl Future<Output = ()>,
) -> (GracefulShutdown, tokio::task::JoinSet<()>) {
    let connections = GracefulShutdown::new();
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut warned: Option<Instant> = None;
    loop {
        while tasks.try_join_next().is_some() {} // reap finished connections
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        max = options.max_connections,
                        "connection limit reached (`http_max_connections`): new connections wait until one closes"
                    );
                    warned = Some(Instant::now());
                }
                tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    () = &mut shutdown => return (connections, tasks),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accepting a connection failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => return (connections, tasks),
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => return (connections, tasks),
        };
        let _ = stream.set_nodelay(true);
        // A client that stops reading its answers would otherwise hold the
        // connection (and a slot under the cap) forever: a write that makes
        // no progress for the body timer's span ends the connection.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(options.body_timeout));
        let io = TokioIo::new(Box::pin(stream));
        let conn = http.serve_connection(io, service(app.clone(), peer));
        let watched = connections.watch(conn);
        tasks.spawn(async move {
            let _ = watched.await;
            drop(permit);
        });
    }
}

/// Raises this process's soft open-file limit to its hard limit, as most
/// servers do (a soft limit of 256 or 1024 is a denial of service waiting
/// for idle connections); logs what it did. Call once, at start.
pub fn raise_open_file_limit() {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) if soft < hard => match rlimit::increase_nofile_limit(hard) {
            Ok(now) => tracing::info!(from = soft, to = now, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

/// `http_max_connections` when it is 0: the open-file soft limit less 128
/// (the database, its WAL, logs) and less the sockets of deliveries in
/// progress (`outbound`, but at most a quarter of the limit: on a host whose
/// limit stays at 1,024, reserving all 1,024 would leave 16 connections),
/// at least 16, at most 65,536.
pub fn automatic_max_connections(outbound: usize) -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    connections_for(soft, outbound)
}

fn connections_for(soft: u64, outbound: usize) -> usize {
    let outbound = u64::try_from(outbound).unwrap_or(u64::MAX).min(soft / 4);
    usize::try_from(soft.saturating_sub(128).saturating_sub(outbound))
        .unwrap_or(usize::MAX)
        .clamp(16, 65_536)
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The router as a hyper service for one connection; handlers find the
/// peer's address as axum's `ConnectInfo` (inbound `allowed_ips`).
fn service(
    app: Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(axum::body::Body::new))
    })
}

/// A token cancelled on SIGINT or SIGTERM. The handlers are registered when
/// this function is called: a signal that arrives between "listening" being
/// printed and the server's first poll must still mean "shut down
/// gracefully", not the default "die". Call it inside the runtime, before
/// announcing the address.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let signalled = shutdown_signal();
    let cancel = token.clone();
    tokio::spawn(async move {
        signalled.await;
        cancel.cancel();
    });
    token
}

fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
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

#[cfg(test)]
mod connection_cap_tests {
    #[test]
    fn outbound_sockets_take_at_most_a_quarter_of_the_file_limit() {
        use super::connections_for;
        assert_eq!(connections_for(1_048_576, 1024), 65_536);
        assert_eq!(connections_for(8192, 1024), 8192 - 128 - 1024);
        assert_eq!(connections_for(1024, 1024), 1024 - 128 - 256);
        assert_eq!(connections_for(256, 1024), 256 - 128 - 64);
        assert_eq!(connections_for(100, 0), 16);
    }
}
