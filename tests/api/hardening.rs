//! Input rules that are exact (issue: hardening): credentials that disagree,
//! idempotency keys that are not what the docs allow. Each is refused with
//! an error naming what is wrong, and stores nothing.

use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp, spawn_app};

both_stores!(
    a_request_presenting_two_different_keys_is_refused,
    idempotency_keys_are_visible_ascii_sent_once
);

/// `/metrics` counts every workspace's requests together: it is the
/// operator's, served only with the configured token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_without_a_token_and_need_it_when_on() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let (s, body) = app.get("", "/metrics").await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["error"]["code"], "metrics_disabled");
    assert_eq!(
        body["error"]["message"],
        "metrics are off: set the `metrics_token` setting and scrape with `Authorization: Bearer <token>`"
    );
    app.stop().await;

    let token = "scrape-me-0123456789";
    let app = crate::helpers::spawn_app_with(
        Backend::Sqlite,
        hookflow::api::ApiOptions {
            metrics_token_hash: Some(hookflow::domain::keys::hash_presented(token)),
            ..hookflow::api::ApiOptions::default()
        },
    )
    .await
    .unwrap();
    for presented in ["", "wrong-token-0123456789", app.admin_key.as_str()] {
        let (s, body) = app.get(presented, "/metrics").await;
        assert_eq!(s, 401, "{presented}: {body}");
        assert_eq!(
            body["error"]["message"],
            "metrics need `Authorization: Bearer <metrics_token>`"
        );
    }
    let (s, body) = app.get(token, "/metrics").await;
    assert_eq!(s, 200);
    assert!(
        body.as_str()
            .unwrap()
            .contains("hookflow_http_requests_total"),
        "{body}"
    );
    app.stop().await;
}

async fn send(app: &TestApp, req: reqwest::RequestBuilder) -> (u16, Value) {
    let _ = app;
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn a_request_presenting_two_different_keys_is_refused(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let url = format!("{}/v1/contacts", app.base);
    let good = app.admin_key.clone();
    let bad = "hfk_not_a_key_at_all";
    let two_keys = "the request presents different API keys (in `Authorization` and `X-Api-Key`, or repeated headers); send one";
    for (bearer, x_api_key) in [
        (Some(good.as_str()), Some(bad)),
        (Some(bad), Some(good.as_str())),
    ] {
        let mut req = app.http.post(&url).json(&json!({"email": "a@example.com"}));
        if let Some(k) = bearer {
            req = req.bearer_auth(k);
        }
        if let Some(k) = x_api_key {
            req = req.header("X-Api-Key", k);
        }
        let (s, body) = send(&app, req).await;
        assert_eq!(s, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(body["error"]["message"], two_keys);
    }
    // Two X-Api-Key headers that differ, likewise.
    let req = app
        .http
        .post(&url)
        .header("X-Api-Key", &good)
        .header("X-Api-Key", bad)
        .json(&json!({"email": "a@example.com"}));
    let (s, body) = send(&app, req).await;
    assert_eq!(
        (s, body["error"]["message"].as_str()),
        (401, Some(two_keys))
    );
    let contacts = app.get_ok(&good, "/v1/contacts").await;
    assert_eq!(contacts["data"], json!([]), "nothing was stored");
    // The same key in both places is one key.
    let req = app
        .http
        .post(&url)
        .bearer_auth(&good)
        .header("X-Api-Key", &good)
        .json(&json!({"email": "a@example.com"}));
    let (s, body) = send(&app, req).await;
    assert_eq!(s, 201, "{body}");
    app.stop().await;
}

async fn idempotency_keys_are_visible_ascii_sent_once(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = &app.admin_key;
    let (_, l) = app.post(k, "/v1/lists", json!({"name": "L"})).await;
    let f = app
        .active_flow(
            json!({"name": "F", "trigger": {"type": "inbound", "list_id": l["id"]},
            "steps": [{"id": "done", "type": "exit"}]}),
        )
        .await;
    let url = format!("{}{}", app.base, f.url.unwrap());
    let call = |keys: &[&str]| {
        let mut req = app
            .http
            .post(&url)
            .header("X-Api-Key", k)
            .json(&json!({"email": "a@example.com"}));
        for key in keys {
            req = req.header("Idempotency-Key", *key);
        }
        req
    };
    let (s, body) = send(&app, call(&["a b"])).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_idempotency_key");
    assert_eq!(
        body["error"]["message"],
        "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)"
    );
    let (s, body) = send(&app, call(&["order-1", "order-2"])).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_idempotency_key");
    assert_eq!(
        body["error"]["message"],
        "Idempotency-Key is sent more than once; send it once"
    );
    let (_, runs) = app.get(k, &format!("/v1/runs?flow_id={}", f.id)).await;
    assert_eq!(runs["data"], json!([]), "no run started");
    let (s, body) = send(&app, call(&["order-1"])).await;
    assert_eq!(s, 202, "{body}");
    app.stop().await;
}

both_stores!(json_bodies_are_held_to_exact_rules);

/// Each of these was stored (rounded, with escape codes, the last of two
/// keys) or refused as "not JSON" before; now each is refused naming the
/// path, and nothing is stored.
async fn json_bodies_are_held_to_exact_rules(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = &app.admin_key;
    let (_, l) = app
        .post(
            k,
            "/v1/lists",
            json!({"name": "L", "fields": [{"name": "age", "type": "number"}, {"name": "note", "type": "text"}]}),
        )
        .await;
    let list = l["id"].as_str().unwrap().to_owned();
    let raw = |body: &str, content_type: &str| {
        app.http
            .post(format!("{}/v1/contacts", app.base))
            .bearer_auth(k)
            .header("Content-Type", content_type)
            .body(body.to_owned())
    };
    let json = "application/json";
    let cases: Vec<(String, &str, u16, &str, Option<&str>)> = vec![
        (
            format!(
                r#"{{"email":"a@b.co","lists":["{list}"],"fields":{{"age":123456789012345678901234567890}}}}"#
            ),
            json,
            422,
            "invalid_field_value",
            Some("fields.age"),
        ),
        (
            format!(
                r#"{{"email":"a@b.co","lists":["{list}"],"fields":{{"age":"18446744073709551617"}}}}"#
            ),
            json,
            422,
            "invalid_field_value",
            Some("fields.age"),
        ),
        (
            format!(
                r#"{{"email":"a@b.co","lists":["{list}"],"fields":{{"note":"a\u0007\u001b[31mb"}}}}"#
            ),
            json,
            422,
            "invalid_field_value",
            Some("fields.note"),
        ),
        (
            r#"{"email":"dup1@example.com","email":"dup2@example.com"}"#.to_owned(),
            json,
            400,
            "duplicate_key",
            Some("email"),
        ),
        (
            r#"{"email":"a@b.co","status":5}"#.to_owned(),
            json,
            422,
            "invalid_value",
            Some("status"),
        ),
        (
            r#"{"email":"a@b.co"}"#.to_owned(),
            "application/json; charset=utf-16",
            415,
            "unsupported_media_type",
            None,
        ),
    ];
    let mut cases = cases;
    // Values no JSON value can be, named by path rather than "not JSON".
    for (body, field) in [
        (r#"{"email":"a@b.co","fields":{"age":1e309}}"#, "fields.age"),
        (
            r#"{"email":"a@b.co","fields":{"note":"x\ud800y"}}"#,
            "fields.note",
        ),
    ] {
        cases.push((body.to_owned(), json, 422, "invalid_value", Some(field)));
    }
    for (body, content_type, status, code, field) in cases {
        let (s, got) = send(&app, raw(&body, content_type)).await;
        assert_eq!(
            (s, got["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {got}"
        );
        assert_eq!(got["error"]["field"].as_str(), field, "{body}: {got}");
    }
    let (_, got) = send(
        &app,
        raw(
            r#"{"email":"dup1@example.com","email":"dup2@example.com"}"#,
            json,
        ),
    )
    .await;
    assert_eq!(
        got["error"]["message"],
        "the key `email` appears twice in one object; send each key once"
    );
    // Bytes that are not UTF-8 inside a string: named by path too.
    let req = app
        .http
        .post(format!("{}/v1/contacts", app.base))
        .bearer_auth(k)
        .header("Content-Type", json)
        .body(b"{\"email\":\"a@b.co\",\"fields\":{\"note\":\"\xff\xfe\"}}".to_vec());
    let (s, got) = send(&app, req).await;
    assert_eq!(
        (s, got["error"]["field"].as_str()),
        (422, Some("fields.note")),
        "{got}"
    );
    let contacts = app.get_ok(k, "/v1/contacts").await;
    assert_eq!(contacts["data"], json!([]), "nothing was stored");
    let rows = app.row_counts().await;
    for table in [
        "contacts",
        "memberships",
        "events",
        "runs",
        "idempotency_keys",
    ] {
        assert_eq!(rows[table], 0, "nothing was stored in {table}: {rows:?}");
    }
    // A charset of UTF-8, however written, is fine.
    let (s, got) = send(
        &app,
        raw(
            r#"{"email":"a@b.co"}"#,
            "application/json; charset=\"UTF-8\"",
        ),
    )
    .await;
    assert_eq!(s, 201, "{got}");
    app.stop().await;
}
