//! The flow engine end to end: every trigger and step type, repeat, exit
//! conditions, waits across a simulated week, events resuming runs and
//! timeouts, flows edited mid-run, failing steps, cancellation, the runs
//! API and its tenant isolation. Time moves with the test clock; the tests
//! poll the runs API for the engine's result and never sleep for a timer.

use std::time::Duration;

use hookflow::domain::Scope;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp, assert_error, spawn_app};

both_stores!(
    an_inbound_run_walks_every_list_and_field_step,
    waits_cross_a_simulated_week,
    an_event_resumes_a_wait_and_a_timeout_takes_the_other_branch,
    events_start_flows_one_by_one_and_in_bulk,
    list_field_and_flow_triggers_start_runs,
    repeat_off_and_on,
    exit_conditions_end_a_waiting_run,
    a_flow_edited_mid_run_keeps_running_runs_on_their_version,
    a_failing_step_fails_its_run_only,
    runs_are_listed_filtered_cancelled_and_isolated,
    another_process_pausing_or_rotating_is_seen_at_once,
    a_paused_flow_holds_its_runs,
);

const DAY: Duration = Duration::from_secs(86_400);

async fn list(app: &TestApp, name: &str) -> String {
    let (s, l) = app
        .post(
            &app.admin_key,
            "/v1/lists",
            json!({"name": name, "fields": [
                {"name": "plan", "type": "text"},
                {"name": "score", "type": "number"},
                {"name": "paid", "type": "text"},
                {"name": "time_zone", "type": "text"}
            ]}),
        )
        .await;
    assert_eq!(s, 201, "{l}");
    l["id"].as_str().unwrap().to_owned()
}

/// Creates and activates a flow; its id and (for inbound flows) URL path.
async fn active_flow(app: &TestApp, doc: Value) -> (String, Option<String>) {
    let f = app.active_flow(doc).await;
    (f.id, f.url)
}

async fn call(app: &TestApp, url: &str, body: Value) -> Value {
    let (s, r) = app.post(&app.admin_key, url, body).await;
    assert_eq!(s, 202, "{r}");
    r
}

async fn run_of(app: &TestApp, url: &str, email: &str) -> String {
    let r = call(app, url, json!({"email": email})).await;
    r["run_id"].as_str().expect("a run started").to_owned()
}

fn outcomes(run: &Value) -> Vec<(String, String)> {
    run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["step"].as_str().unwrap().to_owned(),
                h["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn contact(app: &TestApp, id: &str) -> Value {
    let (s, c) = app.get(&app.admin_key, &format!("/v1/contacts/{id}")).await;
    assert_eq!(s, 200, "{c}");
    c
}

async fn lists_of(app: &TestApp, contact: &str) -> Vec<String> {
    let (s, l) = app
        .get(&app.admin_key, &format!("/v1/contacts/{contact}/lists"))
        .await;
    assert_eq!(s, 200, "{l}");
    let mut ids: Vec<String> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["list_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn an_inbound_run_walks_every_list_and_field_step(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let (a, l2, l3) = (
        list(&app, "A").await,
        list(&app, "B").await,
        list(&app, "C").await,
    );
    let (_, url) = active_flow(
        &app,
        json!({
            "name": "Walk",
            "trigger": {"type": "inbound", "list_id": a, "mapping": {"customer.score": "score"}},
            "steps": [
                {"id": "join", "type": "add_to_list", "list_id": l2, "next": "pause"},
                {"id": "pause", "type": "wait", "duration": "1s", "next": "check"},
                {"id": "check", "type": "condition", "conditions": [
                    {"field": "fields.score", "op": "gte", "value": 10},
                    {"field": "lists", "op": "contains", "value": l2},
                    {"field": "event.customer.tier", "op": "in", "value": ["gold", "silver"]}
                ], "yes": "upgrade", "no": "out"},
                {"id": "upgrade", "type": "update_field", "field": "plan", "value": "pro", "next": "move"},
                {"id": "move", "type": "move_to_list", "from_list_id": l2, "to_list_id": l3, "next": "leave"},
                {"id": "leave", "type": "remove_from_list", "list_id": a, "next": "won"},
                {"id": "won", "type": "goal", "name": "upgraded"},
                {"id": "out", "type": "exit"}
            ]
        }),
    )
    .await;
    let url = url.unwrap();
    let r = call(
        &app,
        &url,
        json!({"email": "ada@example.com", "customer": {"score": 12, "tier": "gold"}}),
    )
    .await;
    let (run, ct) = (
        r["run_id"].as_str().unwrap().to_owned(),
        r["contact_id"].as_str().unwrap().to_owned(),
    );
    let low = run_of(&app, &url, "bob@example.com").await;

    let waiting = app.wait_status(&run, "waiting").await;
    assert_eq!(waiting["step"], "pause");
    assert_eq!(
        outcomes(&waiting),
        pairs(&[("join", "next"), ("pause", "waiting")])
    );
    assert_eq!(lists_of(&app, &ct).await, {
        let mut v = vec![a.clone(), l2.clone()];
        v.sort();
        v
    });

    app.advance(Duration::from_secs(2));
    let done = app.wait_status(&run, "completed").await;
    assert_eq!(done["end_reason"], "goal");
    assert_eq!(
        outcomes(&done),
        pairs(&[
            ("join", "next"),
            ("pause", "waiting"),
            ("pause", "resumed"),
            ("check", "yes"),
            ("upgrade", "next"),
            ("move", "next"),
            ("leave", "next"),
            ("won", "goal")
        ])
    );
    let h = &done["history"];
    assert_eq!(h[7]["detail"]["goal"], "upgraded");
    assert_eq!(h[0]["type"], "add_to_list");
    assert_eq!(h[0]["input"]["list_id"], l2.as_str());
    assert!(h[1]["detail"]["until"].is_string(), "{h}");
    assert_eq!(contact(&app, &ct).await["fields"]["plan"], "pro");
    assert_eq!(lists_of(&app, &ct).await, vec![l3.clone()]);

    // Bob has no score and no tier: the condition's `no` branch exits.
    let out = app.wait_status(&low, "exited").await;
    assert_eq!(out["end_reason"], "exit_step");
    assert_eq!(outcomes(&out)[3], ("check".into(), "no".into()));
    app.stop().await;
}

async fn waits_cross_a_simulated_week(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let l = list(&app, "Week").await;
    // An absolute time 10 days after the test clock's now.
    let until = chrono::DateTime::from_timestamp_millis(app.engine.now() + 10 * 86_400_000)
        .unwrap()
        .to_rfc3339();
    let (_, url) = active_flow(
        &app,
        json!({
            "name": "Week",
            "trigger": {"type": "inbound", "list_id": l, "mapping": {"tz": "time_zone"}},
            "steps": [
                {"id": "week", "type": "wait", "duration": "1w", "next": "mark"},
                {"id": "mark", "type": "update_field", "field": "plan", "value": "week", "next": "day"},
                {"id": "day", "type": "wait", "until": until, "next": "morning"},
                {"id": "morning", "type": "wait", "time_of_day": "09:00", "next": "done"},
                {"id": "done", "type": "update_field", "field": "plan", "value": "done"}
            ]
        }),
    )
    .await;
    let url = url.unwrap();
    let r = call(
        &app,
        &url,
        json!({"email": "w@example.com", "tz": "Asia/Tokyo"}),
    )
    .await;
    let (run, ct) = (
        r["run_id"].as_str().unwrap().to_owned(),
        r["contact_id"].as_str().unwrap().to_owned(),
    );
    let w = app.wait_status(&run, "waiting").await;
    assert_eq!(w["step"], "week");

    // Six days: still waiting, nothing changed.
    app.advance(6 * DAY);
    app.engine.tick().await.unwrap();
    let w = app.wait_status(&run, "waiting").await;
    assert_eq!(w["step"], "week");
    assert!(contact(&app, &ct).await["fields"].get("plan").is_none());

    // The seventh day: the week is over; the run now waits for the date.
    app.advance(DAY + Duration::from_secs(1));
    let w = app.wait_run(&run, |r| r["step"] == "day").await;
    assert_eq!(w["status"], "waiting");
    assert_eq!(contact(&app, &ct).await["fields"]["plan"], "week");
    let due = chrono::DateTime::parse_from_rfc3339(w["due_at"].as_str().unwrap()).unwrap();
    assert_eq!(due, chrono::DateTime::parse_from_rfc3339(&until).unwrap());

    // Past the date: waits for 09:00 in the contact's zone (Tokyo).
    app.advance(3 * DAY);
    let w = app.wait_run(&run, |r| r["step"] == "morning").await;
    let due = chrono::DateTime::parse_from_rfc3339(w["due_at"].as_str().unwrap()).unwrap();
    let tokyo = due.with_timezone(&chrono::FixedOffset::east_opt(9 * 3600).unwrap());
    assert_eq!(tokyo.format("%H:%M").to_string(), "09:00", "{w}");
    let last = w["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["detail"]["time_zone"], "Asia/Tokyo", "{last}");
    assert_eq!(last["detail"]["time_zone_from"], "contact");

    app.advance(DAY);
    app.wait_status(&run, "completed").await;
    assert_eq!(contact(&app, &ct).await["fields"]["plan"], "done");
    app.stop().await;
}

async fn an_event_resumes_a_wait_and_a_timeout_takes_the_other_branch(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let l = list(&app, "Orders").await;
    let (_, url) = active_flow(
        &app,
        json!({
            "name": "Pay",
            "trigger": {"type": "inbound", "list_id": l},
            "steps": [
                {"id": "await", "type": "wait", "event": "paid", "timeout": "2d", "on_event": "thanks", "on_timeout": "remind"},
                {"id": "thanks", "type": "condition", "conditions": [{"field": "event.amount", "op": "gt", "value": 50}], "yes": "big", "no": "small"},
                {"id": "big", "type": "update_field", "field": "paid", "value": "big"},
                {"id": "small", "type": "update_field", "field": "paid", "value": "small"},
                {"id": "remind", "type": "update_field", "field": "paid", "value": "no"}
            ]
        }),
    )
    .await;
    let url = url.unwrap();
    let payer = call(&app, &url, json!({"email": "payer@example.com"})).await;
    let late = run_of(&app, &url, "late@example.com").await;
    let payer_run = payer["run_id"].as_str().unwrap().to_owned();
    let w = app.wait_status(&payer_run, "waiting").await;
    assert_eq!(w["waiting_for_event"], "paid");
    app.wait_status(&late, "waiting").await;

    // An event of another name, or for another contact, resumes nothing.
    let (s, e) = app
        .post(
            &app.admin_key,
            "/v1/events",
            json!({"name": "viewed", "email": "payer@example.com"}),
        )
        .await;
    assert_eq!(
        (s.as_u16(), e["runs_resumed"].as_u64()),
        (202, Some(0)),
        "{e}"
    );
    let (s, e) = app
        .post(
            &app.admin_key,
            "/v1/events",
            json!({"name": "paid", "email": "payer@example.com", "properties": {"amount": 80}}),
        )
        .await;
    assert_eq!(
        (s.as_u16(), e["runs_resumed"].as_u64()),
        (202, Some(1)),
        "{e}"
    );
    let done = app.wait_status(&payer_run, "completed").await;
    assert_eq!(
        outcomes(&done),
        pairs(&[
            ("await", "waiting"),
            ("await", "event"),
            ("thanks", "yes"),
            ("big", "next")
        ])
    );
    assert_eq!(
        done["event_data"]["amount"], 80,
        "event properties join the run's data"
    );
    assert_eq!(done["history"][1]["detail"]["event"]["name"], "paid");
    let ct = payer["contact_id"].as_str().unwrap();
    assert_eq!(contact(&app, ct).await["fields"]["paid"], "big");

    // The other contact never pays: after two days the timeout branch runs.
    app.advance(DAY);
    app.engine.tick().await.unwrap();
    assert_eq!(app.wait_status(&late, "waiting").await["step"], "await");
    app.advance(DAY + Duration::from_secs(1));
    let t = app.wait_status(&late, "completed").await;
    assert_eq!(
        outcomes(&t),
        pairs(&[
            ("await", "waiting"),
            ("await", "timeout"),
            ("remind", "next")
        ])
    );
    app.stop().await;
}

async fn events_start_flows_one_by_one_and_in_bulk(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let l = list(&app, "Signups").await;
    let (flow, _) = active_flow(
        &app,
        json!({
            "name": "On signup",
            "trigger": {"type": "event", "name": "signed_up"},
            "steps": [
                {"id": "check", "type": "condition", "conditions": [{"field": "event.plan", "op": "eq", "value": "pro"}], "yes": "join", "no": "end"},
                {"id": "join", "type": "add_to_list", "list_id": l},
                {"id": "end", "type": "exit"}
            ]
        }),
    )
    .await;
    // An ingest key may send events.
    let ingest = app.workspace_key("default", Scope::Ingest).await;
    let nul = app
        .post(
            &ingest,
            "/v1/events",
            json!({"name": "sign\u{0}ed", "email": "n@example.com"}),
        )
        .await;
    assert_error(&nul, 422, "nul_character");
    assert_eq!(nul.1["error"]["field"], "name");
    let (s, e) = app
        .post(&ingest, "/v1/events", json!({"name": "signed_up", "email": "one@example.com", "properties": {"plan": "pro"}, "time": "2026-01-02T03:04:05Z"}))
        .await;
    assert_eq!(s, 202, "{e}");
    let run = e["runs_started"][0].as_str().unwrap().to_owned();
    let r = app.wait_status(&run, "completed").await;
    assert_eq!(r["flow_id"], flow.as_str());
    assert_eq!(
        lists_of(&app, e["contact_id"].as_str().unwrap()).await,
        vec![l.clone()]
    );

    // A JSON array: one bad event is refused by index, the others recorded.
    let (s, bulk) = app
        .post(
            &ingest,
            "/v1/events/bulk",
            json!([
                {"name": "signed_up", "email": "two@example.com", "properties": {"plan": "free"}},
                {"name": "signed_up", "email": "not-an-email"},
                {"name": "signed_up", "email": "three@example.com", "properties": {"plan": "pro"}},
                {"name": "", "email": "four@example.com"},
                {"name": "signed_up", "email": "five@example.com", "properties": [1]},
                {"name": "signed_up", "email": "six@example.com", "colour": "red"}
            ]),
        )
        .await;
    assert_eq!(s, 200, "{bulk}");
    assert_eq!(
        (bulk["accepted"].as_u64(), bulk["rejected"].as_u64()),
        (Some(2), Some(4)),
        "{bulk}"
    );
    let res = bulk["results"].as_array().unwrap();
    let codes: Vec<(&str, &str)> = res
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap(),
                r["error"]["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            ("accepted", ""),
            ("rejected", "invalid_email"),
            ("accepted", ""),
            ("rejected", "invalid_event_name"),
            ("rejected", "invalid_properties"),
            ("rejected", "unknown_field")
        ]
    );
    assert_eq!(res[1]["error"]["field"], "email");
    for i in [0, 2] {
        let run = res[i]["runs_started"][0].as_str().unwrap();
        app.wait_run(run, |r| {
            r["status"] == "completed" || r["status"] == "exited"
        })
        .await;
    }
    let (s, rejected_contact) = app
        .get(&app.admin_key, "/v1/contacts/lookup?email=four@example.com")
        .await;
    assert_eq!(s, 404, "a refused event stores nothing: {rejected_contact}");

    // NDJSON, blank lines ignored; a bad line is refused alone.
    let body = "{\"name\":\"signed_up\",\"email\":\"seven@example.com\"}\n\n{oops\n{\"name\":\"other\",\"email\":\"eight@example.com\"}\n";
    let resp = app
        .http
        .post(format!("{}/v1/events/bulk", app.base))
        .bearer_auth(&ingest)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let nd: Value = resp.json().await.unwrap();
    assert_eq!(
        (nd["accepted"].as_u64(), nd["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{nd}"
    );
    assert_eq!(nd["results"][1]["error"]["code"], "malformed_json");
    assert!(
        nd["results"][2]["runs_started"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Batch-level problems are answered as a whole.
    assert_error(
        &app.post(&ingest, "/v1/events/bulk", json!([])).await,
        422,
        "empty_batch",
    );
    assert_error(
        &app.post(&ingest, "/v1/events/bulk", json!({"name": "x"}))
            .await,
        422,
        "invalid_body",
    );
    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"name": "n", "email": format!("u{i}@example.com")}))
        .collect();
    assert_error(
        &app.post(&ingest, "/v1/events/bulk", Value::Array(many))
            .await,
        422,
        "batch_too_large",
    );
    let resp = app
        .http
        .post(format!("{}/v1/events/bulk", app.base))
        .bearer_auth(&ingest)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    app.stop().await;
}

async fn list_field_and_flow_triggers_start_runs(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let (vip, other) = (list(&app, "VIP").await, list(&app, "Other").await);
    let (on_list, _) = active_flow(
        &app,
        json!({"name": "Joined VIP", "trigger": {"type": "list_added", "list_id": vip},
               "steps": [{"id": "tag", "type": "update_field", "field": "score", "value": 1}]}),
    )
    .await;
    let (on_pro, _) = active_flow(
        &app,
        json!({"name": "Went pro", "trigger": {"type": "field_changed", "field": "plan", "to": "pro"},
               "steps": [{"id": "score", "type": "update_field", "field": "score", "value": 99}]}),
    )
    .await;
    // A flow started by other flows, and a field trigger that starts it.
    let (child, _) = active_flow(
        &app,
        json!({"name": "Child", "trigger": {"type": "flow"},
               "steps": [{"id": "into_other", "type": "add_to_list", "list_id": other}]}),
    )
    .await;
    let (parent, _) = active_flow(
        &app,
        json!({"name": "Any plan change", "trigger": {"type": "field_changed", "field": "plan"},
               "steps": [{"id": "go", "type": "start_flow", "flow_id": child}]}),
    )
    .await;

    // Added to the list by the contacts API: the list flow starts.
    let (s, c) = app
        .post(
            &k,
            "/v1/contacts",
            json!({"email": "vip@example.com", "lists": [vip]}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let ct = c["id"].as_str().unwrap().to_owned();
    let runs = |flow: &str| format!("/v1/runs?flow_id={flow}&contact_id={ct}");
    let (_, page) = app.get(&k, &runs(&on_list)).await;
    let run = page["data"][0]["id"]
        .as_str()
        .expect("a list_added run")
        .to_owned();
    app.wait_status(&run, "completed").await;
    assert_eq!(contact(&app, &ct).await["fields"]["score"], 1);

    // A field change to any value starts `parent`, which starts `child`.
    let (s, _) = app
        .call(
            &k,
            Method::PATCH,
            &format!("/v1/contacts/{ct}"),
            Some(json!({"fields": {"plan": "basic"}})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, page) = app.get(&k, &runs(&parent)).await;
    let p = page["data"][0]["id"]
        .as_str()
        .expect("a field_changed run")
        .to_owned();
    assert_eq!(
        page["data"][0]["event_data"],
        json!({"field": "plan", "value": "basic"})
    );
    app.wait_status(&p, "completed").await;
    let (_, page) = app.get(&k, &runs(&child)).await;
    let c_run = page["data"][0]["id"]
        .as_str()
        .expect("a run started by start_flow")
        .to_owned();
    app.wait_status(&c_run, "completed").await;
    assert!(lists_of(&app, &ct).await.contains(&other));
    // "Went pro" fires only for the value `pro`.
    let (_, page) = app.get(&k, &runs(&on_pro)).await;
    assert!(page["data"].as_array().unwrap().is_empty(), "{page}");
    let (s, _) = app
        .call(
            &k,
            Method::PATCH,
            &format!("/v1/contacts/{ct}"),
            Some(json!({"fields": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, page) = app.get(&k, &runs(&on_pro)).await;
    let pro = page["data"][0]["id"]
        .as_str()
        .expect("a run for `to: pro`")
        .to_owned();
    app.wait_status(&pro, "completed").await;
    assert_eq!(contact(&app, &ct).await["fields"]["score"], 99);
    // The "any change" flow does not repeat: still one run of it, one of child.
    let (_, page) = app
        .get(&k, &format!("/v1/runs?contact_id={ct}&status=completed"))
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 4, "{page}");

    // Added to a list by a flow's step: also a list_added trigger.
    let (_, adder) = active_flow(
        &app,
        json!({"name": "Adder", "trigger": {"type": "event", "name": "promote"},
               "steps": [{"id": "add", "type": "add_to_list", "list_id": vip}]}),
    )
    .await;
    let _ = adder;
    let (s, e) = app
        .post(
            &k,
            "/v1/events",
            json!({"name": "promote", "email": "later@example.com"}),
        )
        .await;
    assert_eq!(s, 202);
    app.wait_status(e["runs_started"][0].as_str().unwrap(), "completed")
        .await;
    let later = e["contact_id"].as_str().unwrap();
    let (_, page) = app
        .get(
            &k,
            &format!("/v1/runs?flow_id={on_list}&contact_id={later}"),
        )
        .await;
    let r = page["data"][0]["id"]
        .as_str()
        .expect("list_added by a flow step")
        .to_owned();
    app.wait_status(&r, "completed").await;
    app.stop().await;
}

async fn repeat_off_and_on(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let l = list(&app, "Repeat").await;
    let doc = |name: &str, repeat: bool| {
        json!({"name": name, "trigger": {"type": "inbound", "list_id": l}, "repeat": repeat,
               "steps": [{"id": "w", "type": "wait", "duration": "1h", "next": "g"},
                         {"id": "g", "type": "goal", "name": "done"}]})
    };
    let (_, once) = active_flow(&app, doc("Once", false)).await;
    let (_, again) = active_flow(&app, doc("Again", true)).await;
    let (once, again) = (once.unwrap(), again.unwrap());

    let first = run_of(&app, &once, "r@example.com").await;
    let r = call(&app, &once, json!({"email": "r@example.com"})).await;
    assert_eq!(
        (r["run_started"].as_bool(), r["reason"].as_str()),
        (Some(false), Some("already_entered"))
    );
    let a1 = run_of(&app, &again, "r@example.com").await;
    let r = call(&app, &again, json!({"email": "r@example.com"})).await;
    assert_eq!(
        (r["run_started"].as_bool(), r["reason"].as_str()),
        (Some(false), Some("run_active"))
    );

    app.wait_status(&first, "waiting").await;
    app.wait_status(&a1, "waiting").await;
    app.advance(Duration::from_secs(3601));
    app.wait_status(&first, "completed").await;
    app.wait_status(&a1, "completed").await;
    // Finished: `once` still refuses, `again` starts a second run.
    let r = call(&app, &once, json!({"email": "r@example.com"})).await;
    assert_eq!(r["reason"], "already_entered");
    let a2 = run_of(&app, &again, "r@example.com").await;
    assert_ne!(a1, a2);
    app.stop().await;
}

async fn exit_conditions_end_a_waiting_run(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let l = list(&app, "Trial").await;
    let (_, url) = active_flow(
        &app,
        json!({"name": "Nurture", "trigger": {"type": "inbound", "list_id": l},
               "exit_conditions": [{"field": "fields.plan", "op": "eq", "value": "pro"},
                                   {"field": "status", "op": "eq", "value": "unsubscribed"}],
               "steps": [{"id": "w", "type": "wait", "duration": "3d", "next": "nudge"},
                         {"id": "nudge", "type": "update_field", "field": "paid", "value": "nudged"}]}),
    )
    .await;
    let url = url.unwrap();
    let r = call(&app, &url, json!({"email": "buyer@example.com"})).await;
    let (run, ct) = (
        r["run_id"].as_str().unwrap().to_owned(),
        r["contact_id"].as_str().unwrap().to_owned(),
    );
    let stays = run_of(&app, &url, "stays@example.com").await;
    app.wait_status(&run, "waiting").await;
    app.wait_status(&stays, "waiting").await;

    // A change that meets no exit condition leaves the run waiting.
    let (s, _) = app
        .call(
            &k,
            Method::PATCH,
            &format!("/v1/contacts/{ct}"),
            Some(json!({"fields": {"score": 3}})),
        )
        .await;
    assert_eq!(s, 200);
    app.engine.tick().await.unwrap();
    let still = app.wait_status(&run, "waiting").await;
    assert_eq!(
        outcomes(&still).len(),
        1,
        "a recheck adds no history: {still}"
    );

    // The contact buys while the run waits: it ends without the clock moving.
    let (s, _) = app
        .call(
            &k,
            Method::PATCH,
            &format!("/v1/contacts/{ct}"),
            Some(json!({"fields": {"plan": "pro"}})),
        )
        .await;
    assert_eq!(s, 200);
    let ended = app.wait_status(&run, "exited").await;
    assert_eq!(ended["end_reason"], "exit_condition");
    assert_eq!(
        outcomes(&ended).last().unwrap(),
        &("w".to_owned(), "exit_condition".to_owned())
    );

    // The other run goes on when its time comes.
    app.advance(3 * DAY);
    app.wait_status(&stays, "completed").await;
    assert!(
        contact(&app, &ct).await["fields"].get("paid").is_none(),
        "the exited run did not nudge"
    );
    app.stop().await;
}

async fn a_flow_edited_mid_run_keeps_running_runs_on_their_version(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let l = list(&app, "Versions").await;
    let doc = |value: &str| {
        json!({"name": "Edited", "trigger": {"type": "inbound", "list_id": l},
               "steps": [{"id": "w", "type": "wait", "duration": "1d", "next": "set"},
                         {"id": "set", "type": "update_field", "field": "plan", "value": value}]})
    };
    let (flow, url) = active_flow(&app, doc("v1")).await;
    let url = url.unwrap();
    let r1 = call(&app, &url, json!({"email": "old@example.com"})).await;
    let run1 = r1["run_id"].as_str().unwrap().to_owned();
    app.wait_status(&run1, "waiting").await;

    let (s, f) = app
        .call(
            &k,
            Method::PUT,
            &format!("/v1/flows/{flow}"),
            Some(doc("v2")),
        )
        .await;
    assert_eq!((s.as_u16(), f["version"].as_i64()), (200, Some(2)), "{f}");
    let r2 = call(&app, &url, json!({"email": "new@example.com"})).await;
    let run2 = r2["run_id"].as_str().unwrap().to_owned();
    app.wait_status(&run2, "waiting").await;

    app.advance(DAY + Duration::from_secs(1));
    let d1 = app.wait_status(&run1, "completed").await;
    let d2 = app.wait_status(&run2, "completed").await;
    assert_eq!(
        (d1["flow_version"].as_i64(), d2["flow_version"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        contact(&app, r1["contact_id"].as_str().unwrap()).await["fields"]["plan"],
        "v1"
    );
    assert_eq!(
        contact(&app, r2["contact_id"].as_str().unwrap()).await["fields"]["plan"],
        "v2"
    );
    app.stop().await;
}

async fn a_failing_step_fails_its_run_only(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let (l, doomed) = (list(&app, "Keep").await, list(&app, "Doomed").await);
    let (_, url) = active_flow(
        &app,
        json!({"name": "Fragile", "trigger": {"type": "inbound", "list_id": l},
               "steps": [{"id": "w", "type": "wait", "duration": "1h", "next": "mark"},
                         {"id": "mark", "type": "update_field", "field": "plan", "value": "marked", "next": "add"},
                         {"id": "add", "type": "add_to_list", "list_id": doomed, "next": "never"},
                         {"id": "never", "type": "update_field", "field": "paid", "value": "never"}]}),
    )
    .await;
    let (_, ok_url) = active_flow(
        &app,
        json!({"name": "Sturdy", "trigger": {"type": "inbound", "list_id": l},
               "steps": [{"id": "w", "type": "wait", "duration": "1h", "next": "g"},
                         {"id": "g", "type": "goal", "name": "ok"}]}),
    )
    .await;
    let r = call(&app, &url.unwrap(), json!({"email": "f@example.com"})).await;
    let (run, ct) = (
        r["run_id"].as_str().unwrap().to_owned(),
        r["contact_id"].as_str().unwrap().to_owned(),
    );
    let fine = run_of(&app, &ok_url.unwrap(), "g@example.com").await;
    app.wait_status(&run, "waiting").await;
    app.wait_status(&fine, "waiting").await;
    let (s, _) = app
        .call(&k, Method::DELETE, &format!("/v1/lists/{doomed}"), None)
        .await;
    assert_eq!(s, 204);

    app.advance(Duration::from_secs(3601));
    let failed = app.wait_status(&run, "failed").await;
    assert_eq!(failed["end_reason"], "failed");
    assert_eq!(failed["step"], "add");
    let last = failed["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["step"].as_str(), last["outcome"].as_str()),
        (Some("add"), Some("failed"))
    );
    assert!(last["error"].as_str().unwrap().contains(&doomed), "{last}");
    // Steps before the failure happened; the one after did not.
    let fields = contact(&app, &ct).await["fields"].clone();
    assert_eq!(fields["plan"], "marked");
    assert!(fields.get("paid").is_none());
    app.wait_status(&fine, "completed").await;
    app.stop().await;
}

async fn runs_are_listed_filtered_cancelled_and_isolated(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let l = list(&app, "Runs").await;
    let (flow, url) = active_flow(
        &app,
        json!({"name": "Long", "trigger": {"type": "inbound", "list_id": l},
               "steps": [{"id": "w", "type": "wait", "duration": "30d", "next": "set"},
                         {"id": "set", "type": "update_field", "field": "plan", "value": "late"}]}),
    )
    .await;
    let url = url.unwrap();
    let mut runs = Vec::new();
    for i in 0..3 {
        runs.push(run_of(&app, &url, &format!("p{i}@example.com")).await);
    }
    for r in &runs {
        app.wait_status(r, "waiting").await;
    }
    let (s, page) = app
        .get(
            &k,
            &format!("/v1/runs?flow_id={flow}&status=waiting&limit=2"),
        )
        .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let (_, next) = app
        .get(
            &k,
            &format!(
                "/v1/runs?flow_id={flow}&status=waiting&limit=2&cursor={}",
                page["next_cursor"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(next["data"].as_array().unwrap().len(), 1);
    assert!(next["next_cursor"].is_null());

    // Cancel one: it executes nothing more, and cannot be cancelled twice.
    let (s, c) = app
        .post(&k, &format!("/v1/runs/{}/cancel", runs[0]), json!({}))
        .await;
    assert_eq!(
        (s.as_u16(), c["status"].as_str(), c["end_reason"].as_str()),
        (200, Some("cancelled"), Some("cancelled")),
        "{c}"
    );
    assert_error(
        &app.post(&k, &format!("/v1/runs/{}/cancel", runs[0]), json!({}))
            .await,
        409,
        "run_finished",
    );
    app.advance(31 * DAY);
    app.wait_status(&runs[1], "completed").await;
    app.wait_status(&runs[2], "completed").await;
    let cancelled = app.wait_status(&runs[0], "cancelled").await;
    assert_eq!(outcomes(&cancelled).len(), 1);
    let (_, done) = app
        .get(&k, &format!("/v1/runs?flow_id={flow}&status=completed"))
        .await;
    assert_eq!(done["data"].as_array().unwrap().len(), 2);

    // Bad filters are named; another workspace sees none of it.
    assert_error(
        &app.get(&k, "/v1/runs?status=sleeping").await,
        400,
        "invalid_query",
    );
    let bad = app.get(&k, "/v1/runs?flow_id=nope").await;
    assert_error(&bad, 400, "invalid_id");
    assert_eq!(bad.1["error"]["field"], "flow_id");
    let other = app.workspace_key("other", Scope::Admin).await;
    assert_error(
        &app.get(&other, &format!("/v1/runs/{}", runs[1])).await,
        404,
        "not_found",
    );
    assert_error(
        &app.post(&other, &format!("/v1/runs/{}/cancel", runs[1]), json!({}))
            .await,
        404,
        "not_found",
    );
    let (_, theirs) = app.get(&other, "/v1/runs").await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0);
    let (_, theirs) = app.get(&other, &format!("/v1/runs?flow_id={flow}")).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0);
    // Their events never touch this workspace's contacts or runs.
    let (s, e) = app
        .post(
            &other,
            "/v1/events",
            json!({"name": "paid", "email": "p1@example.com"}),
        )
        .await;
    assert_eq!(s, 202);
    assert_ne!(e["contact_id"], cancelled["contact_id"]);
    assert_eq!(e["runs_resumed"], 0);
    app.stop().await;
}

/// The API caches flows by inbound token for a moment; a change made by
/// another process (here: straight through the store, as `hookflow` CLI or a
/// second server would) must still take effect on the next call.
async fn another_process_pausing_or_rotating_is_seen_at_once(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let l = list(&app, "Cache").await;
    let (flow, url) = active_flow(
        &app,
        json!({"name": "Cached", "trigger": {"type": "inbound", "list_id": l},
               "steps": [{"id": "g", "type": "goal", "name": "in"}]}),
    )
    .await;
    let url = url.unwrap();
    call(&app, &url, json!({"email": "a@example.com"})).await; // now cached
    let ws = app.store.workspace_by_name("default").await.unwrap().id;
    let id = hookflow::domain::FlowId::parse(&flow).unwrap();
    app.store
        .set_flow_status(&ws, &id, hookflow::store::FlowStatus::Paused, None)
        .await
        .unwrap();
    assert_error(
        &app.post(&app.admin_key, &url, json!({"email": "b@example.com"}))
            .await,
        409,
        "flow_not_active",
    );
    app.store
        .set_flow_status(&ws, &id, hookflow::store::FlowStatus::Active, None)
        .await
        .unwrap();
    call(&app, &url, json!({"email": "c@example.com"})).await;
    app.store
        .rotate_inbound_token(&ws, &id, "rotated-elsewhere-0123456789abcdef".into())
        .await
        .unwrap();
    assert_error(
        &app.post(&app.admin_key, &url, json!({"email": "d@example.com"}))
            .await,
        404,
        "not_found",
    );
    let (s, _) = app
        .get(&app.admin_key, "/v1/contacts/lookup?email=d@example.com")
        .await;
    assert_eq!(s, 404, "a refused call stores nothing");
    app.stop().await;
}

async fn a_paused_flow_holds_its_runs(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let l = list(&app, "Hold").await;
    let (flow, url) = active_flow(
        &app,
        json!({"name": "Held", "trigger": {"type": "inbound", "list_id": l},
               "steps": [{"id": "w", "type": "wait", "duration": "1h", "next": "set"},
                         {"id": "set", "type": "update_field", "field": "plan", "value": "after"}]}),
    )
    .await;
    let run = run_of(&app, &url.unwrap(), "h@example.com").await;
    app.wait_status(&run, "waiting").await;
    let (s, _) = app
        .post(&k, &format!("/v1/flows/{flow}/pause"), json!({}))
        .await;
    assert_eq!(s, 200);
    app.advance(Duration::from_secs(7200));
    app.engine.tick().await.unwrap();
    assert_eq!(
        app.wait_status(&run, "waiting").await["step"],
        "w",
        "paused: not executed"
    );
    let (s, _) = app
        .post(&k, &format!("/v1/flows/{flow}/activate"), json!({}))
        .await;
    assert_eq!(s, 200);
    app.engine.wake();
    app.wait_status(&run, "completed").await;
    app.stop().await;
}
