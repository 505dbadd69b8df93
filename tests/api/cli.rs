//! The command line as a new user meets it: a taken port, the wrong folder,
//! flows activated and paused by name, help for every argument, logs
//! without colour codes where no terminal reads them.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::binary::{hookflow, start, terminate};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(dir: &Path, args: &[&str]) -> Output {
    hookflow(dir).args(args).output().unwrap()
}

#[test]
fn serve_on_a_taken_port_fails_at_once_naming_it_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = run(dir.path(), &["serve", "--listen", &addr]);
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("hookflow: cannot listen on {addr} (is another hookflow, or another program, using port {}? stop it, or choose another address with --listen IP:PORT; port 0 picks a free one)", taken.local_addr().unwrap().port())),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
    assert!(
        text(&out.stdout).is_empty(),
        "no key was made: {}",
        text(&out.stdout)
    );
    assert!(
        !dir.path().join("hookflow.db").exists(),
        "no database is created before the port is had"
    );
}

#[test]
fn commands_other_than_serve_and_migrate_refuse_to_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.json"), "{}").unwrap();
    for args in [
        &["flows", "apply", "f.json"][..],
        &["flows", "list"],
        &["keys", "list"],
        &["workspaces", "list"],
    ] {
        let out = run(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        let want = format!(
            "hookflow: database sqlite://hookflow.db\nhookflow: no hookflow database at sqlite://hookflow.db (there is no file {}); `hookflow {}` does not create one. Point at the database your server uses with --database URL or HOOKFLOW_DATABASE_URL (`hookflow serve` keeps it in hookflow.db in the folder it was started in), or create one with `hookflow migrate`\n",
            std::fs::canonicalize(dir.path())
                .unwrap()
                .join("hookflow.db")
                .display(),
            args[0]
        );
        assert_eq!(err, want, "{args:?}");
        assert!(!dir.path().join("hookflow.db").exists(), "{args:?}");
    }
    // An empty file is not a hookflow database either.
    std::fs::write(dir.path().join("empty.db"), "").unwrap();
    let out = run(
        dir.path(),
        &["--database", "sqlite://empty.db", "flows", "list"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("(the file is not a hookflow database (it has no hookflow tables))"),
        "{}",
        text(&out.stderr)
    );
    // `migrate` creates it, and names it.
    let out = run(dir.path(), &["migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("hookflow: database sqlite://hookflow.db"));
    let out = run(dir.path(), &["workspaces", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
#[cfg_attr(
    hookflow_no_test_pg,
    ignore = "HOOKFLOW_TEST_PG is not set: this PostgreSQL test did not run"
)]
fn an_empty_postgresql_database_is_not_filled_by_a_cli_command() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(crate::helpers::test_db(crate::helpers::Backend::Postgres)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--database", &db.url, "flows", "list"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(
            "(the database has no hookflow tables); `hookflow flows` does not create one"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = run(dir.path(), &["--database", &db.url, "migrate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(dir.path(), &["--database", &db.url, "workspaces", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A request to a running server, from the test's own thread.
fn http(method: reqwest::Method, url: &str, key: &str, body: serde_json::Value) -> (u16, String) {
    crate::binary::request(method, url, key, Some(body))
}

#[test]
fn flows_are_applied_activated_and_paused_by_name_with_their_inbound_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let key = server.key();
    let (s, list) = http(
        reqwest::Method::POST,
        &format!("{}/v1/lists", server.base),
        &key,
        json!({"name": "Buyers"}),
    );
    assert_eq!(s, 201, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let flow = json!({"name": "Paid order", "trigger": {"type": "inbound", "list_id": list["id"]},
        "steps": [{"id": "done", "type": "exit"}]});
    std::fs::write(dir.path().join("paid.json"), flow.to_string()).unwrap();
    // The CLI prints URLs at the server's public address.
    let cli = |args: &[&str]| {
        hookflow(dir.path())
            .env("HOOKFLOW_PUBLIC_URL", &server.base)
            .args(args)
            .output()
            .unwrap()
    };

    // `--workspace` defaults to `default`, the first start's workspace.
    let out = cli(&["flows", "apply", "--activate", "paid.json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("created fl_") && lines[0].ends_with("\tPaid order\tversion 1"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("active fl_") && lines[1].ends_with("\tPaid order\tversion 1"),
        "{stdout}"
    );
    let url = lines[2]
        .strip_prefix(&format!("  inbound URL: {}/hooks/", server.base))
        .map(|token| format!("{}/hooks/{token}", server.base))
        .unwrap_or_else(|| panic!("{stdout}"));
    let call = || {
        http(
            reqwest::Method::POST,
            &url,
            &key,
            json!({"email": "ada@example.com"}),
        )
        .0
    };
    assert_eq!(call(), 202, "the printed URL takes calls");

    let out = cli(&["flows", "pause", "Paid order"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("paused fl_"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(call(), 409, "a paused flow refuses calls");

    // A name that does not exist changes nothing, not even the others.
    let out = cli(&["flows", "activate", "Paid order", "Nope"]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).lines().last().unwrap(),
        "hookflow: no flow named `Nope` in workspace `default` (see `hookflow flows list`); nothing was changed"
    );
    assert_eq!(call(), 409);

    let out = cli(&["flows", "activate", "Paid order"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("  inbound URL: {url}")),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(call(), 202);
    let out = cli(&["flows", "list"]);
    assert!(
        text(&out.stdout).contains(&format!("\tactive\tversion 1\t{url}")),
        "{}",
        text(&out.stdout)
    );

    // A file whose step carries its webhook inline: applying it again
    // keeps that webhook (the file has no `webhook_id`) and changes nothing.
    let inline = json!({"name": "Notify", "trigger": {"type": "inbound", "list_id": list["id"]},
        "steps": [{"id": "tell", "type": "send_webhook", "webhook": {
            "url": "https://crm.example.com/hook",
            "auth": {"type": "bearer", "token": "file-token"}}}]});
    std::fs::write(dir.path().join("notify.json"), inline.to_string()).unwrap();
    let out = cli(&["flows", "apply", "notify.json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("created fl_"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["flows", "apply", "notify.json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("unchanged fl_"),
        "{}",
        text(&out.stdout)
    );
    let (s, hooks) = crate::binary::request(
        reqwest::Method::GET,
        &format!("{}/v1/webhooks", server.base),
        &key,
        None,
    );
    assert_eq!(s, 200, "{hooks}");
    let hooks: serde_json::Value = serde_json::from_str(&hooks).unwrap();
    assert_eq!(hooks["items"].as_array().unwrap().len(), 1, "{hooks}");
    assert_eq!(hooks["items"][0]["inline"], true, "{hooks}");
    assert!(!hooks.to_string().contains("file-token"), "{hooks}");

    // An unknown workspace lists the ones there are.
    let out = cli(&["flows", "list", "--workspace", "acme"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("workspace `acme` does not exist in this database (it has: `default`); choose one with --workspace NAME"),
        "{}",
        text(&out.stderr)
    );
    assert!(terminate(server).success());
}

/// Every subcommand's `-h`, found by walking the `Commands:` sections.
fn help_pages(dir: &Path, path: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let mut args = path.clone();
    args.push("-h".into());
    let help = text(&hookflow(dir).args(&args).output().unwrap().stdout);
    let mut in_commands = false;
    let mut children = Vec::new();
    for line in help.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_commands = line == "Commands:";
            continue;
        }
        if in_commands
            && let Some(name) = line.split_whitespace().next()
            && name != "help"
        {
            children.push(name.to_owned());
        }
    }
    out.push((path.clone(), help));
    for c in children {
        let mut p = path.clone();
        p.push(c);
        help_pages(dir, p, out);
    }
}

#[test]
fn every_command_and_argument_has_help_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut pages = Vec::new();
    help_pages(dir.path(), Vec::new(), &mut pages);
    assert!(pages.len() >= 12, "found {} help pages", pages.len());
    for (path, help) in &pages {
        let mut section = "";
        for line in help.lines() {
            if line.ends_with(':') && !line.starts_with(' ') {
                section = line;
                continue;
            }
            if !matches!(section, "Options:" | "Arguments:" | "Commands:") || line.trim().is_empty()
            {
                continue;
            }
            // `  --name <LABEL>  Description`: the description follows a gap.
            let described = line
                .trim_start()
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(
                described,
                "`hookflow {}`: no help for `{}`",
                path.join(" "),
                line.trim()
            );
        }
    }
    let apply = &pages
        .iter()
        .find(|(p, _)| p == &["flows", "apply"])
        .unwrap()
        .1;
    assert!(apply.contains("[default: default]"), "{apply}");
}

#[test]
fn logs_have_colour_only_on_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    // Migrations log at info: a command that logs and ends.
    let migrate = |db: &str| {
        let mut c = hookflow(dir.path());
        c.env("HOOKFLOW_LOG_LEVEL", "info")
            .args(["--database", db, "migrate"]);
        c
    };
    let out = migrate("sqlite://a.db").output().unwrap();
    let err = text(&out.stderr);
    assert!(err.contains("applied SQLite migration"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "a pipe gets no escape codes: {err:?}"
    );

    // Under a terminal (util-linux `script` gives the command a pty).
    let on_tty = |db: &str, no_color: Option<&str>| {
        let bin = env!("CARGO_BIN_EXE_hookflow");
        let mut c = Command::new("script");
        c.current_dir(dir.path())
            .args([
                "-qec",
                &format!("{bin} --database sqlite://{db} migrate"),
                "/dev/null",
            ])
            .env("HOOKFLOW_LOG_LEVEL", "info")
            .env_remove("NO_COLOR");
        for (k, _) in std::env::vars() {
            if k.starts_with("HOOKFLOW_") && k != "HOOKFLOW_LOG_LEVEL" {
                c.env_remove(k);
            }
        }
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        text(&c.output().unwrap().stdout)
    };
    let coloured = on_tty("b.db", None);
    assert!(
        coloured.contains("applied SQLite migration"),
        "{coloured:?}"
    );
    assert!(
        coloured.contains('\u{1b}'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = on_tty("c.db", Some("1"));
    assert!(plain.contains("applied SQLite migration"), "{plain:?}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR is honoured: {plain:?}");
}

/// `hookflow keys revoke` while a server is under load with that key: no
/// request sent after the command returned succeeds.
#[test]
fn a_key_revoked_by_the_cli_is_refused_by_the_server_from_the_moment_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let created = run(
        dir.path(),
        &["keys", "create", "--scope", "admin", "--name", "load"],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let key = text(&created.stdout).lines().last().unwrap().to_owned();
    let listed = text(&run(dir.path(), &["keys", "list"]).stdout);
    let id = listed
        .lines()
        .find(|l| l.contains("\tload\t"))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_owned();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Answers so far: [accepted, refused], to wait on instead of sleeping.
    let counts = std::sync::Arc::new([
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ]);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (base, key, stop, counts) = (
            server.base.clone(),
            key.clone(),
            stop.clone(),
            counts.clone(),
        );
        clients.push(rt.spawn(async move {
            let http = reqwest::Client::new();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let status = http
                    .get(format!("{base}/v1/lists"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                counts[usize::from(status != 200)]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                seen.push((sent, status));
            }
            seen
        }));
    }
    let wait_for = |which: usize, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counts[which].load(std::sync::atomic::Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} answers of kind {which}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(0, 20); // the key is in use
    let out = run(dir.path(), &["keys", "revoke", &id]);
    let revoked = Instant::now();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // …and refused, repeatedly, after the command returned.
    wait_for(1, counts[1].load(std::sync::atomic::Ordering::Relaxed) + 20);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen: Vec<(Instant, u16)> = rt.block_on(async {
        let mut all = Vec::new();
        for c in clients {
            all.extend(c.await.unwrap());
        }
        all
    });
    let before = seen
        .iter()
        .filter(|(t, s)| *t < revoked && *s == 200)
        .count();
    let after_ok = seen
        .iter()
        .filter(|(t, s)| *t > revoked && *s == 200)
        .count();
    let after_refused = seen
        .iter()
        .filter(|(t, s)| *t > revoked && *s == 401)
        .count();
    assert!(before > 10, "the key was in use before: {before} calls");
    assert!(after_refused > 10, "calls went on after: {after_refused}");
    assert_eq!(after_ok, 0, "calls accepted after `keys revoke` returned");
    assert!(terminate(server).success());
}
