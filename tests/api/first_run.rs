//! What a new user meets first, through the API: an email taken from any
//! JSON path, reserved field names, errors that say what to fix, and the
//! inbound-call log that shows what arrived.

use std::time::{Duration, Instant};

use hookflow::api::ApiOptions;
use hookflow::domain::Scope;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TEST_BODY_LIMIT, TestApp, assert_error, spawn_app, spawn_app_with};

both_stores!(
    an_email_mapped_from_a_nested_path_is_the_contacts_email,
    list_fields_may_not_be_named_email_or_phone,
    a_too_large_body_is_told_the_limit_and_the_setting,
    the_inbound_call_log_shows_accepted_and_refused_calls_as_received,
    the_inbound_call_log_keeps_the_newest_calls_per_flow
);

/// A list and an active inbound flow into it with `mapping`.
async fn inbound_flow(app: &TestApp, mapping: Value) -> (String, String) {
    let k = &app.admin_key;
    let (s, l) = app
        .post(
            k,
            "/v1/lists",
            json!({"name": "Buyers", "fields": [{"name": "first_name", "type": "text"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{l}");
    let f = app
        .active_flow(json!({"name": "Paid", "trigger": {"type": "inbound",
            "list_id": l["id"], "mapping": mapping},
            "steps": [{"id": "done", "type": "exit"}]}))
        .await;
    (f.id, f.url.unwrap())
}

async fn hook(app: &TestApp, url: &str, body: Value) -> (StatusCode, Value) {
    let resp = app
        .http
        .post(format!("{}{url}", app.base))
        .header("X-Api-Key", &app.admin_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

async fn an_email_mapped_from_a_nested_path_is_the_contacts_email(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let (_, url) = inbound_flow(
        &app,
        json!({"data.object.customer_email": "email", "data.object.name": "first_name"}),
    )
    .await;
    // Stripe's shape: no top-level `email`.
    let (s, body) = hook(
        &app,
        &url,
        json!({"type": "checkout.session.completed",
               "data": {"object": {"customer_email": "  Ada@Example.COM ", "name": "Ada"}}}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let (s, c) = app
        .get(&app.admin_key, "/v1/contacts/lookup?email=ada@example.com")
        .await;
    assert_eq!(s, StatusCode::OK, "the mapped email is normalised: {c}");
    assert_eq!(c["fields"]["first_name"], "Ada");
    assert_eq!(c["id"], body["contact_id"]);

    // The mapped path wins over a top-level `email`, and its errors name it.
    let got = hook(
        &app,
        &url,
        json!({"email": "other@example.com", "data": {"object": {"customer_email": "not-an-email"}}}),
    )
    .await;
    assert_error(&got, 422, "invalid_email");
    assert_eq!(got.1["error"]["field"], "data.object.customer_email");
    let got = hook(&app, &url, json!({"email": "top@example.com", "data": {}})).await;
    assert_error(&got, 422, "missing_field");
    assert_eq!(got.1["error"]["field"], "data.object.customer_email");
    assert_eq!(
        got.1["error"]["message"],
        "email is required: this flow maps `data.object.customer_email` onto the email, and the body has no value there"
    );

    // Without a mapping onto `email`, the top-level `email` is the default,
    // and its absence says how to map one.
    let k = &app.admin_key;
    let (_, l) = app.post(k, "/v1/lists", json!({"name": "Plain"})).await;
    let plain = app
        .active_flow(
            json!({"name": "Plain", "trigger": {"type": "inbound", "list_id": l["id"]},
            "steps": [{"id": "done", "type": "exit"}]}),
        )
        .await;
    let got = hook(
        &app,
        plain.url.as_ref().unwrap(),
        json!({"customer": {"email": "x@y.co"}}),
    )
    .await;
    assert_error(&got, 422, "missing_field");
    assert_eq!(got.1["error"]["field"], "email");
    assert_eq!(
        got.1["error"]["message"],
        "email is required (or map a body path onto `email` in the flow's trigger)"
    );

    // Two paths onto one email are refused when the flow is saved.
    let got = app
        .post(k, "/v1/flows", json!({"name": "Two", "trigger": {"type": "inbound", "list_id": l["id"],
            "mapping": {"a.email": "email", "b.email": "email"}}, "steps": [{"id": "done", "type": "exit"}]}))
        .await;
    assert_error(&got, 422, "invalid_flow");
    assert_eq!(got.1["error"]["field"], "trigger.mapping.b.email");
    assert_eq!(
        got.1["error"]["message"],
        "`trigger.mapping.b.email`: `a.email` and `b.email` both map onto `email`; a contact has one email"
    );
    app.stop().await;
}

async fn list_fields_may_not_be_named_email_or_phone(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = &app.admin_key;
    let got = app
        .post(
            k,
            "/v1/lists",
            json!({"name": "L", "fields": [{"name": "email", "type": "text"}]}),
        )
        .await;
    assert_error(&got, 422, "invalid_field_definition");
    assert_eq!(got.1["error"]["field"], "fields[0].name");
    assert_eq!(
        got.1["error"]["message"],
        "`email` is reserved: every contact has its own email; to take it from an inbound call, map the body's path onto `email` in the flow's trigger mapping"
    );
    let (s, l) = app.post(k, "/v1/lists", json!({"name": "L"})).await;
    assert_eq!(s, StatusCode::CREATED, "{l}");
    let got = app
        .post(
            k,
            &format!("/v1/lists/{}/fields", l["id"].as_str().unwrap()),
            json!({"name": "Phone", "type": "text"}),
        )
        .await;
    assert_error(&got, 422, "invalid_field_definition");
    assert_eq!(got.1["error"]["field"], "name");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("`Phone` is reserved: every contact has its own phone"),
        "{}",
        got.1
    );
    let (_, list) = app
        .get(k, &format!("/v1/lists/{}", l["id"].as_str().unwrap()))
        .await;
    assert_eq!(list["fields"], json!([]), "nothing was added");
    app.stop().await;
}

async fn a_too_large_body_is_told_the_limit_and_the_setting(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let huge = format!(
        "{{\"email\":\"a@b.co\",\"x\":\"{}\"}}",
        "a".repeat(TEST_BODY_LIMIT)
    );
    let post = |path: &str, body: Vec<u8>| {
        app.http
            .post(format!("{}{path}", app.base))
            .bearer_auth(&app.admin_key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let resp = post("/v1/contacts", huge.into_bytes()).await.unwrap();
    let got = (resp.status(), resp.json::<Value>().await.unwrap());
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(
        got.1["error"]["message"],
        format!(
            "the body is larger than the limit of {TEST_BODY_LIMIT} bytes; the `max_body_bytes` setting (HOOKFLOW_MAX_BODY_BYTES) raises it"
        )
    );
    // The bulk endpoint has its own, fixed limit, and says so.
    let bulk_limit = hookflow::api::events::MAX_BULK_BYTES;
    let resp = post("/v1/events/bulk", vec![b' '; bulk_limit + 1])
        .await
        .unwrap();
    let got = (resp.status(), resp.json::<Value>().await.unwrap());
    assert_error(&got, 413, "payload_too_large");
    assert_eq!(
        got.1["error"]["message"],
        format!(
            "the body is larger than the limit of {bulk_limit} bytes; it is fixed for bulk requests: send the events in several requests"
        )
    );
    app.stop().await;
}

/// Polls the flow's inbound-call log until it holds `n` calls (the log is
/// written just after each answer), then returns it.
async fn logged(app: &TestApp, flow: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = app
            .get(&app.admin_key, &format!("/v1/flows/{flow}/inbound-calls"))
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let calls = body["data"].as_array().unwrap().clone();
        if calls.len() >= n {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "the log did not reach {n} calls: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn the_inbound_call_log_shows_accepted_and_refused_calls_as_received(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let (flow, url) = inbound_flow(&app, json!({"customer.name": "first_name"})).await;
    let target = format!("{}{url}", app.base);
    let sent = r#"{"email":"ada@example.com","customer":{"name":"Ada"}}"#;
    // Sends `body` as JSON bytes, exactly, with the admin key or none.
    let raw = |body: &'static str, with_key: bool| {
        let mut req = app
            .http
            .post(&target)
            .header("Content-Type", "application/json")
            .body(body);
        if with_key {
            req = req.header("X-Api-Key", &app.admin_key);
        }
        req.send()
    };
    // 1. accepted
    let resp = raw(sent, true).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let accepted: Value = resp.json().await.unwrap();
    // 2. refused for its data: the body is kept, to see why
    let bad = r#"{"email":"nope","customer":{"name":"Bob"}}"#;
    let resp = raw(bad, true).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // 3. no key: refused before the body is read
    let resp = raw(sent, false).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let calls = logged(&app, &flow, 3).await;
    assert_eq!(calls.len(), 3, "{calls:#?}");
    // Newest first.
    assert_eq!(calls[0]["status"], 401);
    assert_eq!(calls[0]["code"], "unauthorized");
    assert_eq!(calls[0]["body"], Value::Null);
    assert_eq!(calls[1]["status"], 422);
    assert_eq!(calls[1]["code"], "invalid_email");
    assert_eq!(calls[1]["message"], "email has no `@`");
    assert_eq!(calls[1]["body"], bad, "the body exactly as received");
    assert_eq!(calls[1]["run_id"], Value::Null);
    assert_eq!(calls[2]["status"], 202);
    assert_eq!(calls[2]["code"], "run_started");
    assert_eq!(calls[2]["body"], sent);
    assert_eq!(calls[2]["body_bytes"], sent.len());
    assert_eq!(calls[2]["body_truncated"], false);
    assert_eq!(calls[2]["run_id"], accepted["run_id"]);
    assert_eq!(calls[2]["contact_id"], accepted["contact_id"]);
    for c in &calls {
        assert_eq!(c["caller_ip"], "127.0.0.1");
        assert!(c["received_at"].as_str().unwrap().ends_with('Z'), "{c}");
    }
    // Callers who prove nothing are logged a few times a second per flow,
    // not once per request: 20 calls without a key, then one with it.
    for _ in 0..20 {
        let resp = raw(r#"{"email":"x@example.com"}"#, false).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let (s, sentinel) = hook(&app, &url, json!({"email": "sentinel@example.com"})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{sentinel}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let calls = loop {
        let calls = logged(&app, &flow, 1).await;
        if calls[0]["contact_id"] == sentinel["contact_id"] {
            break calls;
        }
        assert!(Instant::now() < deadline, "{calls:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let unauthenticated = calls.iter().filter(|c| c["status"] == 401).count();
    assert!(
        (1..=6).contains(&unauthenticated),
        "{unauthenticated} of 21 unauthenticated calls logged"
    );
    assert!(
        calls
            .iter()
            .filter(|c| c["status"] == 401)
            .all(|c| c["body"].is_null())
    );

    // No header is kept: the key is nowhere in the database's files (keys
    // are stored hashed, so it must appear in no table at all).
    if let Some(path) = app.db_url().strip_prefix("sqlite://") {
        for file in [path.to_owned(), format!("{path}-wal")] {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let key = app.admin_key.as_bytes();
            assert!(
                !bytes.windows(key.len()).any(|w| w == key),
                "the API key is stored in {file}"
            );
        }
    }

    // Another workspace sees no such flow; a bad limit is named.
    let other = app.workspace_key("other", Scope::Admin).await;
    let got = app
        .get(&other, &format!("/v1/flows/{flow}/inbound-calls"))
        .await;
    assert_error(&got, 404, "not_found");
    let got = app
        .get(
            &app.admin_key,
            &format!("/v1/flows/{flow}/inbound-calls?limit=0"),
        )
        .await;
    assert_error(&got, 400, "invalid_limit");
    let (s, one) = app
        .get(
            &app.admin_key,
            &format!("/v1/flows/{flow}/inbound-calls?limit=1"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    app.stop().await;
}

async fn the_inbound_call_log_keeps_the_newest_calls_per_flow(b: Backend) {
    let Some(app) = spawn_app_with(
        b,
        ApiOptions {
            inbound_log_per_flow: 3,
            ..ApiOptions::default()
        },
    )
    .await
    else {
        return;
    };
    let (flow, url) = inbound_flow(&app, json!({})).await;
    for i in 0..7 {
        let (s, body) = hook(&app, &url, json!({"email": format!("c{i}@example.com")})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        // Each call is written (and the log trimmed) before the next.
        let deadline = Instant::now() + Duration::from_secs(10);
        while logged(&app, &flow, 1).await[0]["contact_id"] != body["contact_id"] {
            assert!(Instant::now() < deadline, "call {i} never logged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let newest = r#"{"email":"c6@example.com"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let calls = logged(&app, &flow, 3).await;
        if calls[0]["body"] == newest {
            let bodies: Vec<&str> = calls.iter().map(|c| c["body"].as_str().unwrap()).collect();
            assert_eq!(
                bodies,
                [
                    r#"{"email":"c6@example.com"}"#,
                    r#"{"email":"c5@example.com"}"#,
                    r#"{"email":"c4@example.com"}"#
                ]
            );
            break;
        }
        assert!(Instant::now() < deadline, "{calls:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The store keeps no more than that either.
    let ws = app.store.workspace_by_name("default").await.unwrap().id;
    let fid = hookflow::domain::FlowId::parse(&flow).unwrap();
    let stored = app.store.list_inbound_calls(&ws, &fid, 1000).await.unwrap();
    assert_eq!(stored.len(), 3, "trimmed in the database: {stored:?}");
    app.stop().await;
}
