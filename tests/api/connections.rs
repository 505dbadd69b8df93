//! Connections cannot be held open for free (issue: hardening, item 1):
//! silent and slow clients are closed by the header timer, slow bodies get
//! 408, connections beyond the cap wait without starving normal requests,
//! and a low descriptor limit is raised at start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hookflow::api::ApiOptions;

use crate::helpers::{Backend, TestApp, spawn_app_with};

fn options(header: u64, body: u64, max_connections: usize) -> ApiOptions {
    ApiOptions {
        header_timeout: Duration::from_millis(header),
        body_timeout: Duration::from_millis(body),
        max_connections,
        ..ApiOptions::default()
    }
}

fn connect(app: &TestApp) -> TcpStream {
    let s = TcpStream::connect(app.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection; what it sent and when.
fn read_until_closed(mut s: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_by_the_header_timer() {
    let app = spawn_app_with(Backend::Sqlite, options(500, 30_000, 1000))
        .await
        .unwrap();
    let silent = connect(&app);
    let mut slow = connect(&app);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap(); // never finished
    let mut idle = connect(&app);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap(); // then nothing more
    let results = tokio::task::spawn_blocking(move || [silent, slow, idle].map(read_until_closed))
        .await
        .unwrap();
    for (what, (_, took)) in ["silent", "slow headers", "idle keep-alive"]
        .iter()
        .zip(&results)
    {
        assert!(
            *took < Duration::from_secs(3),
            "{what} connection open for {took:?}"
        );
    }
    assert!(
        results[2].0.starts_with("HTTP/1.1 200"),
        "the idle one was answered first: {}",
        results[2].0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_gets_408() {
    let app = spawn_app_with(Backend::Sqlite, options(10_000, 500, 1000))
        .await
        .unwrap();
    let mut s = connect(&app);
    let head = format!(
        "POST /v1/contacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"email\":",
        app.admin_key
    );
    s.write_all(head.as_bytes()).unwrap();
    let (answer, took) = tokio::task::spawn_blocking(move || read_until_closed(s))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    assert!(
        answer.contains("the body did not arrive within 0.5 s; the `http_body_timeout_secs` setting changes this"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_do_not_starve_a_normal_request() {
    let app = spawn_app_with(Backend::Sqlite, options(300, 30_000, 8))
        .await
        .unwrap();
    // Twice the cap in connections that send nothing (the kernel completes
    // the handshakes; the server accepts 8 and the rest wait).
    let idle: Vec<TcpStream> = (0..16).map(|_| connect(&app)).collect();
    let started = Instant::now();
    let (status, body) = app.get(&app.admin_key, "/v1/lists").await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    // It waited for the cap (the idle connections ahead of it had to time
    // out: without a cap it would be answered at once), and not for long
    // (without the header timer it would wait forever).
    assert!(
        took >= Duration::from_millis(250),
        "not held by the cap: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "a normal request waited {took:?}"
    );
    drop(idle);
    app.stop().await;
}

/// The binary under a low descriptor limit: the soft limit is raised to the
/// hard one at start; with a low hard limit, the connection cap keeps
/// descriptors for normal requests and accept errors never spin.
#[test]
fn a_low_descriptor_limit_is_raised_and_the_cap_keeps_serving() {
    let bin = env!("CARGO_BIN_EXE_hookflow");
    // Each start in a new folder: a new database prints its key.
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let start = |ulimit: &str, dir: &tempfile::TempDir| {
        let mut cmd = Command::new("bash");
        cmd.current_dir(dir.path())
            .args([
                "-c",
                &format!("ulimit {ulimit} && exec {bin} serve --listen 127.0.0.1:0"),
            ])
            .env("HOOKFLOW_LOG_LEVEL", "info")
            .env("HOOKFLOW_HTTP_HEADER_TIMEOUT_SECS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("HOOKFLOW_")
                && k != "HOOKFLOW_LOG_LEVEL"
                && k != "HOOKFLOW_HTTP_HEADER_TIMEOUT_SECS"
            {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut key = String::new();
        let base = loop {
            let mut line = String::new();
            assert!(
                std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
                "no listening line"
            );
            if line.starts_with("hfk_") {
                key = line.trim().to_owned();
            }
            if let Some(a) = line.trim().strip_prefix("hookflow listening on http://") {
                break a.to_owned();
            }
        };
        (child, base, key)
    };
    let stop = |child: std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A low soft limit under a higher hard one: raised.
    let (child, _, _) = start("-Sn 64", &dirs[0]);
    let log = stop(child);
    assert!(log.contains("raised the open-file limit from=64"), "{log}");

    // A low hard limit: 16 connections at most (64 - 128, at least 16).
    let (child, base, key) = start("-n 64", &dirs[1]);
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&base).unwrap())
        .collect();
    let started = Instant::now();
    let mut s = TcpStream::connect(&base).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!(
            "GET /v1/lists HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let (answer, _) = read_until_closed(s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
    let log = stop(child);
    assert!(log.contains("connection limit reached"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}

/// Request-smuggling hygiene: a request with both length headers is framed
/// by `Transfer-Encoding` alone and the connection is closed after the
/// answer (RFC 9112 §6.1; hyper drops the `Content-Length`), so a proxy that
/// framed it by its length cannot have a second request read from the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_content_length_and_transfer_encoding_closes_its_connection() {
    let app = spawn_app_with(Backend::Sqlite, options(10_000, 10_000, 1000))
        .await
        .unwrap();
    let mut s = connect(&app);
    // By its Content-Length (5) the body is "19\r\n{", and what follows would
    // be a second request; by Transfer-Encoding it is one chunked body.
    let request = format!(
        "POST /v1/contacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n19\r\n{{\"email\":\"s@example.com\"}}\r\n0\r\n\r\n",
        app.admin_key
    );
    s.write_all(request.as_bytes()).unwrap();
    let (answer, took) = tokio::task::spawn_blocking(move || read_until_closed(s))
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "framed by Transfer-Encoding: {answer}"
    );
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "one answer: {answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        took < Duration::from_secs(5),
        "closed after the answer: {took:?}"
    );
    app.stop().await;
}

/// Bodies are charged to the memory budget once they have arrived: a client
/// trickling its body in holds none of the budget, so with room for one body
/// another request still goes through at once (the budget's waits and 503
/// are unit-tested in `api::budget`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_in_holds_no_budget_that_others_need() {
    // Room for one 40 KB body (16 × 40 KB = 640 KiB of a 1 MiB budget).
    let app = spawn_app_with(
        Backend::Sqlite,
        ApiOptions {
            max_body_memory_bytes: 1 << 20,
            body_budget_wait: Duration::from_millis(300),
            ..options(10_000, 10_000, 1000)
        },
    )
    .await
    .unwrap();
    let body = format!(
        r#"{{"email":"big@example.com","status":"subscribed","phone":null{}}}"#,
        " ".repeat(40_000)
    );
    // The holder: headers and half its body, then it pauses.
    let mut holder = connect(&app);
    let head = format!(
        "POST /v1/contacts HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.admin_key,
        body.len()
    );
    holder.write_all(head.as_bytes()).unwrap();
    holder.write_all(&body.as_bytes()[..20_000]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let send = || {
        app.http
            .post(format!("{}/v1/contacts", app.base))
            .bearer_auth(&app.admin_key)
            .header("Content-Type", "application/json")
            .body(body.replace("big@", "other@"))
            .send()
    };
    // Were the trickling body charged as it is declared, this would wait
    // 300 ms and get 503.
    let other = send().await.unwrap();
    assert_eq!(other.status(), 201, "not held up by the trickling body");

    holder.write_all(&body.as_bytes()[20_000..]).unwrap();
    let (answer, _) = tokio::task::spawn_blocking(move || read_until_closed(holder))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    app.stop().await;
}

/// A client that sends requests but never reads the answers cannot hold its
/// connection: once the server's writes stall for the timer, it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let app = spawn_app_with(Backend::Sqlite, options(10_000, 500, 1000))
        .await
        .unwrap();
    let s = connect(&app);
    let mut writer = s.try_clone().unwrap();
    // Far more answers than the socket buffers hold (the OpenAPI document
    // is tens of KB; 2,000 of them are tens of MB).
    let sender = std::thread::spawn(move || {
        let one = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
        for _ in 0..20 {
            if writer.write_all(&one).is_err() {
                break; // closed by the server
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Now drain: the server must have given up and closed the connection,
    // so reading ends; were it still open, draining would let it go on and
    // the read would time out.
    let (answers, _) = tokio::task::spawn_blocking(move || read_until_closed(s))
        .await
        .unwrap();
    let answered = answers.matches("HTTP/1.1 200").count();
    assert!(
        answered < 200_000,
        "closed before answering all: {answered}"
    );
    sender.join().unwrap();
    app.stop().await;
}
