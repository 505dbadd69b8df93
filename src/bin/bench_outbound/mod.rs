//! `deliveries` and `e2e`: outbound webhooks under load (issue 10). The
//! receiver runs in this process (hyper, HTTP/1.1 keep-alive, 200 at once)
//! on 127.0.0.1, which the server is told to allow.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::{ClientJob, Mode, Server, cpu_seconds, peak_rss_mib, start_server_with};

#[derive(clap::Args)]
pub struct DeliveryArgs {
    /// Deliveries to queue, spread over `--endpoints` webhooks.
    #[arg(long, default_value_t = 100_000)]
    pub deliveries: u64,
    #[arg(long, default_value_t = 4)]
    pub endpoints: u64,
    /// Concurrent clients queueing them (inbound calls).
    #[arg(long, default_value_t = 64)]
    pub clients: u64,
    #[arg(long)]
    pub database: Option<String>,
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Each webhook's max_concurrency (requests in progress at once to it).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
}

#[derive(clap::Args)]
pub struct E2eArgs {
    /// Inbound calls for the throughput phase.
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    #[arg(long, default_value_t = 64)]
    pub clients: u64,
    /// Calls per second in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long)]
    pub database: Option<String>,
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Each webhook's max_concurrency (requests in progress at once to it).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
}

/// What the receiver saw: a count, and per message number (parsed from the
/// contact's email `NUMBER@bench.example.com`) when it arrived.
struct Received {
    count: AtomicU64,
    epoch: Instant,
    /// Microseconds since `epoch` + 1 (0: not arrived).
    arrived: Vec<AtomicU64>,
}

async fn receiver(slots: usize) -> (String, Arc<Received>) {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    let seen = Arc::new(Received {
        count: AtomicU64::new(0),
        epoch: Instant::now(),
        arrived: (0..slots).map(|_| AtomicU64::new(0)).collect(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if let Some(n) = message_number(&body)
                            && let Some(slot) = s.arrived.get(n)
                        {
                            let at = s.epoch.elapsed().as_micros() as u64 + 1;
                            let _ =
                                slot.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
                        }
                        s.count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// `…"email":"e123@bench.example.com"…` → 123.
fn message_number(body: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(body).ok()?;
    let end = text.find("@bench.example.com")?;
    let start = text[..end].rfind(|c: char| !c.is_ascii_digit())? + 1;
    text[start..end].parse().ok()
}

const OUTBOUND_ENV: &[(&str, &str)] = &[
    ("HOOKFLOW_OUTBOUND_ALLOW", "127.0.0.1/32"),
    ("HOOKFLOW_OUTBOUND_VERIFICATION", "false"),
];

fn bin(server_bin: Option<PathBuf>) -> PathBuf {
    server_bin.map_or_else(super::build_server, |p| {
        std::fs::canonicalize(p).expect("--server-bin exists")
    })
}

async fn call(
    http: &reqwest::Client,
    server: &Server,
    method: &str,
    path: &str,
    body: Value,
) -> Value {
    let req = match method {
        "POST" => http.post(format!("{}{path}", server.base)).json(&body),
        _ => http.get(format!("{}{path}", server.base)),
    };
    let resp = req.bearer_auth(&server.key).send().await.unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

/// A list, and per URL a webhook and an active inbound flow sending to it:
/// (webhook ids, inbound paths).
async fn setup(
    http: &reqwest::Client,
    server: &Server,
    urls: &[String],
    concurrency: u16,
) -> (Vec<String>, Vec<hyper::Uri>) {
    let list = call(http, server, "POST", "/v1/lists", json!({"name": "bench"})).await;
    let (mut hooks, mut paths) = (Vec::new(), Vec::new());
    for (i, url) in urls.iter().enumerate() {
        let w = call(
            http,
            server,
            "POST",
            "/v1/webhooks",
            json!({"name": format!("Bench{i}"), "url": url, "max_concurrency": concurrency}),
        )
        .await;
        let id = w["id"].as_str().unwrap().to_owned();
        let f = call(
            http,
            server,
            "POST",
            "/v1/flows",
            json!({
                "name": format!("bench{i}"),
                "trigger": {"type": "inbound", "list_id": list["id"]},
                "steps": [{"id": "notify", "type": "send_webhook", "webhook_id": id}]
            }),
        )
        .await;
        let active = call(
            http,
            server,
            "POST",
            &format!("/v1/flows/{}/activate", f["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
        paths.push(active["inbound_url"].as_str().unwrap().parse().unwrap());
        hooks.push(id);
    }
    (hooks, paths)
}

/// How a load is timed: `pace` spaces requests at a rate (from a start);
/// `sent` records when each started, in µs since `epoch`.
#[derive(Clone)]
struct Timing {
    pace: Option<(Instant, u64)>,
    sent: Option<Arc<Vec<AtomicU64>>>,
    epoch: Instant,
}

impl Timing {
    fn none(epoch: Instant) -> Self {
        Self {
            pace: None,
            sent: None,
            epoch,
        }
    }
}

/// Sends `total` inbound calls from `clients` connections, round-robin over
/// `paths`, numbering emails from `offset`.
async fn load(
    server: &Server,
    paths: &[hyper::Uri],
    total: u64,
    clients: u64,
    offset: u64,
    timing: Timing,
) -> (Histogram<u64>, u64) {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let paths = Arc::new(paths.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let job = ClientJob {
            mode: Mode::Deliver,
            path: paths[0].clone(),
            paths: paths.clone(),
            addr,
            auth: format!("Bearer {}", server.key),
            list_id: String::new(),
            next: next.clone(),
            total,
            distinct: u64::MAX,
            offset,
            pace: timing.pace,
            sent: timing.sent.clone(),
            epoch: timing.epoch,
        };
        tasks.push(tokio::spawn(job.run()));
    }
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        hist.add(h).unwrap();
        errors += e;
    }
    (hist, errors)
}

async fn wait_count(seen: &Received, n: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while seen.count.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

pub async fn deliveries(args: DeliveryArgs) {
    let server = start_server_with(
        &bin(args.server_bin),
        args.database.as_deref(),
        OUTBOUND_ENV,
    );
    let http = reqwest::Client::new();
    let n = args.deliveries;
    let (base, seen) = receiver(n as usize + 1).await;
    let urls: Vec<String> = (0..args.endpoints)
        .map(|i| format!("{base}/e{i}"))
        .collect();
    let (hooks, paths) = setup(&http, &server, &urls, args.concurrency).await;
    // Queue with every webhook disabled: the deliveries are written and
    // held; enabling them releases all at once, which is what is timed.
    for h in &hooks {
        call(
            &http,
            &server,
            "POST",
            &format!("/v1/webhooks/{h}/disable"),
            json!({}),
        )
        .await;
    }
    let queued = Instant::now();
    let (_, errors) = load(
        &server,
        &paths,
        n,
        args.clients,
        0,
        Timing::none(seen.epoch),
    )
    .await;
    assert_eq!(errors, 0, "inbound calls failed while queueing");
    let queue_secs = queued.elapsed().as_secs_f64();
    // Held: every delivery `disabled`, none pending.
    loop {
        let pending = call(
            &http,
            &server,
            "GET",
            "/v1/deliveries?status=pending&limit=1",
            Value::Null,
        )
        .await;
        // (whether any failed, whether some are unfinished)
        let (_, busy) = super::runs_drained(&http, &server).await;
        if !busy && pending["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = server.child.id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    for h in &hooks {
        call(
            &http,
            &server,
            "POST",
            &format!("/v1/webhooks/{h}/enable"),
            json!({}),
        )
        .await;
    }
    let all = wait_count(&seen, n, Duration::from_secs(600)).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    println!(
        "benchmark: webhook deliveries ({})",
        args.database
            .as_deref()
            .unwrap_or("SQLite, every write fsynced")
    );
    println!(
        "  deliveries         {n} over {} endpoints (queued in {queue_secs:.1} s)",
        args.endpoints
    );
    println!(
        "  arrived            {}{}",
        seen.count.load(Ordering::Relaxed),
        if all { "" } else { " (gave up after 600 s)" }
    );
    println!("  throughput         {:.0} deliveries/s", n as f64 / secs);
    println!(
        "  server CPU         {:.0} µs per delivery",
        cpu * 1e6 / n as f64
    );
    println!("  server peak RSS    {:.0} MiB", peak_rss_mib(pid));
}

pub async fn e2e(args: E2eArgs) {
    let server = start_server_with(
        &bin(args.server_bin),
        args.database.as_deref(),
        OUTBOUND_ENV,
    );
    let http = reqwest::Client::new();
    let steady = args.rate * args.seconds;
    let slots = (args.requests + steady) as usize + 1;
    let (base, seen) = receiver(slots).await;
    let (_, paths) = setup(&http, &server, &[format!("{base}/in")], args.concurrency).await;
    // Throughput: from the first call until the receiver has every message.
    let pid = server.child.id();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let (_, errors) = load(
        &server,
        &paths,
        args.requests,
        args.clients,
        0,
        Timing::none(seen.epoch),
    )
    .await;
    let calls_secs = started.elapsed().as_secs_f64();
    let all = wait_count(&seen, args.requests, Duration::from_secs(600)).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    // Latency: a steady rate; each message from its call's start to its arrival.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..slots).map(|_| AtomicU64::new(0)).collect());
    let t0 = Instant::now();
    let (_, steady_errors) = load(
        &server,
        &paths,
        steady,
        args.clients,
        args.requests,
        Timing {
            pace: Some((t0, args.rate)),
            sent: Some(sent.clone()),
            epoch: seen.epoch,
        },
    )
    .await;
    wait_count(&seen, args.requests + steady, Duration::from_secs(120)).await;
    let mut lat = Histogram::<u64>::new(3).unwrap();
    let mut missing = 0;
    for i in args.requests..args.requests + steady {
        let (s, a) = (
            sent[i as usize].load(Ordering::Relaxed),
            seen.arrived[i as usize].load(Ordering::Relaxed),
        );
        if s == 0 || a == 0 {
            missing += 1;
        } else {
            lat.record(a.saturating_sub(s)).unwrap();
        }
    }
    let ms = |q: f64| lat.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "benchmark: inbound call → send_webhook → receiver ({})",
        args.database
            .as_deref()
            .unwrap_or("SQLite, every write fsynced")
    );
    println!(
        "  calls              {} at {} clients, errors {errors}",
        args.requests, args.clients
    );
    println!("  calls accepted in  {calls_secs:.2} s");
    println!(
        "  end to end         {:.0} messages/s ({}{})",
        args.requests as f64 / secs,
        seen.count.load(Ordering::Relaxed).min(args.requests),
        if all {
            " arrived"
        } else {
            " arrived; gave up after 600 s"
        }
    );
    println!(
        "  server CPU         {:.0} µs per message",
        cpu * 1e6 / args.requests as f64
    );
    println!(
        "  at {}/s for {} s   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (errors {steady_errors}, missing {missing})",
        args.rate,
        args.seconds,
        ms(0.5),
        ms(0.99),
        lat.max() as f64 / 1000.0
    );
    println!("  server peak RSS    {:.0} MiB", peak_rss_mib(pid));
}
