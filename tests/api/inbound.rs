//! `POST /hooks/{token}`: the inbound API call entry point.

use hookflow::domain::Scope;
use hookflow::domain::signature::SigningSecret;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TEST_BODY_LIMIT, TestApp, spawn_app, spawn_app_with};
use hookflow::api::ApiOptions;

both_stores!(
    inbound_calls_upsert_map_and_start_runs,
    bad_inbound_calls_are_refused_and_store_nothing,
    signed_calls_need_no_key_and_bad_signatures_store_nothing,
    the_signing_secret_is_shown_once_and_rotates_with_the_token,
    a_flow_over_its_rate_gets_429_with_retry_after_and_stores_nothing,
    a_key_over_its_rate_gets_429_and_other_keys_still_pass,
    allowed_ips_let_listed_addresses_in_and_refuse_others
);

struct Setup {
    list: String,
    url: String,
    flow: String,
}

async fn setup(app: &TestApp, repeat: bool) -> Setup {
    let k = &app.admin_key;
    let (_, l) = app
        .post(k, "/v1/lists", json!({"name": "Buyers", "fields": [{"name": "first_name", "type": "text"}, {"name": "age", "type": "number"}]}))
        .await;
    let list = l["id"].as_str().unwrap().to_owned();
    let f = app
        .active_flow(json!({
            "name": "Post-sale", "repeat": repeat,
            "trigger": {"type": "inbound", "list_id": list, "mapping": {
                "customer.first_name": "first_name", "customer.age": "age", "customer.phone": "phone"}},
            "steps": [{"id": "pause", "type": "wait", "duration": "1d", "next": "done"}, {"id": "done", "type": "exit"}]}))
        .await;
    Setup {
        list,
        url: f.url.unwrap(),
        flow: f.id,
    }
}

async fn call(
    app: &TestApp,
    key: &str,
    url: &str,
    body: Value,
    idem: Option<&str>,
) -> (StatusCode, Value, bool) {
    let mut req = app
        .http
        .post(format!("{}{url}", app.base))
        .header("X-Api-Key", key)
        .json(&body);
    if let Some(k) = idem {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    (
        resp.status(),
        resp.json().await.unwrap_or(Value::Null),
        replayed,
    )
}

async fn inbound_calls_upsert_map_and_start_runs(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let ingest = app.workspace_key("default", Scope::Ingest).await;
    let s = setup(&app, false).await;
    let body = json!({"email": "Buyer@Shop.example", "customer": {"first_name": "Ada", "age": "36", "phone": "+380631234567"}, "order": {"total": 42}});
    let (st, r, _) = call(&app, &ingest, &s.url, body.clone(), None).await;
    assert_eq!(st, 202, "{r}");
    assert_eq!(
        (
            r["run_started"].as_bool(),
            r["run_id"].as_str().map(|i| i.starts_with("run_"))
        ),
        (Some(true), Some(true))
    );
    let c = app
        .get(
            &app.admin_key,
            &format!("/v1/contacts/{}", r["contact_id"].as_str().unwrap()),
        )
        .await
        .1;
    assert_eq!(
        (c["email"].as_str(), c["phone"].as_str()),
        (Some("buyer@shop.example"), Some("+380631234567"))
    );
    assert_eq!(c["fields"], json!({"first_name": "Ada", "age": 36}));
    let members = app
        .get(&app.admin_key, &format!("/v1/lists/{}/members", s.list))
        .await
        .1;
    assert_eq!(members["data"].as_array().unwrap().len(), 1);

    // Repeat is off: the same contact does not start a second run.
    let (st, r2, _) = call(&app, &ingest, &s.url, body.clone(), None).await;
    assert_eq!(
        (
            st.as_u16(),
            r2["run_started"].as_bool(),
            r2["reason"].as_str()
        ),
        (202, Some(false), Some("already_entered"))
    );
    assert_eq!(r2["contact_id"], r["contact_id"]);

    // Idempotency-Key: a retry gets the first answer and does nothing else.
    let other = json!({"email": "second@shop.example"});
    let (_, first, replayed) = call(&app, &ingest, &s.url, other.clone(), Some("order-7")).await;
    assert!(!replayed && first["run_started"] == true);
    let (st, again, replayed) = call(&app, &ingest, &s.url, other, Some("order-7")).await;
    assert_eq!((st.as_u16(), &again, replayed), (202, &first, true));
    let (st, reused, _) = call(
        &app,
        &ingest,
        &s.url,
        json!({"email": "third@shop.example"}),
        Some("order-7"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), reused["error"]["code"].as_str()),
        (409, Some("idempotency_key_reused"))
    );
    assert_eq!(
        app.get(&app.admin_key, "/v1/contacts").await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Keys are per flow: the same order number sent to another flow is a new request.
    let second = app
        .active_flow(
            json!({"name": "Second", "trigger": {"type": "inbound", "list_id": s.list},
            "steps": [{"id": "x", "type": "exit"}]}),
        )
        .await;
    let (st, other_flow, replayed) = call(
        &app,
        &ingest,
        second.url.as_deref().unwrap(),
        json!({"email": "third@shop.example"}),
        Some("order-7"),
    )
    .await;
    assert_eq!(
        (st.as_u16(), replayed, other_flow["run_started"].as_bool()),
        (202, false, Some(true))
    );
    // A retry after the flow is paused still gets its first answer.
    app.post(
        &app.admin_key,
        &format!("/v1/flows/{}/pause", s.flow),
        json!({}),
    )
    .await;
    let (st, after_pause, replayed) = call(
        &app,
        &ingest,
        &s.url,
        json!({"email": "second@shop.example"}),
        Some("order-7"),
    )
    .await;
    assert_eq!((st.as_u16(), &after_pause, replayed), (202, &first, true));
    app.stop().await;
}

async fn snapshot(app: &TestApp, list: &str) -> Value {
    json!({
        "contacts": app.get_ok(&app.admin_key, "/v1/contacts").await,
        "members": app.get_ok(&app.admin_key, &format!("/v1/lists/{list}/members")).await,
        "runs": app.get_ok(&app.admin_key, "/v1/runs?limit=500").await,
        "rows": app.row_counts().await,
    })
}

async fn bad_inbound_calls_are_refused_and_store_nothing(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let ingest = app.workspace_key("default", Scope::Ingest).await;
    let foreign = app.workspace_key("other", Scope::Ingest).await;
    let s = setup(&app, true).await;
    let exit_flow = |name: &str| {
        json!({"name": name, "trigger": {"type": "inbound", "list_id": s.list},
               "steps": [{"id": "x", "type": "exit"}]})
    };
    let paused = app.active_flow(exit_flow("Paused")).await;
    app.post(
        &app.admin_key,
        &format!("/v1/flows/{}/pause", paused.id),
        json!({}),
    )
    .await;
    let paused = paused.url.unwrap();
    let huge = json!({"email": "big@example.com", "blob": "x".repeat(TEST_BODY_LIMIT)});
    let foreign_admin = app.workspace_key("other", Scope::Admin).await;
    let deleted = app.active_flow(exit_flow("Gone")).await;
    app.call(
        &app.admin_key,
        reqwest::Method::DELETE,
        &format!("/v1/flows/{}", deleted.id),
        None,
    )
    .await;
    let deleted = deleted.url.unwrap();
    let raw = |ct: &'static str, b: &'static [u8]| (Some(ct), b.to_vec());
    // (name, key, url, content-type + raw body or JSON, status, code, field)
    type Case = (
        &'static str,
        String,
        String,
        Result<Value, (Option<&'static str>, Vec<u8>)>,
        u16,
        &'static str,
        Option<&'static str>,
    );
    let u = s.url.clone();
    let cases: Vec<Case> = vec![
        (
            "no email",
            ingest.clone(),
            u.clone(),
            Ok(json!({"customer": {"first_name": "A"}})),
            422,
            "missing_field",
            Some("email"),
        ),
        (
            "bad email",
            ingest.clone(),
            u.clone(),
            Ok(json!({"email": "a@"})),
            422,
            "invalid_email",
            Some("email"),
        ),
        (
            "email not a string",
            ingest.clone(),
            u.clone(),
            Ok(json!({"email": 42})),
            422,
            "invalid_email",
            Some("email"),
        ),
        (
            "mapped value of the wrong type",
            ingest.clone(),
            u.clone(),
            Ok(json!({"email": "t@example.com", "customer": {"age": "old"}})),
            422,
            "invalid_field_value",
            Some("customer.age"),
        ),
        (
            "mapped phone invalid",
            ingest.clone(),
            u.clone(),
            Ok(json!({"email": "t@example.com", "customer": {"phone": "12"}})),
            422,
            "invalid_phone",
            Some("customer.phone"),
        ),
        (
            "JSON array",
            ingest.clone(),
            u.clone(),
            Ok(json!([{"email": "t@example.com"}])),
            422,
            "invalid_body",
            None,
        ),
        (
            "non-JSON",
            ingest.clone(),
            u.clone(),
            Err(raw("application/json", b"email=t@example.com")),
            400,
            "malformed_json",
            None,
        ),
        (
            "empty body",
            ingest.clone(),
            u.clone(),
            Err(raw("application/json", b"")),
            400,
            "malformed_json",
            None,
        ),
        (
            "form content type",
            ingest.clone(),
            u.clone(),
            Err(raw(
                "application/x-www-form-urlencoded",
                b"email=t@example.com",
            )),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "no content type",
            ingest.clone(),
            u.clone(),
            Err((None, b"{\"email\":\"t@example.com\"}".to_vec())),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "oversized body",
            ingest.clone(),
            u.clone(),
            Ok(huge),
            413,
            "payload_too_large",
            None,
        ),
        (
            "no key",
            String::new(),
            u.clone(),
            Ok(json!({"email": "t@example.com"})),
            401,
            "unauthorized",
            None,
        ),
        (
            "wrong key",
            "hfk_nope".into(),
            u.clone(),
            Ok(json!({"email": "t@example.com"})),
            401,
            "unauthorized",
            None,
        ),
        (
            "ingest key of another workspace",
            foreign.clone(),
            u.clone(),
            Ok(json!({"email": "t@example.com"})),
            404,
            "not_found",
            None,
        ),
        (
            "unknown token",
            ingest.clone(),
            "/hooks/not-a-token".into(),
            Ok(json!({"email": "t@example.com"})),
            404,
            "not_found",
            None,
        ),
        (
            "paused flow",
            ingest.clone(),
            paused.clone(),
            Ok(json!({"email": "t@example.com"})),
            409,
            "flow_not_active",
            None,
        ),
        (
            "deleted flow",
            ingest.clone(),
            deleted.clone(),
            Ok(json!({"email": "t@example.com"})),
            404,
            "not_found",
            None,
        ),
        (
            "admin key of another workspace",
            foreign_admin.clone(),
            u.clone(),
            Ok(json!({"email": "t@example.com"})),
            404,
            "not_found",
            None,
        ),
        (
            "null body",
            ingest.clone(),
            u.clone(),
            Ok(Value::Null),
            422,
            "invalid_body",
            None,
        ),
        (
            "NUL in the body",
            ingest.clone(),
            u.clone(),
            Ok(json!({"email": "t@example.com", "customer": {"first_name": "a\u{0}"}})),
            422,
            "nul_character",
            Some("customer.first_name"),
        ),
    ];
    assert!(cases.len() >= 20);
    let before = snapshot(&app, &s.list).await;
    for (name, key, url, body, status, code, field) in cases {
        let mut req = app.http.post(format!("{}{url}", app.base));
        if !key.is_empty() {
            req = req.header("X-Api-Key", &key);
        }
        req = match body {
            Ok(v) => req.json(&v),
            Err((Some(ct), bytes)) => req.header("content-type", ct).body(bytes),
            Err((None, bytes)) => req.body(bytes),
        };
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}: {body}"
        );
        if let Some(f) = field {
            assert_eq!(body["error"]["field"], f, "{name}: {body}");
        }
        assert_eq!(
            snapshot(&app, &s.list).await,
            before,
            "{name} changed the database"
        );
    }
    let resp = app
        .http
        .post(format!("{}{}", app.base, s.url))
        .header("X-Api-Key", &ingest)
        .header("Idempotency-Key", "x".repeat(300))
        .json(&json!({"email": "t@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        400,
        "an over-long Idempotency-Key is refused"
    );
    assert_eq!(snapshot(&app, &s.list).await, before);
    // A rotated token stops working at once.
    let (_, rotated) = app
        .post(
            &app.admin_key,
            &format!("/v1/flows/{}/rotate-token", s.flow),
            json!({}),
        )
        .await;
    let (st, _, _) = call(
        &app,
        &ingest,
        &s.url,
        json!({"email": "t@example.com"}),
        None,
    )
    .await;
    assert_eq!(st, 404, "the old URL is dead");
    let (st, _, _) = call(
        &app,
        &ingest,
        rotated["inbound_url"].as_str().unwrap(),
        json!({"email": "t@example.com"}),
        None,
    )
    .await;
    assert_eq!(st, 202);
    app.stop().await;
}

/// A signed call as a Standard Webhooks sender makes it: the exact bytes
/// sent are the bytes signed. `key` is sent as well when given.
async fn signed_call(
    app: &TestApp,
    url: &str,
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &Value,
    key: Option<&str>,
) -> (StatusCode, Value, bool) {
    let bytes = serde_json::to_vec(body).unwrap();
    let sig = SigningSecret::from_trusted(secret.to_owned()).sign(id, timestamp, &bytes);
    let mut req = app
        .http
        .post(format!("{}{url}", app.base))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sig)
        .body(bytes);
    if let Some(k) = key {
        req = req.header("X-Api-Key", k);
    }
    let resp = req.send().await.unwrap();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    (
        resp.status(),
        resp.json().await.unwrap_or(Value::Null),
        replayed,
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A list and an active flow that asks for signed calls: (list, flow id,
/// URL, the secret from the creating answer).
async fn signed_setup(app: &TestApp) -> (String, String, String, String) {
    let k = &app.admin_key;
    let (_, l) = app
        .post(
            k,
            "/v1/lists",
            json!({"name": "Signed", "fields": [{"name": "plan", "type": "text"}]}),
        )
        .await;
    let list = l["id"].as_str().unwrap().to_owned();
    let (st, f) = app
        .post(
            k,
            "/v1/flows",
            json!({"name": "Shop orders",
            "trigger": {"type": "inbound", "list_id": list, "signature": "standard_webhooks",
                        "mapping": {"plan": "plan"}},
            "steps": [{"id": "x", "type": "exit"}]}),
        )
        .await;
    assert_eq!(st, 201, "{f}");
    let secret = f["inbound_secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{f}");
    let flow = f["id"].as_str().unwrap().to_owned();
    let (_, a) = app
        .post(k, &format!("/v1/flows/{flow}/activate"), json!({}))
        .await;
    let url = a["inbound_url"].as_str().unwrap().to_owned();
    (list, flow, url, secret)
}

async fn signed_calls_need_no_key_and_bad_signatures_store_nothing(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let (list, _, url, secret) = signed_setup(&app).await;
    let other = SigningSecret::generate();
    let body = json!({"email": "signed@shop.example", "plan": "pro"});
    let before = snapshot(&app, &list).await;
    let ts = now();
    let cases: Vec<(&str, (StatusCode, Value, bool), &str)> = vec![
        (
            "signed with another secret, with a valid key",
            signed_call(
                &app,
                &url,
                other.as_str(),
                "msg_1",
                ts,
                &body,
                Some(&app.admin_key),
            )
            .await,
            "invalid_signature",
        ),
        (
            "signed more than five minutes ago",
            signed_call(&app, &url, &secret, "msg_1", ts - 301, &body, None).await,
            "timestamp_out_of_tolerance",
        ),
        (
            "signed five minutes in the future",
            signed_call(&app, &url, &secret, "msg_1", ts + 400, &body, None).await,
            "timestamp_out_of_tolerance",
        ),
        (
            "an API key but no signature",
            call(&app, &app.admin_key, &url, body.clone(), None).await,
            "missing_signature",
        ),
    ];
    for (name, got, code) in cases {
        assert_eq!(
            (got.0.as_u16(), got.1["error"]["code"].as_str()),
            (401, Some(code)),
            "{name}: {}",
            got.1
        );
    }
    // The body changed after signing.
    let bytes = serde_json::to_vec(&body).unwrap();
    let sig = SigningSecret::from_trusted(secret.clone()).sign("msg_1", ts, &bytes);
    let resp = app
        .http
        .post(format!("{}{url}", app.base))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(serde_json::to_vec(&json!({"email": "evil@shop.example", "plan": "pro"})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_signature", "{err}");
    assert_eq!(
        snapshot(&app, &list).await,
        before,
        "refused calls stored something"
    );

    // Signed right: accepted with no key at all.
    let (st, first, replayed) = signed_call(&app, &url, &secret, "msg_1", now(), &body, None).await;
    assert_eq!((st.as_u16(), replayed), (202, false), "{first}");
    assert_eq!(first["run_started"], true);
    // A redelivery of the message (same id, signed again later) replays the
    // first answer and does nothing else.
    let (st, again, replayed) =
        signed_call(&app, &url, &secret, "msg_1", now() + 1, &body, None).await;
    assert_eq!((st.as_u16(), &again, replayed), (202, &first, true));
    // Another message id is another call (repeat is off: no second run).
    let (st, second, replayed) =
        signed_call(&app, &url, &secret, "msg_2", now(), &body, None).await;
    assert_eq!((st.as_u16(), replayed), (202, false));
    assert_eq!(second["reason"], "already_entered", "{second}");
    // An explicit Idempotency-Key wins over the message id.
    let ts = now();
    let bytes = serde_json::to_vec(&json!({"email": "third@shop.example"})).unwrap();
    let resp = app
        .http
        .post(format!("{}{url}", app.base))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            SigningSecret::from_trusted(secret.clone()).sign("msg_1", ts, &bytes),
        )
        .header("Idempotency-Key", "order-9")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().get("idempotent-replayed").is_none());
    let contacts = app.get(&app.admin_key, "/v1/contacts").await.1;
    assert_eq!(contacts["data"].as_array().unwrap().len(), 2, "{contacts}");
    assert_eq!(contacts["data"][0]["fields"]["plan"], "pro");
    app.stop().await;
}

async fn the_signing_secret_is_shown_once_and_rotates_with_the_token(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = &app.admin_key;
    let (list, flow, url, secret) = signed_setup(&app).await;
    // Activation found a secret already: it does not show it again, and
    // neither does reading the flow.
    let (_, got) = app.get(k, &format!("/v1/flows/{flow}")).await;
    assert!(got.get("inbound_secret").is_none(), "{got}");
    assert!(!got.to_string().contains(&secret), "{got}");
    let (_, listed) = app.get(k, "/v1/flows").await;
    assert!(!listed.to_string().contains(&secret), "{listed}");
    let (_, again) = app
        .post(k, &format!("/v1/flows/{flow}/activate"), json!({}))
        .await;
    assert!(again.get("inbound_secret").is_none(), "{again}");
    // Saving a new version keeps the secret and does not show it.
    let doc = got["document"].clone();
    let (st, saved) = app
        .call(
            k,
            reqwest::Method::PUT,
            &format!("/v1/flows/{flow}"),
            Some(doc),
        )
        .await;
    assert_eq!(st, 200, "{saved}");
    assert!(saved.get("inbound_secret").is_none(), "{saved}");
    let body = json!({"email": "a@shop.example"});
    let (st, r, _) = signed_call(&app, &url, &secret, "m1", now(), &body, None).await;
    assert_eq!(st, 202, "{r}");

    // Rotation: a new URL and a new secret, shown in that answer only.
    let (_, rotated) = app
        .post(k, &format!("/v1/flows/{flow}/rotate-token"), json!({}))
        .await;
    let new_secret = rotated["inbound_secret"].as_str().unwrap().to_owned();
    let new_url = rotated["inbound_url"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let (st, r, _) = signed_call(&app, &new_url, &secret, "m2", now(), &body, None).await;
    assert_eq!(
        (st.as_u16(), r["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    let (st, r, _) = signed_call(&app, &new_url, &new_secret, "m2", now(), &body, None).await;
    assert_eq!(st, 202, "{r}");

    // An active key-authenticated flow switched to signed calls gets its
    // secret in the answer to that save; from then on a key is not enough.
    let (_, plain) = app
        .post(k, "/v1/flows", json!({"name": "Plain",
            "trigger": {"type": "inbound", "list_id": list}, "steps": [{"id": "x", "type": "exit"}]}))
        .await;
    assert!(plain.get("inbound_secret").is_none(), "{plain}");
    let plain_id = plain["id"].as_str().unwrap();
    let (_, act) = app
        .post(k, &format!("/v1/flows/{plain_id}/activate"), json!({}))
        .await;
    assert!(act.get("inbound_secret").is_none(), "{act}");
    let plain_url = act["inbound_url"].as_str().unwrap();
    assert_eq!(call(&app, k, plain_url, body.clone(), None).await.0, 202);
    let (st, switched) = app
        .call(
            k,
            reqwest::Method::PUT,
            &format!("/v1/flows/{plain_id}"),
            Some(json!({"name": "Plain",
            "trigger": {"type": "inbound", "list_id": list, "signature": "standard_webhooks"},
            "steps": [{"id": "x", "type": "exit"}]})),
        )
        .await;
    assert_eq!(st, 200, "{switched}");
    let plain_secret = switched["inbound_secret"].as_str().unwrap();
    let (st, r, _) = call(&app, k, plain_url, body.clone(), None).await;
    assert_eq!(
        (st.as_u16(), r["error"]["code"].as_str()),
        (401, Some("missing_signature"))
    );
    let (st, r, _) = signed_call(&app, plain_url, plain_secret, "m3", now(), &body, None).await;
    assert_eq!(st, 202, "{r}");
    app.stop().await;
}

/// Sends `n` calls with distinct emails as fast as it can; the answers'
/// statuses, and every 429's `Retry-After` and error code.
async fn burst(
    app: &TestApp,
    key: &str,
    url: &str,
    n: usize,
    tag: &str,
) -> (Vec<u16>, Vec<(String, Value)>) {
    let mut statuses = Vec::new();
    let mut refusals = Vec::new();
    for i in 0..n {
        let resp = app
            .http
            .post(format!("{}{url}", app.base))
            .header("X-Api-Key", key)
            .json(&json!({"email": format!("{tag}{i}@shop.example")}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            refusals.push((retry, resp.json().await.unwrap()));
        }
    }
    (statuses, refusals)
}

#[track_caller]
fn assert_refusals(refusals: &[(String, Value)]) {
    assert!(!refusals.is_empty(), "no call was limited");
    for (retry, body) in refusals {
        assert!(
            retry.parse::<u64>().is_ok_and(|s| s >= 1),
            "Retry-After {retry:?}"
        );
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
}

async fn contact_count(app: &TestApp) -> usize {
    app.get(&app.admin_key, "/v1/contacts?limit=500").await.1["data"]
        .as_array()
        .unwrap()
        .len()
}

async fn a_flow_over_its_rate_gets_429_with_retry_after_and_stores_nothing(b: Backend) {
    let options = ApiOptions {
        inbound_rate_per_flow: 1,
        ..Default::default()
    };
    let Some(app) = spawn_app_with(b, options).await else {
        return;
    };
    let s = setup(&app, false).await;
    // One call per second per flow: of five calls in a row, the first
    // passes and at least one later one is refused (all but the first,
    // unless the machine stalls for a second between two calls).
    let (statuses, refusals) = burst(&app, &app.admin_key, &s.url, 5, "a").await;
    assert_eq!(statuses[0], 202, "{statuses:?}");
    assert_refusals(&refusals);
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(accepted + refusals.len(), 5, "{statuses:?}");
    assert_eq!(
        contact_count(&app).await,
        accepted,
        "a refused call stored something"
    );
    // Another flow has its own allowance.
    let second = app
        .active_flow(json!({"name": "Second",
            "trigger": {"type": "inbound", "list_id": s.list}, "steps": [{"id": "x", "type": "exit"}]}))
        .await;
    let (st, r, _) = call(
        &app,
        &app.admin_key,
        second.url.as_deref().unwrap(),
        json!({"email": "other@shop.example"}),
        None,
    )
    .await;
    assert_eq!(st, 202, "{r}");
    app.stop().await;
}

async fn a_key_over_its_rate_gets_429_and_other_keys_still_pass(b: Backend) {
    let options = ApiOptions {
        inbound_rate_per_key: 1,
        ..Default::default()
    };
    let Some(app) = spawn_app_with(b, options).await else {
        return;
    };
    let s = setup(&app, false).await;
    let first = app.workspace_key("default", Scope::Ingest).await;
    let second = app.workspace_key("default", Scope::Ingest).await;
    let (statuses, refusals) = burst(&app, &first, &s.url, 5, "k").await;
    assert_eq!(statuses[0], 202, "{statuses:?}");
    assert_refusals(&refusals);
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(contact_count(&app).await, accepted);
    let (st, r, _) = call(
        &app,
        &second,
        &s.url,
        json!({"email": "b@shop.example"}),
        None,
    )
    .await;
    assert_eq!(st, 202, "another key has its own allowance: {r}");
    // The events API shares the key's allowance: `first` is spent.
    let ev = app
        .post(
            &first,
            "/v1/events",
            json!({"name": "x", "email": "ev@shop.example"}),
        )
        .await;
    assert_eq!(ev.0.as_u16(), 429, "{}", ev.1);
    assert_eq!(ev.1["error"]["code"], "rate_limited");
    // The limit is on inbound calls only: the admin API is not counted.
    for _ in 0..3 {
        assert_eq!(app.get(&app.admin_key, "/v1/flows").await.0, 200);
    }
    app.stop().await;
}

async fn allowed_ips_let_listed_addresses_in_and_refuse_others(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let s = setup(&app, true).await;
    // A flow with an allowlist; the URL of the activated flow.
    let flow_with = |name: &str, ips: Value, signed: bool| {
        let mut trigger = json!({"type": "inbound", "list_id": s.list, "allowed_ips": ips});
        if signed {
            trigger["signature"] = json!("standard_webhooks");
        }
        json!({"name": name, "trigger": trigger, "steps": [{"id": "x", "type": "exit"}]})
    };
    let activate = |doc: Value| {
        let app = &app;
        async move {
            let f = app.active_flow(doc).await;
            (f.url.unwrap(), f.secret.unwrap_or_default())
        }
    };

    let (local, _) = activate(flow_with(
        "Local",
        json!(["127.0.0.1/32", "::1/128"]),
        false,
    ))
    .await;
    let (st, r, _) = call(&app, &k, &local, json!({"email": "in@shop.example"}), None).await;
    assert_eq!(st, 202, "127.0.0.1 is listed: {r}");
    // Its run finishes before the snapshot, which counts history rows.
    app.wait_run(r["run_id"].as_str().unwrap(), |r| {
        r["finished_at"].is_string()
    })
    .await;

    let (private, _) = activate(flow_with("Private", json!(["10.0.0.0/8"]), false)).await;
    // Both refused flows exist before the snapshot: only calls are compared.
    let (signed, secret) = activate(flow_with("Signed private", json!(["10.0.0.0/8"]), true)).await;
    let before = snapshot(&app, &s.list).await;
    let (st, r, _) = call(
        &app,
        &k,
        &private,
        json!({"email": "out@shop.example"}),
        None,
    )
    .await;
    assert_eq!(
        (st.as_u16(), r["error"]["code"].as_str()),
        (403, Some("ip_not_allowed")),
        "{r}"
    );
    // Without a key the caller learns nothing about the allowlist.
    let (st, _, _) = call(
        &app,
        "",
        &private,
        json!({"email": "out@shop.example"}),
        None,
    )
    .await;
    assert_eq!(st, 401);
    // A forged X-Forwarded-For changes nothing.
    let resp = app
        .http
        .post(format!("{}{private}", app.base))
        .header("X-Api-Key", &k)
        .header("X-Forwarded-For", "10.1.2.3")
        .json(&json!({"email": "out@shop.example"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // A signed flow: a good signature from an address not listed is refused too.
    let (st, r, _) = signed_call(
        &app,
        &signed,
        &secret,
        "m1",
        now(),
        &json!({"email": "out@shop.example"}),
        None,
    )
    .await;
    assert_eq!(
        (st.as_u16(), r["error"]["code"].as_str()),
        (403, Some("ip_not_allowed")),
        "{r}"
    );
    assert_eq!(
        snapshot(&app, &s.list).await,
        before,
        "a refused call stored something"
    );

    // A bad entry is refused when the flow is saved, naming it.
    let (st, r) = app
        .post(
            &k,
            "/v1/flows",
            flow_with("Bad", json!(["10.0.0.0/8", "10.0.0.0/40"]), false),
        )
        .await;
    assert_eq!(
        (
            st.as_u16(),
            r["error"]["code"].as_str(),
            r["error"]["field"].as_str()
        ),
        (422, Some("invalid_flow"), Some("trigger.allowed_ips[1]")),
        "{r}"
    );
    app.stop().await;
}
