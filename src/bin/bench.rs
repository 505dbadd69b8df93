//! `hookflow-bench`: load benchmarks against a real release server.
//!
//! `cargo run --release --bin hookflow-bench -- upserts` builds the release
//! `hookflow` binary (through cargo, so it is never stale), starts it in a
//! temporary folder on a free loopback port with its durable SQLite default,
//! drives contact upserts over HTTP from concurrent keep-alive clients, and
//! prints throughput, latency percentiles and the server's peak RSS.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};

#[path = "bench_outbound/mod.rs"]
mod outbound;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "hookflow load benchmarks (release build, loopback only)")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Contact upserts (POST /v1/contacts) into one list with typed fields.
    Upserts(LoadArgs),
    /// Inbound calls (POST /hooks/{token}) to an active flow whose steps are
    /// add-to-list, wait 1 s, update field, goal (issue 3's benchmark flow);
    /// then waits until every run has finished.
    Inbound(LoadArgs),
    /// Many runs waiting on one timer: creates `--runs` runs through the bulk
    /// events API (each waits until a time after creation ends), then
    /// measures how fast the engine wakes and finishes them when it passes.
    Timers(TimerArgs),
    /// Webhook deliveries: queues `--deliveries` (held by disabled
    /// webhooks), enables the webhooks and times until a receiver in this
    /// process has every one.
    Deliveries(outbound::DeliveryArgs),
    /// Inbound calls to a flow whose step is send_webhook, until a receiver
    /// in this process has every message; then latency at a steady rate.
    E2e(outbound::E2eArgs),
}

#[derive(clap::Args)]
struct TimerArgs {
    /// Runs to create and wake.
    #[arg(long, default_value_t = 1_000_000)]
    runs: u64,
    /// Seconds from the start until the timer fires; creation must end
    /// before (the bench says if it did not).
    #[arg(long, default_value_t = 150)]
    create_secs: u64,
    /// Concurrent bulk requests while creating.
    #[arg(long, default_value_t = 2)]
    clients: u64,
    #[arg(long)]
    database: Option<String>,
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Requests to send after the warm-up.
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Concurrent clients (each one keep-alive connection).
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Distinct emails; requests beyond this many update existing contacts.
    #[arg(long, default_value_t = 100_000)]
    distinct: u64,
    /// Database URL for the server (default: SQLite in a temporary folder).
    #[arg(long)]
    database: Option<String>,
    /// Use this server binary instead of building target/release/hookflow.
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

struct Server {
    child: Child,
    base: String,
    key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn build_server() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the release server…");
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "hookflow"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --release failed");
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name("hookflow")
}

/// The `/metrics` token the benchmark's server is started with.
const METRICS_TOKEN: &str = "hookflow-bench-metrics";

fn start_server(bin: &PathBuf, database: Option<&str>) -> Server {
    start_server_with(bin, database, &[])
}

fn start_server_with(bin: &PathBuf, database: Option<&str>, env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(bin);
    cmd.envs(env.iter().copied());
    cmd.current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HOOKFLOW_LOG_LEVEL", "warn")
        // The store's internals are read from /metrics, which needs a token.
        .env("HOOKFLOW_METRICS_TOKEN", METRICS_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let mut child = cmd.spawn().expect("start hookflow");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut key, mut base) = (None, None);
    while base.is_none() {
        let line = lines.next().expect("server exited early").unwrap();
        if line.starts_with("hfk_") {
            key = Some(line.clone());
        }
        if let Some(addr) = line.strip_prefix("hookflow listening on ") {
            base = Some(addr.to_owned());
        }
    }
    let server = Server {
        child,
        base: base.unwrap_or_default(),
        key: key.unwrap_or_default(),
        _dir: dir,
    };
    // Dropping `server` stops the process, so a refused start leaves none.
    assert!(
        !server.key.is_empty(),
        "a fresh database prints a bootstrap key (is --database empty?)"
    );
    server
}

/// Peak resident set (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn drive(
    mode: Mode,
    requests: u64,
    clients: u64,
    distinct: u64,
    database: Option<String>,
    server_bin: Option<PathBuf>,
) {
    let bin = server_bin.map_or_else(build_server, |p| {
        std::fs::canonicalize(p).expect("--server-bin exists")
    });
    let server = start_server(&bin, database.as_deref());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients as usize)
        .build()
        .unwrap();
    let list: Value = http
        .post(format!("{}/v1/lists", server.base))
        .bearer_auth(&server.key)
        .json(&json!({"name": "bench", "fields": [
            {"name": "first_name", "type": "text"}, {"name": "age", "type": "number"},
            {"name": "plan", "type": "enum", "options": ["free", "pro"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list_id = list["id"].as_str().expect("list created").to_owned();

    let path: hyper::Uri = match mode {
        Mode::Upserts => hyper::Uri::from_static("/v1/contacts"),
        Mode::Inbound => inbound_flow(&http, &server, &list_id)
            .await
            .parse()
            .unwrap(),
        Mode::Deliver => unreachable!("drive() runs upserts and inbound; outbound.rs the rest"),
    };
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let auth = format!("Bearer {}", server.key);
    let run = |total: u64, offset: u64| {
        let (auth, list_id, path) = (auth.clone(), list_id.clone(), path.clone());
        async move {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let job = ClientJob {
                    mode,
                    path: path.clone(),
                    addr,
                    auth: auth.clone(),
                    list_id: list_id.clone(),
                    next: next.clone(),
                    total,
                    distinct,
                    offset,
                    paths: Arc::new(Vec::new()),
                    pace: None,
                    sent: None,
                    epoch: Instant::now(),
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
    };

    let warmup = (requests / 20).clamp(1_000, 10_000);
    // Inbound warm-up calls use other emails than the measured ones, so
    // every measured call starts a run (the flow does not repeat).
    let _ = run(warmup, if mode == Mode::Inbound { requests } else { 0 }).await;
    let pid = server.child.id();
    let cpu_before = cpu_seconds(pid);
    let own_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let (hist, errors) = run(requests, 0).await;
    let elapsed = started.elapsed();
    let last_call = Instant::now();
    let drained = if mode == Mode::Inbound {
        Some(runs_drained(&http, &server).await)
    } else {
        None
    };
    let cpu = cpu_seconds(pid) - cpu_before;
    let own = cpu_seconds(std::process::id()) - own_before;

    let got: Value = http
        .get(format!("{}/v1/lists/{list_id}", server.base))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let batch = metric_mean(&metrics, "hookflow_sqlite_commit_batch_size");
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "benchmark: {} over HTTP ({})",
        match mode {
            Mode::Upserts => "contact upserts",
            Mode::Inbound => "inbound calls (POST /hooks/{token})",
            Mode::Deliver => "inbound calls to a send_webhook flow",
        },
        database.as_deref().unwrap_or("SQLite, every 2xx fsynced")
    );
    println!("  clients            {clients}");
    println!("  requests           {requests} (+{warmup} warm-up), errors {errors}");
    println!(
        "  throughput         {:.0} {}/s",
        requests as f64 / elapsed.as_secs_f64(),
        if mode == Mode::Upserts {
            "upserts"
        } else {
            "accepted calls"
        }
    );
    println!("  latency p50        {:.2} ms", ms(0.50));
    println!("  latency p99        {:.2} ms", ms(0.99));
    println!("  latency max        {:.2} ms", hist.max() as f64 / 1000.0);
    if let Some(server_mean) = metric_mean_where(
        &metrics,
        "hookflow_http_request_duration_seconds",
        "route=\"/v1/contacts\"",
    ) {
        println!(
            "  server-side mean   {:.2} ms (inside hookflow, from its own histogram)",
            server_mean * 1e3
        );
        if let Some(w) = metric_mean(&metrics, "hookflow_sqlite_write_seconds") {
            println!(
                "  of which store     {:.2} ms (queue + batch + commit + fsync)",
                w * 1e3
            );
            let q = metric_mean(&metrics, "hookflow_sqlite_queue_wait_seconds").unwrap_or(0.0);
            let fw = metric_mean(&metrics, "hookflow_sqlite_fsync_wait_seconds").unwrap_or(0.0);
            println!(
                "    queue wait       {:.2} ms before the writer runs the job; fsync wait {:.2} ms (oldest batch)",
                q * 1e3,
                fw * 1e3
            );
        }
    }
    println!(
        "  server CPU         {:.1} µs/request ({:.2} cores)",
        cpu * 1e6 / requests as f64,
        cpu / elapsed.as_secs_f64()
    );
    println!(
        "  client CPU         {:.1} µs/request ({:.2} cores; the load generator shares the machine)",
        own * 1e6 / requests as f64,
        own / elapsed.as_secs_f64()
    );
    if let Some((failed, unfinished)) = drained {
        println!(
            "  runs finished      {:.2} s after the last call (every run completed; wait step 1 s); failed {failed}, unfinished {unfinished}",
            last_call.elapsed().as_secs_f64()
        );
    }
    println!("  server peak RSS    {:.1} MiB", peak_rss_mib(pid));
    if let Some(b) = batch {
        println!("  SQLite group size  {b:.1} writes/commit (mean)");
        let exec = metric_mean(&metrics, "hookflow_sqlite_batch_exec_seconds").unwrap_or(0.0);
        let commit = metric_mean(&metrics, "hookflow_sqlite_commit_seconds").unwrap_or(0.0);
        println!(
            "  SQLite cycle       {:.0} µs executing ({:.1} µs/write) + {:.0} µs COMMIT; fsync {:.0} µs, overlapped (means)",
            exec * 1e6,
            exec * 1e6 / b,
            commit * 1e6,
            metric_mean(&metrics, "hookflow_sqlite_fsync_seconds").unwrap_or(0.0) * 1e6
        );
    }
    println!(
        "  list members       {} (expected {})",
        got["member_count"],
        distinct.min(requests + warmup)
    );
    if database.is_none() {
        let size = |name: &str| {
            std::fs::metadata(server._dir.path().join(name)).map_or(0, |m| m.len()) as f64
                / 1048576.0
        };
        println!(
            "  SQLite files       {:.1} MiB database, {:.1} MiB WAL",
            size("hookflow.db"),
            size("hookflow.db-wal")
        );
    }
}

/// Whether any run is in `status` (one page of one).
async fn any_run(http: &reqwest::Client, server: &Server, status: &str) -> bool {
    let page: Value = http
        .get(format!("{}/v1/runs?status={status}&limit=1", server.base))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["data"].as_array().is_some_and(|d| !d.is_empty())
}

/// Polls until no run is active or waiting (at most 120 s); whether any
/// failed, and whether some were still unfinished at the deadline.
async fn runs_drained(http: &reqwest::Client, server: &Server) -> (bool, bool) {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let busy = any_run(http, server, "active").await || any_run(http, server, "waiting").await;
        if !busy || Instant::now() > deadline {
            return (any_run(http, server, "failed").await, busy);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The timer benchmark: see [`Bench::Timers`].
async fn timers(args: TimerArgs) {
    let bin = args.server_bin.clone().map_or_else(build_server, |p| {
        std::fs::canonicalize(p).expect("--server-bin exists")
    });
    let server = start_server(&bin, args.database.as_deref());
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        http.post(format!("{}{path}", server.base))
            .bearer_auth(&server.key)
            .json(&body)
            .send()
    };
    let start = std::time::SystemTime::now();
    let fire_at = start + std::time::Duration::from_secs(args.create_secs);
    let until = chrono::DateTime::<chrono::Utc>::from(fire_at).to_rfc3339();
    let flow: Value = post(
        "/v1/flows".into(),
        json!({"name": "timers", "trigger": {"type": "event", "name": "tick"},
               "steps": [{"id": "sleep", "type": "wait", "until": until, "next": "won"},
                         {"id": "won", "type": "goal", "name": "woke"}]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = flow["id"]
        .as_str()
        .unwrap_or_else(|| panic!("flow not created: {flow}"));
    let _ = post(format!("/v1/flows/{id}/activate"), json!({}))
        .await
        .unwrap();

    let created_started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let per_request = 10_000u64;
    let batches = args.runs.div_ceil(per_request);
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (http, base, key, next, runs) = (
            http.clone(),
            server.base.clone(),
            server.key.clone(),
            next.clone(),
            args.runs,
        );
        tasks.push(tokio::spawn(async move {
            let mut started = 0u64;
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return started;
                }
                let from = b * per_request;
                let to = (from + per_request).min(runs);
                let mut body = String::with_capacity(70 * per_request as usize);
                for i in from..to {
                    body.push_str(&format!(
                        "{{\"name\":\"tick\",\"email\":\"t{i}@bench.example.com\"}}\n"
                    ));
                }
                let got: Value = http
                    .post(format!("{base}/v1/events/bulk"))
                    .bearer_auth(&key)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(got["rejected"], 0, "bulk events refused: {got}");
                started += got["accepted"].as_u64().unwrap_or(0);
            }
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let create_secs = created_started.elapsed().as_secs_f64();
    // Every run must have reached its wait before the timer fires.
    while any_run(&http, &server, "active").await {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let waiting_at = std::time::SystemTime::now();
    let in_time = waiting_at < fire_at;
    if let Ok(left) = fire_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let pid = server.child.id();
    let cpu_before = cpu_seconds(pid);
    let woke_started = Instant::now();
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while any_run(&http, &server, "waiting").await && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let woke_secs = woke_started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    println!(
        "benchmark: {} runs waiting on one timer ({})",
        args.runs,
        args.database
            .as_deref()
            .unwrap_or("SQLite, durable default")
    );
    println!(
        "  created            {accepted} runs via /v1/events/bulk in {create_secs:.1} s ({:.0} events/s, each: contact, event, run)",
        accepted as f64 / create_secs
    );
    println!(
        "  all waiting before the timer: {}",
        if in_time {
            "yes"
        } else {
            "NO (raise --create-secs; the wake-up figure is mixed with creation)"
        }
    );
    println!(
        "  woken and finished {:.1} s → {:.0} wake-ups/s (claim, wait passes, goal, history, completion)",
        woke_secs,
        accepted as f64 / woke_secs
    );
    println!(
        "  server CPU         {:.1} µs/wake-up ({:.2} cores)",
        cpu * 1e6 / accepted as f64,
        cpu / woke_secs
    );
    println!(
        "  failed runs        {}",
        any_run(&http, &server, "failed").await
    );
    println!("  server peak RSS    {:.1} MiB", peak_rss_mib(pid));
}

/// Creates and activates issue 3's benchmark flow (add to list, wait 1 s,
/// update field, goal) on `list_id`; returns its inbound path.
async fn inbound_flow(http: &reqwest::Client, server: &Server, list_id: &str) -> String {
    let post = |path: String, body: Value| {
        http.post(format!("{}{path}", server.base))
            .bearer_auth(&server.key)
            .json(&body)
            .send()
    };
    let done: Value = post("/v1/lists".into(), json!({"name": "bench-done"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let flow: Value = post(
        "/v1/flows".into(),
        json!({
            "name": "bench",
            "trigger": {"type": "inbound", "list_id": list_id,
                        "mapping": {"customer.first_name": "first_name", "customer.age": "age"}},
            "steps": [
                {"id": "join", "type": "add_to_list", "list_id": done["id"], "next": "pause"},
                {"id": "pause", "type": "wait", "duration": "1s", "next": "upgrade"},
                {"id": "upgrade", "type": "update_field", "field": "plan", "value": "pro", "next": "won"},
                {"id": "won", "type": "goal", "name": "converted"}
            ]
        }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = flow["id"]
        .as_str()
        .unwrap_or_else(|| panic!("flow not created: {flow}"));
    let active: Value = post(format!("/v1/flows/{id}/activate"), json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    active["inbound_url"]
        .as_str()
        .expect("an inbound URL")
        .to_owned()
}

/// One load-generating client: a single keep-alive HTTP/1.1 connection
/// driven with hyper's low-level API. The client shares the machine's two
/// cores with the server, so it must cost as little as possible per request
/// (reqwest cost about 28 µs of CPU per request here; this about a third).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Upserts,
    Inbound,
    /// `{"email": "eN@bench.example.com"}` to `paths[N % len]`.
    Deliver,
}

struct ClientJob {
    mode: Mode,
    path: hyper::Uri,
    /// Mode::Deliver: the inbound paths, round-robin.
    paths: Arc<Vec<hyper::Uri>>,
    /// Request N starts no sooner than start + N / rate.
    pace: Option<(Instant, u64)>,
    /// When each request started (µs since `epoch`, + 1), by number.
    sent: Option<Arc<Vec<AtomicU64>>>,
    epoch: Instant,
    addr: std::net::SocketAddr,
    auth: String,
    list_id: String,
    next: Arc<AtomicU64>,
    total: u64,
    distinct: u64,
    /// Added to the request number to pick the email.
    offset: u64,
}

impl ClientJob {
    async fn run(self) -> (Histogram<u64>, u64) {
        use http_body_util::{BodyExt, Full};
        use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        let host = HeaderValue::from_str(&self.addr.to_string()).unwrap();
        let auth = HeaderValue::from_str(&self.auth).unwrap();
        let json = HeaderValue::from_static("application/json");
        let mut hist = Histogram::<u64>::new(3).unwrap();
        let mut errors = 0u64;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.total {
                break;
            }
            let body = match self.mode {
                Mode::Upserts => format!(
                    r#"{{"email":"user{}@bench.example.com","fields":{{"first_name":"Ada","age":"{}","plan":"pro"}},"lists":["{}"]}}"#,
                    i % self.distinct,
                    20 + i / self.distinct, // a repeated email carries a new age: every update writes
                    self.list_id,
                ),
                Mode::Inbound => format!(
                    r#"{{"email":"buyer{}@bench.example.com","customer":{{"first_name":"Ada","age":"{}"}},"order":{{"id":{i},"total":42.5}}}}"#,
                    (i + self.offset) % self.distinct,
                    20 + i / self.distinct,
                ),
                Mode::Deliver => format!(r#"{{"email":"e{}@bench.example.com"}}"#, i + self.offset),
            };
            if let Some((start, rate)) = self.pace {
                let at = start + std::time::Duration::from_micros(i * 1_000_000 / rate.max(1));
                tokio::time::sleep_until(at.into()).await;
            }
            let mut req = hyper::Request::new(Full::new(bytes::Bytes::from(body)));
            *req.method_mut() = hyper::Method::POST;
            *req.uri_mut() = if self.mode == Mode::Deliver {
                self.paths[(i % self.paths.len() as u64) as usize].clone()
            } else {
                self.path.clone()
            };
            if let Some(sent) = &self.sent
                && let Some(slot) = sent.get((i + self.offset) as usize)
            {
                slot.store(
                    self.epoch.elapsed().as_micros() as u64 + 1,
                    Ordering::Relaxed,
                );
            }
            let h = req.headers_mut();
            h.insert(HOST, host.clone());
            h.insert(AUTHORIZATION, auth.clone());
            h.insert(CONTENT_TYPE, json.clone());
            let t = Instant::now();
            let ok = match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let drained = resp.into_body().collect().await.is_ok();
                    status.is_success() && drained
                }
                Err(_) => false,
            };
            hist.record(t.elapsed().as_micros() as u64).unwrap();
            if !ok {
                errors += 1;
                if sender.ready().await.is_err() {
                    break;
                }
            }
        }
        (hist, errors)
    }
}

/// Mean of a Prometheus summary/histogram from its `_sum` and `_count`.
fn metric_mean(text: &str, name: &str) -> Option<f64> {
    metric_mean_where(text, name, "")
}

/// Like [`metric_mean`], for the series whose labels contain `labels`.
fn metric_mean_where(text: &str, name: &str, labels: &str) -> Option<f64> {
    let value = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{suffix}")) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some(value("_sum")? / value("_count")?.max(1.0))
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mode, load) = match args.bench {
        Bench::Upserts(load) => (Mode::Upserts, load),
        Bench::Inbound(load) => (Mode::Inbound, load),
        Bench::Timers(t) => return rt.block_on(timers(t)),
        Bench::Deliveries(d) => return rt.block_on(outbound::deliveries(d)),
        Bench::E2e(e) => return rt.block_on(outbound::e2e(e)),
    };
    rt.block_on(drive(
        mode,
        load.requests,
        load.clients,
        load.distinct.max(1),
        load.database,
        load.server_bin,
    ));
}
