//! Test harness: a real server on a random loopback port, a real database
//! (a temporary SQLite file or a fresh PostgreSQL schema), a real HTTP client.

use std::sync::Arc;
use std::time::Duration;

use hookflow::api::ApiOptions;
use hookflow::bootstrap;
use hookflow::domain::Scope;
use hookflow::flows::{Engine, EngineConfig, TestClock};
use hookflow::store::{self, Store, StoreOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod NAME { sqlite, postgres }` tests from `async fn NAME(Backend)`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(hookflow_no_test_pg, ignore = "HOOKFLOW_TEST_PG is not set: this PostgreSQL test did not run")]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}

/// A database for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.pg.take() {
            // Drop runs outside async context guarantees: use a private
            // runtime on a plain thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let pool = sqlx::PgPool::connect(&base).await.ok()?;
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&pool)
                        .await
                        .ok()?;
                    pool.close().await;
                    Some(())
                })
            })
            .join();
        }
    }
}

/// The PostgreSQL URL to test against, or `None` to skip. Under CI a missing
/// URL fails the test instead of hiding the store from the suite.
pub fn pg_url() -> Option<String> {
    match std::env::var("HOOKFLOW_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CI").is_ok() => {
            panic!("CI is set but HOOKFLOW_TEST_PG is not: PostgreSQL tests cannot run")
        }
        _ => None,
    }
}

pub async fn test_db(backend: Backend) -> Option<TestDb> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("hookflow.db").display());
            Some(TestDb {
                url,
                _dir: Some(dir),
                pg: None,
            })
        }
        Backend::Postgres => {
            let Some(base) = pg_url() else {
                eprintln!("skipped: HOOKFLOW_TEST_PG is not set");
                return None;
            };
            let schema = format!("hf_test_{}", ulid::Ulid::new().to_string().to_lowercase());
            let pool = sqlx::PgPool::connect(&base)
                .await
                .expect("connect to HOOKFLOW_TEST_PG");
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await
                .expect("create schema");
            pool.close().await;
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options[search_path]={schema}");
            Some(TestDb {
                url,
                _dir: None,
                pg: Some((base, schema)),
            })
        }
    }
}

pub async fn open_store(db: &TestDb) -> Arc<dyn Store> {
    let opts = StoreOptions {
        max_batch: 64,
        pool_size: 4,
        ..Default::default()
    };
    store::connect(&db.url, &opts).await.expect("open store")
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    pub base: String,
    pub admin_key: String,
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    /// The engine's clock: tests move it instead of sleeping.
    pub clock: TestClock,
    pub engine: Arc<Engine>,
    _db: TestDb,
    stop: Option<tokio_util::sync::CancellationToken>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub const TEST_BODY_LIMIT: usize = 64 * 1024;

pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, ApiOptions::default()).await
}

/// A server with other HTTP settings (rate limits); the body limit is always
/// [`TEST_BODY_LIMIT`].
pub async fn spawn_app_with(backend: Backend, options: ApiOptions) -> Option<TestApp> {
    let db = test_db(backend).await?;
    let store = open_store(&db).await;
    let key = bootstrap::ensure_default_workspace(&*store)
        .await
        .expect("bootstrap")
        .expect("a fresh database has no workspace");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let clock = TestClock::new();
    let engine = Engine::new(
        store.clone(),
        Arc::new(clock.clone()),
        EngineConfig {
            batch: 64,
            claim_bytes: 4 << 20,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(50),
            workers: 2,
        },
    );
    let task = tokio::spawn(hookflow::server::serve(
        store.clone(),
        listener,
        ApiOptions {
            max_body_bytes: TEST_BODY_LIMIT,
            ..options
        },
        stop.clone(),
        Duration::from_secs(5),
        engine.clone(),
    ));
    Some(TestApp {
        base: format!("http://{addr}"),
        admin_key: key.secret,
        store,
        clock,
        engine,
        http: reqwest::Client::new(),
        _db: db,
        stop: Some(stop),
        task: Some(task),
    })
}

impl TestApp {
    /// The test database's URL (`sqlite://PATH` or a PostgreSQL URL).
    pub fn db_url(&self) -> &str {
        &self._db.url
    }

    /// A GET that must succeed: a "nothing changed" comparison of two
    /// failed listings would pass while checking nothing.
    pub async fn get_ok(&self, key: &str, path: &str) -> Value {
        let (status, body) = self.get(key, path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// Rows in every table, counted in the database itself: runs, events,
    /// step history and idempotency keys too, which no listing shows. The
    /// inbound-call log is left out: it records refused calls by design.
    pub async fn row_counts(&self) -> std::collections::BTreeMap<String, i64> {
        const SKIP: &[&str] = &["inbound_calls", "_sqlx_migrations"];
        let url = self.db_url().to_owned();
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || {
                let c = rusqlite::Connection::open(path).expect("open the test database");
                let tables: Vec<String> = c
                    .prepare(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                    )
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                tables
                    .into_iter()
                    .filter(|t| !SKIP.contains(&t.as_str()))
                    .map(|t| {
                        let n = c
                            .query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))
                            .unwrap();
                        (t, n)
                    })
                    .collect()
            })
            .await
            .unwrap()
        } else {
            use sqlx::Row;
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            let mut out = std::collections::BTreeMap::new();
            for t in tables.into_iter().filter(|t| !SKIP.contains(&t.as_str())) {
                let row = sqlx::query(&format!("SELECT COUNT(*) FROM \"{t}\""))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                out.insert(t, row.get::<i64, _>(0));
            }
            pool.close().await;
            out
        }
    }

    /// Stops the server and waits until it has closed the store.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server exits cleanly");
        }
    }

    /// A new workspace with a key of the given scope.
    pub async fn workspace_key(&self, workspace: &str, scope: Scope) -> String {
        if self.store.workspace_by_name(workspace).await.is_err() {
            self.store
                .create_workspace(workspace)
                .await
                .expect("create workspace");
        }
        bootstrap::issue_key(&*self.store, workspace, scope, None)
            .await
            .expect("issue key")
            .secret
    }

    pub async fn call(
        &self,
        key: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        self.call(key, Method::GET, path, None).await
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(key, Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(key, Method::PUT, path, Some(body)).await
    }

    /// Creates a flow from `doc` and activates it (both must succeed).
    pub async fn active_flow(&self, doc: Value) -> ActiveFlow {
        let (s, created) = self.post(&self.admin_key, "/v1/flows", doc).await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let (s, active) = self
            .post(
                &self.admin_key,
                &format!("/v1/flows/{id}/activate"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{active}");
        let text = |v: &Value, k: &str| v[k].as_str().map(str::to_owned);
        ActiveFlow {
            url: text(&active, "inbound_url"),
            secret: text(&created, "inbound_secret").or_else(|| text(&active, "inbound_secret")),
            id,
        }
    }

    /// Moves the engine's clock forward and wakes the engine.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.engine.wake();
    }

    /// Polls the run (with its history) until `done` holds; panics after 10
    /// s of real time with the last state seen. Polling, not sleeping for a
    /// timer: the engine works as fast as it can and the test looks.
    pub async fn wait_run(&self, run_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, run) = self
                .get(&self.admin_key, &format!("/v1/runs/{run_id}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{run}");
            if done(&run) {
                return run;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {run_id} did not reach the expected state; last seen: {run:#}"
            );
            self.engine.wake();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the run's status is `status`.
    pub async fn wait_status(&self, run_id: &str, status: &str) -> Value {
        self.wait_run(run_id, |r| r["status"] == status).await
    }
}

/// A flow made by [`TestApp::active_flow`].
pub struct ActiveFlow {
    pub id: String,
    /// The inbound URL's path, for an `inbound` trigger.
    pub url: Option<String>,
    /// The signing secret, shown once, for a flow that asks for signed calls.
    pub secret: Option<String>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }
}

/// Delivery jobs in the queue (the queue holds only work still to do).
pub async fn delivery_jobs(store: &dyn Store) -> i64 {
    let done = store
        .read_sql(vec![hookflow::store::sql::Stmt::new(
            "SELECT count(*) FROM jobs WHERE kind = $1",
            vec![hookflow::store::outbound::DELIVERY_JOB.into()],
        )])
        .await
        .unwrap();
    match done[0].rows[0][0] {
        hookflow::store::sql::Val::Int(n) => n,
        ref other => panic!("a count: {other:?}"),
    }
}

/// Asserts an error response's status and code and returns its body.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "unexpected status; body: {}", got.1);
    assert_eq!(
        got.1["error"]["code"], code,
        "unexpected code; body: {}",
        got.1
    );
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message: {}",
        got.1
    );
}
