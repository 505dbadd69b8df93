//! The `hookflow` binary itself: first start in an empty folder, the
//! bootstrap key, the CLI's key commands, bad configuration, SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hookflow");

/// A command for the binary with no `HOOKFLOW_*` settings leaking in from
/// the environment of the test run.
fn hookflow(dir: &Path) -> Command {
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

struct Server {
    child: Child,
    base: String,
    stdout: Vec<String>,
}

/// Starts `hookflow serve` and reads stdout until it says where it listens.
fn start(dir: &Path) -> Server {
    let mut child = hookflow(dir)
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

fn terminate(mut server: Server) -> std::process::ExitStatus {
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

#[test]
fn serve_in_an_empty_folder_bootstraps_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let key = server
        .stdout
        .iter()
        .find(|l| l.starts_with("hfk_"))
        .expect("bootstrap key on stdout")
        .clone();
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
