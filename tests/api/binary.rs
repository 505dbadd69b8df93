//! The `hookflow` binary itself: first start in an empty folder, the
//! bootstrap key, the CLI's key commands, bad configuration, SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hookflow");

/// A command for the binary with no `HOOKFLOW_*` settings leaking in from
/// the environment of the test run.
pub(crate) fn hookflow(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLOW_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOOKFLOW_LOG_LEVEL", "warn");
    cmd
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) stdout: Vec<String>,
}

impl Server {
    /// The admin key the first start printed.
    pub(crate) fn key(&self) -> String {
        self.stdout
            .iter()
            .find(|l| l.starts_with("hfk_"))
            .expect("bootstrap key on stdout")
            .clone()
    }
}

/// A test that fails must not leave its server running (it would hold the
/// test's output pipes open and outlive the run).
impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `hookflow serve` and reads stdout until it says where it listens.
pub(crate) fn start(dir: &Path) -> Server {
    start_with(dir, &[])
}

/// As [`start`], with extra `HOOKFLOW_*` settings.
fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut cmd = hookflow(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hookflow");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = Vec::new();
    let base = loop {
        let line = lines
            .next()
            .expect("hookflow exited before listening")
            .unwrap();
        stdout.push(line.clone());
        if let Some(addr) = line.strip_prefix("hookflow listening on ") {
            break addr.to_owned();
        }
    };
    Server {
        child,
        base,
        stdout,
    }
}

pub(crate) fn terminate(server: Server) -> std::process::ExitStatus {
    let mut server = server;
    let ok = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = server.child.kill();
            panic!("hookflow did not exit within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(base: &str, path: &str, key: &str) -> (u16, String) {
    request(reqwest::Method::GET, &format!("{base}{path}"), key, None)
}

/// One request to a running server from the test's own thread (the tests
/// here are not async: they drive child processes).
pub(crate) fn request(
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().request(method, url).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

#[test]
fn serve_in_an_empty_folder_bootstraps_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let key = server.key();
    assert!(
        server
            .stdout
            .iter()
            .any(|l| l.contains("will not be shown again")),
        "{:?}",
        server.stdout
    );
    assert!(
        dir.path().join("hookflow.db").exists(),
        "the SQLite file is created in the working folder"
    );
    let (status, body) = get(&server.base, "/v1/workspace", &key);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"workspace_name\":\"default\""), "{body}");
    assert_eq!(get(&server.base, "/readyz", "").0, 200);
    let status = terminate(server);
    assert!(status.success(), "exit status after SIGTERM: {status:?}");

    // A second start finds the workspace and prints no key.
    let server = start(dir.path());
    assert!(
        !server.stdout.iter().any(|l| l.starts_with("hfk_")),
        "{:?}",
        server.stdout
    );
    assert_eq!(
        get(&server.base, "/v1/lists", &key).0,
        200,
        "the first key still works"
    );
    assert!(terminate(server).success());
}

#[test]
fn key_commands_create_list_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let run = |args: &[&str]| {
        let out = hookflow(dir.path())
            .args(["--database", &db])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["migrate"]);
    run(&["workspaces", "create", "acme"]);
    assert!(run(&["workspaces", "list"]).contains("acme"));
    let out = run(&[
        "keys",
        "create",
        "--workspace",
        "acme",
        "--scope",
        "ingest",
        "--name",
        "shop",
    ]);
    let key = out.lines().last().unwrap().to_owned();
    assert!(
        key.starts_with("hfk_") && !key.contains(' '),
        "the key alone on the last line: {out}"
    );
    let listed = run(&["keys", "list", "--workspace", "acme"]);
    assert!(
        listed.contains("ingest") && listed.contains("shop") && !listed.contains(&key),
        "{listed}"
    );
    let id = listed.split('\t').next().unwrap().to_owned();
    assert!(run(&["keys", "revoke", &id]).contains(&id));
    assert!(run(&["keys", "list"]).contains("revoked"));

    let bad = hookflow(dir.path())
        .args([
            "--database",
            &db,
            "keys",
            "create",
            "--workspace",
            "nope",
            "--scope",
            "admin",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
}

#[test]
fn bad_configuration_lists_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("h.toml"),
        "listen = \"not-an-address\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let out = hookflow(dir.path())
        .args(["--config", "h.toml", "serve"])
        .env("HOOKFLOW_LOG_FORMAT", "xml")
        .env("HOOKFLOW_DATABASE_URL", "mysql://x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "{err}");
    let out = hookflow(dir.path())
        .args(["serve"])
        .env("HOOKFLOW_LISTEN", "nowhere")
        .env("HOOKFLOW_LOG_FORMAT", "xml")
        .env("HOOKFLOW_DATABASE_URL", "mysql://x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "HOOKFLOW_LISTEN",
        "HOOKFLOW_LOG_FORMAT",
        "HOOKFLOW_DATABASE_URL",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    assert!(
        !dir.path().join("hookflow.db").exists(),
        "nothing is created when the configuration is bad"
    );
}

/// Sends, from `workers` concurrent clients, `per_worker` POSTs each (the
/// body made by `body(worker, i)`) to `url`, and kills the server with
/// SIGKILL once `kill_after` were answered 2xx, the other clients' requests
/// still in flight. Returns the JSON answer of every acknowledged request.
async fn load_then_kill(
    pid: Option<u32>,
    url: String,
    key: String,
    workers: usize,
    per_worker: usize,
    kill_after: usize,
    body: fn(usize, usize) -> serde_json::Value,
) -> Vec<serde_json::Value> {
    let http = reqwest::Client::new();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (http, url, key, answered) = (http.clone(), url.clone(), key.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in 0..per_worker {
                let sent = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body(worker, i))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        ok.push(r.json::<serde_json::Value>().await.unwrap_or_default())
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break, // the server is gone
                }
                if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == kill_after
                    && let Some(pid) = pid
                {
                    Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status()
                        .unwrap();
                }
            }
            ok
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Every upsert answered 2xx is there after the server is killed with
/// SIGKILL mid-load (requests in flight, no shutdown, no final checkpoint)
/// and started again. Catches any path that answers before its group commit
/// has committed.
#[test]
fn acknowledged_upserts_survive_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let key = server.key();
    let (base, pid) = (server.base.clone(), server.child.id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Kill once 500 upserts are acknowledged.
    let acknowledged: Vec<String> = rt
        .block_on(load_then_kill(
            Some(pid),
            format!("{base}/v1/contacts"),
            key.clone(),
            32,
            100,
            500,
            |w, i| serde_json::json!({"email": format!("crash{w}x{i}@example.com")}),
        ))
        .iter()
        .map(|c| c["email"].as_str().unwrap().to_owned())
        .collect();
    server.child.wait().unwrap();
    assert!(
        acknowledged.len() >= 500 && acknowledged.len() < 3200,
        "killed mid-load: {}",
        acknowledged.len()
    );

    let server = start(dir.path());
    rt.block_on(async {
        let http = reqwest::Client::new();
        for email in &acknowledged {
            let resp = http
                .get(format!("{}/v1/contacts/lookup?email={email}", server.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                200,
                "{email} was acknowledged but is gone after kill -9"
            );
        }
    });
    assert!(terminate(server).success());
}

/// The CLI on one database, in a workspace `acme` it creates.
struct Cli<'a> {
    dir: &'a Path,
    db: &'a str,
}

impl<'a> Cli<'a> {
    fn new(dir: &'a Path, db: &'a str) -> Self {
        let cli = Self { dir, db };
        // Only `serve` and `migrate` create a database.
        assert!(cli.run(&["migrate"]).status.success());
        assert!(cli.run(&["workspaces", "create", "acme"]).status.success());
        cli
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        hookflow(self.dir)
            .args(["--database", self.db])
            .args(args)
            .output()
            .unwrap()
    }

    /// `hookflow flows apply --workspace acme FILES…`
    fn apply(&self, files: &[&Path]) -> std::process::Output {
        let mut args = vec!["flows", "apply", "--workspace", "acme"];
        args.extend(files.iter().map(|f| f.to_str().unwrap()));
        self.run(&args)
    }
}

#[test]
fn flows_apply_creates_then_versions_and_names_problems() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("f.db").display());
    let cli = Cli::new(dir.path(), &db);
    let run = |args: &[&str]| cli.run(args);
    let apply = |files: &[&Path]| cli.apply(files);
    let flow = serde_json::json!({"name": "Nurture", "trigger": {"type": "event", "name": "signup"},
        "steps": [{"id": "pause", "type": "wait", "duration": "2d", "next": "done"}, {"id": "done", "type": "exit"}]});
    let file = dir.path().join("nurture.json");
    std::fs::write(&file, flow.to_string()).unwrap();
    let out = apply(&[&file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("created"),
        "{out:?}"
    );
    let out = apply(&[&file]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unchanged"),
        "no version for the same document: {out:?}"
    );
    let mut changed = flow.clone();
    changed["steps"][0]["duration"] = serde_json::json!("3d");
    std::fs::write(&file, changed.to_string()).unwrap();
    let out = apply(&[&file]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 2"),
        "{out:?}"
    );

    let mut bad = flow.clone();
    bad["steps"][0]["next"] = serde_json::json!("nowhere");
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).unwrap();
    // A valid file next to an invalid one is not applied either.
    let other = dir.path().join("other.json");
    let mut fresh = flow.clone();
    fresh["name"] = serde_json::json!("Fresh");
    std::fs::write(&other, fresh.to_string()).unwrap();
    let out = apply(&[&other, &bad_file]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step `pause`") && err.contains("nowhere"),
        "{err}"
    );
    let listed =
        String::from_utf8_lossy(&run(&["flows", "list", "--workspace", "acme"]).stdout).to_string();
    assert!(
        listed.contains("Nurture") && listed.contains("version 2"),
        "{listed}"
    );
    assert!(
        !listed.contains("Fresh"),
        "nothing is applied when one file is invalid: {listed}"
    );
    // NUL in a flow file is refused by the CLI too (PostgreSQL cannot store it).
    let mut nul = flow.clone();
    nul["steps"][1]["id"] = serde_json::json!("do\u{0}ne");
    let nul_file = dir.path().join("nul.json");
    std::fs::write(&nul_file, nul.to_string()).unwrap();
    let out = apply(&[&nul_file]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NUL"),
        "{out:?}"
    );
}

#[test]
fn flows_apply_reads_yaml_and_names_the_line_of_a_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("y.db").display());
    let cli = Cli::new(dir.path(), &db);
    let run = |args: &[&str]| cli.run(args);
    let apply = |files: &[&Path]| cli.apply(files);
    let yaml = "\
# Nurture new sign-ups.
name: Nurture
trigger: {type: event, name: signup}
steps:
  - id: pause
    type: wait
    duration: 2d
    next: done
  - id: done
    type: exit
";
    let file = dir.path().join("nurture.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = apply(&[&file]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("created"),
        "{out:?}"
    );
    // The same document as JSON is the same flow, unchanged.
    let json = dir.path().join("nurture.json");
    std::fs::write(
        &json,
        serde_json::json!({"name": "Nurture", "trigger": {"type": "event", "name": "signup"},
            "steps": [{"id": "pause", "type": "wait", "duration": "2d", "next": "done"},
                      {"id": "done", "type": "exit"}]})
        .to_string(),
    )
    .unwrap();
    let out = apply(&[&json]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unchanged"),
        "{out:?}"
    );

    // A misspelt setting of the step on line 5 of a .yml file: named with
    // the step's line (a step's settings are read as a whole, after its
    // `type`, so the parser points at the step), and nothing is applied.
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        yaml.replace("Nurture\n", "Other\n")
            .replace("    duration: 2d", "    durashun: 2d"),
    )
    .unwrap();
    let out = apply(&[&bad]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yml:5:") && err.contains("steps[0]") && err.contains("durashun"),
        "{err}"
    );
    let listed =
        String::from_utf8_lossy(&run(&["flows", "list", "--workspace", "acme"]).stdout).to_string();
    assert!(!listed.contains("Other"), "{listed}");
    // Broken YAML syntax is named too.
    std::fs::write(&bad, "name: [unclosed\nsteps: []\n").unwrap();
    let err = String::from_utf8_lossy(&apply(&[&bad]).stderr).to_string();
    assert!(err.contains("bad.yml:"), "{err}");
}

#[test]
fn flows_apply_prints_a_new_signing_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let cli = Cli::new(dir.path(), &db);
    let apply = |files: &[&Path]| cli.apply(files);
    // Lists have no CLI: make one through the store.
    let list = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = hookflow::store::connect(&db, &Default::default())
            .await
            .unwrap();
        let ws = store.workspace_by_name("acme").await.unwrap().id;
        let l = store.create_list(&ws, "Orders", vec![]).await.unwrap();
        store.close().await;
        l.id.to_string()
    });
    let flow = serde_json::json!({"name": "Signed", "trigger": {"type": "inbound", "list_id": list,
        "signature": "standard_webhooks"}, "steps": [{"id": "done", "type": "exit"}]});
    let file = dir.path().join("signed.json");
    std::fs::write(&file, flow.to_string()).unwrap();
    let out = apply(&[&file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.lines().any(|l| l.starts_with("whsec_")),
        "the new secret is printed: {stdout}"
    );
    let out = apply(&[&file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("unchanged") && !stdout.contains("whsec_"),
        "an existing secret is not shown again: {stdout}"
    );
}

/// SIGTERM sent the moment the address is printed is a graceful stop, not a
/// kill: the handlers are registered before the address is announced.
#[test]
fn sigterm_right_after_listening_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let server = start(dir.path());
        let status = terminate(server);
        assert!(
            status.success(),
            "exit status after an immediate SIGTERM: {status:?}"
        );
    }
}

/// FL-5 across a real crash: inbound calls are accepted, the server is
/// killed with SIGKILL while runs are claimed, waiting or not yet touched,
/// and started again. Every run whose call was answered 202 completes, and
/// each of its steps executed exactly once (one history row per step, the
/// effects applied once).
#[test]
fn accepted_runs_complete_exactly_once_after_kill_9_sqlite() {
    accepted_runs_complete_exactly_once_after_kill_9(crate::helpers::Backend::Sqlite);
}

#[test]
#[cfg_attr(
    hookflow_no_test_pg,
    ignore = "HOOKFLOW_TEST_PG is not set: this PostgreSQL test did not run"
)]
fn accepted_runs_complete_exactly_once_after_kill_9_postgres() {
    accepted_runs_complete_exactly_once_after_kill_9(crate::helpers::Backend::Postgres);
}

/// Issue 9: two `hookflow serve` processes on one PostgreSQL database share
/// the work. Inbound calls go to both; one is killed with SIGKILL mid-load.
/// Every accepted run (through either) completes exactly once, one history
/// row per step, and the survivor takes the dead one's leased runs over
/// once their lease (2 s here) ends.
#[test]
#[cfg_attr(
    hookflow_no_test_pg,
    ignore = "HOOKFLOW_TEST_PG is not set: this PostgreSQL test did not run"
)]
fn two_processes_on_one_postgresql_share_runs_and_survive_a_kill() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(crate::helpers::test_db(crate::helpers::Backend::Postgres)) else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [
        ("HOOKFLOW_DATABASE_URL", db.url.as_str()),
        ("HOOKFLOW_ENGINE_LEASE_SECS", "2"),
        ("HOOKFLOW_ENGINE_POLL_MS", "50"),
    ];
    let mut a = start_with(dir_a.path(), &env);
    let key = a.key();
    let b = start_with(dir_b.path(), &env);
    assert!(
        !b.stdout.iter().any(|l| l.starts_with("hfk_")),
        "the second process found the first one's workspace"
    );
    let url = rt.block_on(crash_flow(&a.base, &key));
    let started = Instant::now();
    let (through_a, through_b) = rt.block_on(async {
        let dying = load_then_kill(
            Some(a.child.id()),
            format!("{}{url}", a.base),
            key.clone(),
            8,
            60,
            200,
            |w, i| serde_json::json!({"email": format!("a{w}x{i}@example.com")}),
        );
        let living = load_then_kill(
            None,
            format!("{}{url}", b.base),
            key.clone(),
            8,
            40,
            usize::MAX,
            |w, i| serde_json::json!({"email": format!("b{w}x{i}@example.com")}),
        );
        tokio::join!(dying, living)
    });
    a.child.wait().unwrap();
    assert!(
        through_a.len() >= 200 && through_a.len() < 480,
        "A was killed mid-load: {} calls",
        through_a.len()
    );
    assert_eq!(through_b.len(), 320, "every call to B was accepted");
    let runs: Vec<(String, String)> = through_a
        .iter()
        .chain(&through_b)
        .map(|v| {
            (
                v["run_id"].as_str().unwrap().to_owned(),
                v["contact_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rt.block_on(expect_completed_once(
        &b.base,
        &key,
        &runs,
        Duration::from_secs(60),
    ));
    // The runs A held were taken over within the lease (2 s) plus the
    // flow's own 1 s wait, with room for a loaded machine.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(terminate(b).success());
}

/// Lists `In` and `Done` and an active flow (join Done, wait 1 s, set
/// `plan`, goal); returns its inbound URL's path.
async fn crash_flow(base: &str, key: &str) -> String {
    let http = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        let key = key.to_owned();
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let mut lists = Vec::new();
    for name in ["In", "Done"] {
        let (s, l) = post(
            "/v1/lists".into(),
            serde_json::json!({"name": name, "fields": [{"name": "plan", "type": "text"}]}),
        )
        .await;
        assert_eq!(s, 201, "{l}");
        lists.push(l["id"].as_str().unwrap().to_owned());
    }
    let doc = serde_json::json!({
        "name": "Crash",
        "trigger": {"type": "inbound", "list_id": lists[0]},
        "steps": [
            {"id": "join", "type": "add_to_list", "list_id": lists[1], "next": "pause"},
            {"id": "pause", "type": "wait", "duration": "1s", "next": "set"},
            {"id": "set", "type": "update_field", "field": "plan", "value": "done", "next": "won"},
            {"id": "won", "type": "goal", "name": "finished"}
        ]
    });
    let (s, f) = post("/v1/flows".into(), doc).await;
    assert_eq!(s, 201, "{f}");
    let id = f["id"].as_str().unwrap().to_owned();
    let (s, f) = post(format!("/v1/flows/{id}/activate"), serde_json::json!({})).await;
    assert_eq!(s, 200, "{f}");
    f["inbound_url"].as_str().unwrap().to_owned()
}

/// Waits until every run is completed, then checks each executed each step
/// of the crash flow exactly once and applied its field change.
async fn expect_completed_once(base: &str, key: &str, runs: &[(String, String)], within: Duration) {
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}{path}"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + within;
    for (run, contact) in runs {
        let r: serde_json::Value = loop {
            let r = get(format!("/v1/runs/{run}")).await;
            if r["status"] == "completed" {
                break r;
            }
            assert!(Instant::now() < deadline, "run {run} never completed: {r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let steps: Vec<(&str, &str)> = r["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["step"].as_str().unwrap(), h["outcome"].as_str().unwrap()))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("join", "next"),
                ("pause", "waiting"),
                ("pause", "resumed"),
                ("set", "next"),
                ("won", "goal")
            ],
            "run {run} executed a step twice or skipped one"
        );
        let c = get(format!("/v1/contacts/{contact}")).await;
        assert_eq!(c["fields"]["plan"], "done", "{c}");
    }
}

fn accepted_runs_complete_exactly_once_after_kill_9(backend: crate::helpers::Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // SQLite: a file in the server's folder; PostgreSQL: a fresh schema.
    let Some(db) = rt.block_on(crate::helpers::test_db(backend)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A short lease so the restarted process takes over claims at once.
    let mut env = vec![("HOOKFLOW_ENGINE_LEASE_SECS", "1")];
    if backend == crate::helpers::Backend::Postgres {
        env.push(("HOOKFLOW_DATABASE_URL", db.url.as_str()));
    }
    let mut server = start_with(dir.path(), &env);
    let key = server.key();
    let (base, pid) = (server.base.clone(), server.child.id());
    let url = rt.block_on(crash_flow(&base, &key));

    let accepted: Vec<(String, String)> = rt
        .block_on(load_then_kill(
            Some(pid),
            format!("{base}{url}"),
            key.clone(),
            16,
            60,
            400,
            |w, i| serde_json::json!({"email": format!("k{w}x{i}@example.com")}),
        ))
        .iter()
        .map(|v| {
            (
                v["run_id"].as_str().unwrap().to_owned(),
                v["contact_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    server.child.wait().unwrap();
    assert!(
        accepted.len() >= 400 && accepted.len() < 960,
        "killed mid-load: {}",
        accepted.len()
    );

    let server = start_with(dir.path(), &env);
    rt.block_on(expect_completed_once(
        &server.base,
        &key,
        &accepted,
        Duration::from_secs(60),
    ));
    assert!(terminate(server).success());
}

/// WH-3 across a real crash: deliveries are in flight (the receiver is
/// slow) when the server is killed with SIGKILL; after a restart every
/// accepted run's delivery arrives at least once, and every request that
/// arrived carries the webhook-id of one of those deliveries (duplicates
/// share it).
#[test]
fn deliveries_arrive_after_kill_9_sqlite() {
    deliveries_arrive_after_kill_9(crate::helpers::Backend::Sqlite);
}

#[test]
#[cfg_attr(
    hookflow_no_test_pg,
    ignore = "HOOKFLOW_TEST_PG is not set: this PostgreSQL test did not run"
)]
fn deliveries_arrive_after_kill_9_postgres() {
    deliveries_arrive_after_kill_9(crate::helpers::Backend::Postgres);
}

fn deliveries_arrive_after_kill_9(backend: crate::helpers::Backend) {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(db) = rt.block_on(crate::helpers::test_db(backend)) else {
        return;
    };
    // A receiver that takes 100 ms per request (4 at once: about 40 a
    // second) and records each webhook-id.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let port = rt.block_on(async {
        let got = got.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let got = got.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                got.lock().unwrap().push(id);
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    });
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("HOOKFLOW_ENGINE_LEASE_SECS", "1"),
        ("HOOKFLOW_OUTBOUND_LEASE_SECS", "1"),
        ("HOOKFLOW_OUTBOUND_ALLOW", "127.0.0.1/32"),
        ("HOOKFLOW_OUTBOUND_VERIFICATION", "false"),
    ];
    if backend == crate::helpers::Backend::Postgres {
        env.push(("HOOKFLOW_DATABASE_URL", db.url.as_str()));
    }
    let mut server = start_with(dir.path(), &env);
    let key = server.key();
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let runs: Vec<String> = rt.block_on(async {
        let post = |path: String, body: serde_json::Value| {
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            async move {
                let r = http
                    .post(format!("{base}{path}"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{path}: {}", r.status());
                r.json::<serde_json::Value>().await.unwrap()
            }
        };
        let list = post("/v1/lists".into(), serde_json::json!({"name": "In"})).await;
        let w = post(
            "/v1/webhooks".into(),
            serde_json::json!({"name": "Slow", "url": format!("http://127.0.0.1:{port}/in"), "max_concurrency": 4}),
        )
        .await;
        let f = post(
            "/v1/flows".into(),
            serde_json::json!({"name": "Tell", "trigger": {"type": "inbound", "list_id": list["id"]},
                "steps": [{"id": "tell", "type": "send_webhook", "webhook_id": w["id"]}]}),
        )
        .await;
        let a = post(
            format!("/v1/flows/{}/activate", f["id"].as_str().unwrap()),
            serde_json::json!({}),
        )
        .await;
        let url = a["inbound_url"].as_str().unwrap().to_owned();
        // All at once: posted one by one, a machine slowed by other work
        // took long enough that most deliveries had arrived before the kill.
        futures_util::future::join_all((0..150).map(|i| {
            post(url.clone(), serde_json::json!({"email": format!("d{i}@example.com")}))
        }))
        .await
        .into_iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect()
    });
    // Kill while deliveries are in flight (some arrived, most not).
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "no deliveries arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status();
    server.child.wait().unwrap();
    let before_restart = got.lock().unwrap().len();
    assert!(
        before_restart < 120,
        "most deliveries arrived before the kill: {before_restart}"
    );

    let server = start_with(dir.path(), &env);
    // Each accepted run's delivery id, from its history.
    let expected: HashSet<String> = rt.block_on(async {
        let mut ids = HashSet::new();
        for run in &runs {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let r: serde_json::Value = http
                    .get(format!("{}/v1/runs/{run}", server.base))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if let Some(id) = r["history"][0]["detail"]["delivery_id"].as_str() {
                    ids.insert(id.to_owned());
                    break;
                }
                assert!(Instant::now() < deadline, "run {run} never sent: {r}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ids
    });
    assert_eq!(expected.len(), 150, "one delivery per run");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = got.lock().unwrap().iter().cloned().collect();
        if expected.is_subset(&seen) {
            assert!(
                seen.is_subset(&expected),
                "a request arrived with an id no delivery has"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 150 deliveries arrived after the restart",
            expected.intersection(&seen).count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = got.lock().unwrap().len();
    eprintln!(
        "kill -9 mid-delivery: {before_restart} arrived before, {total} requests in all for 150 deliveries"
    );
    assert!(terminate(server).success());
}
