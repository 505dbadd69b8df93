//! The README's walk-through, run as a new user would paste it: every `sh`
//! block between `<!-- walkthrough:start -->` and `<!-- walkthrough:end -->`
//! goes to one bash, verbatim, against the real binary; every output the
//! README shows is compared with what the commands printed.
//!
//! What is compared: after a command, `# → ` starts the output shown and
//! `#   ` lines continue it; it must equal everything printed since the
//! previous shown output, line for line, where `…` matches anything and an
//! RFC 3339 time matches any time. A ```json block right after an `sh` block
//! is the pretty-printed output of that block's last command, compared as
//! JSON of the same shape (same keys, same values but for `…` and times).
//! So a command that prints something the README does not show fails too.
//!
//! `cargo build --release` is a no-op here (a shell function), and
//! `$PWD/target/release/hookflow` is the binary under test.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use regex::Regex;
use serde_json::Value;

const MARK: &str = "@@readme-expectation@@";

/// What the README says a stretch of commands prints.
#[derive(Debug)]
enum Shown {
    Lines(Vec<String>),
    Json(String),
}

/// The walk-through's script (with a marker echoed at each shown output)
/// and the outputs shown, in order.
fn walkthrough(readme: &str) -> (String, Vec<Shown>) {
    let start = readme
        .find("<!-- walkthrough:start -->")
        .expect("README has <!-- walkthrough:start -->");
    let end = readme
        .find("<!-- walkthrough:end -->")
        .expect("README has <!-- walkthrough:end -->");
    let mut script = String::new();
    let mut shown = Vec::new();
    let mut lines = readme[start..end].lines().peekable();
    let mut last_block_was_sh = false;
    while let Some(line) = lines.next() {
        let fence = line.trim_end();
        if fence == "```sh" || fence == "```json" {
            let mut body = Vec::new();
            for l in lines.by_ref() {
                if l.trim_end() == "```" {
                    break;
                }
                body.push(l);
            }
            if fence == "```json" {
                assert!(
                    last_block_was_sh,
                    "a ```json block must follow an ```sh block"
                );
                script.push_str(&format!("echo {MARK}\n"));
                shown.push(Shown::Json(body.join("\n")));
                last_block_was_sh = false;
                continue;
            }
            let mut open: Option<Vec<String>> = None;
            for l in body {
                if let Some(rest) = l.strip_prefix("# → ") {
                    if let Some(prev) = open.take() {
                        shown.push(Shown::Lines(prev));
                    }
                    script.push_str(&format!("echo {MARK}\n"));
                    open = Some(vec![rest.to_owned()]);
                } else if let (Some(rest), Some(o)) = (l.strip_prefix("#   "), open.as_mut()) {
                    o.push(rest.to_owned());
                } else {
                    if let Some(prev) = open.take() {
                        shown.push(Shown::Lines(prev));
                    }
                    script.push_str(l);
                    script.push('\n');
                }
            }
            if let Some(prev) = open.take() {
                shown.push(Shown::Lines(prev));
            }
            last_block_was_sh = true;
        } else if fence.starts_with("```") {
            last_block_was_sh = false;
        }
    }
    (script, shown)
}

/// `expected` as an anchored regex: `…` is anything, a time is any time.
fn pattern(expected: &str) -> Regex {
    let time = Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z").unwrap();
    let mut out = String::from("^");
    let mut last = 0;
    for m in time.find_iter(expected) {
        out.push_str(&literal(&expected[last..m.start()]));
        out.push_str(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z");
        last = m.end();
    }
    out.push_str(&literal(&expected[last..]));
    out.push('$');
    Regex::new(&out).unwrap()
}

fn literal(text: &str) -> String {
    text.split('…')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*?")
}

/// Whether `got` has the shape of `want`: same keys and lengths; strings
/// equal but for `…` and times; other values equal.
fn same_shape(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let (wk, gk): (Vec<_>, Vec<_>) = (w.keys().collect(), g.keys().collect());
            if wk != gk {
                return Err(format!("{at}: keys {wk:?} shown, {gk:?} printed"));
            }
            w.iter()
                .try_for_each(|(k, v)| same_shape(v, &g[k], &format!("{at}.{k}")))
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .try_for_each(|(i, (w, g))| same_shape(w, g, &format!("{at}[{i}]"))),
        (Value::String(w), Value::String(g)) if pattern(w).is_match(g) => Ok(()),
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{at}: {w} shown, {g} printed")),
    }
}

/// Ends the walk-through's process group (its server included), whatever
/// happened to the test.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn the_readme_walkthrough_prints_what_it_shows() {
    for tool in ["curl", "jq"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        assert!(
            found,
            "the README test needs `{tool}` (.ci/run installs it)"
        );
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (script, shown) = walkthrough(&readme);
    assert!(
        shown.len() >= 15,
        "only {} shown outputs found",
        shown.len()
    );

    // A folder that looks like the repository: target/release/hookflow is
    // the binary under test.
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_hookflow"),
        repo.path().join("target/release/hookflow"),
    )
    .unwrap();
    let mut bash = Command::new("bash");
    bash.current_dir(repo.path())
        .arg("-c")
        .arg(format!("cargo() {{ :; }}\n{script}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLOW_") || k == "RUST_LOG" {
            bash.env_remove(k);
        }
    }
    let child = bash.spawn().expect("bash");
    let _group = Group(child.id());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let segments: Vec<&str> = stdout.split(&format!("{MARK}\n")).collect();
    assert_eq!(
        segments.len(),
        shown.len() + 1,
        "the walk-through stopped early\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for (i, (want, got)) in shown.iter().zip(&segments).enumerate() {
        let result = match want {
            Shown::Lines(lines) => {
                let printed: Vec<&str> = got.lines().collect();
                if printed.len() != lines.len() {
                    Err(format!(
                        "{} line(s) shown, {} printed",
                        lines.len(),
                        printed.len()
                    ))
                } else {
                    lines
                        .iter()
                        .zip(&printed)
                        .find(|(w, g)| !pattern(w).is_match(g))
                        .map_or(Ok(()), |(w, g)| Err(format!("shown: {w}\nprinted: {g}")))
                }
            }
            Shown::Json(text) => {
                let want: Value = serde_json::from_str(text).expect("the README's JSON parses");
                serde_json::from_str::<Value>(got)
                    .map_err(|e| format!("not JSON ({e})"))
                    .and_then(|got| same_shape(&want, &got, "$"))
            }
        };
        if let Err(why) = result {
            panic!(
                "README output #{} differs: {why}\nshown: {want:?}\nprinted:\n{got}\nstderr:\n{stderr}",
                i + 1
            );
        }
    }
    assert!(
        segments.last().unwrap().trim().is_empty(),
        "printed after the last shown output: {}",
        segments.last().unwrap()
    );
    assert!(
        out.status.success(),
        "bash exited with {:?}\nstderr:\n{stderr}",
        out.status
    );
}

#[test]
fn a_walkthrough_output_that_differs_is_caught() {
    let readme = "<!-- walkthrough:start -->\n```sh\necho hi\n# → ho\necho '{\"a\":1}'\n```\n```json\n{\"a\": 2}\n```\n<!-- walkthrough:end -->";
    let (script, shown) = walkthrough(readme);
    assert_eq!(
        script,
        format!("echo hi\necho {MARK}\necho '{{\"a\":1}}'\necho {MARK}\n")
    );
    assert!(matches!(&shown[0], Shown::Lines(l) if l == &["ho"]));
    assert!(!pattern("ho").is_match("hi"));
    assert!(pattern("ls_… ls_…").is_match("ls_01abc ls_01def"));
    assert!(
        pattern("{\"at\":\"2026-11-22T13:19:50.896Z\"}")
            .is_match("{\"at\":\"2027-01-02T03:04:05.678Z\"}")
    );
    let want: Value = serde_json::from_str("{\"a\": 2}").unwrap();
    assert!(same_shape(&want, &serde_json::json!({"a": 1}), "$").is_err());
    assert!(same_shape(&want, &serde_json::json!({"a": 2, "b": 3}), "$").is_err());
    assert!(
        same_shape(
            &serde_json::json!({"id": "run_…"}),
            &serde_json::json!({"id": "run_01x"}),
            "$"
        )
        .is_ok()
    );
}
