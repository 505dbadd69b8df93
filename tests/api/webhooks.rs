//! Outbound webhooks end to end (issue 10): a flow's `send_webhook` step
//! queues a delivery that a real HTTP receiver on loopback gets, signed;
//! retries on the test clock; final answers; the verification throttle;
//! disable and enable; the activity API; secrets masked; tenant isolation.
//! Receivers run in this process (axum on 127.0.0.1), reached through an
//! allowlist of 127.0.0.1/32.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use hookflow::api::ApiOptions;
use hookflow::domain::Scope;
use hookflow::domain::signature::SigningSecret;
use hookflow::outbound::delivery::OutboundSettings;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp, assert_error, spawn_app_with};

both_stores!(
    a_send_webhook_step_delivers_a_signed_default_body,
    failures_retry_on_schedule_and_final_answers_stop,
    the_verification_throttle_holds_until_the_key_comes_back,
    a_disabled_webhook_holds_deliveries_until_enabled,
    webhooks_are_checked_masked_and_isolated,
    test_requests_answer_with_the_seed_codes,
    a_name_resolving_to_loopback_is_refused_at_connect,
    a_hanging_endpoint_does_not_delay_the_others,
    subscriptions_get_flow_contact_and_webhook_events,
    a_webhook_failing_too_long_is_disabled_and_replays_when_enabled,
    a_step_waits_for_the_result_and_maps_the_answer,
    an_inline_webhook_is_checked_kept_masked_and_delivers,
);

/// One request as the receiver got it.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    method: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A receiver: records every request; answers per path (default 200 "ok").
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    answers: Arc<Mutex<HashMap<String, (u16, String)>>>,
}

impl Receiver {
    async fn start() -> (String, Self) {
        let me = Self::default();
        let app = Router::new().fallback(
            |State(me): State<Receiver>,
             method: axum::http::Method,
             uri: Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                let path = uri.path().to_owned();
                me.got.lock().unwrap().push(Got {
                    path: path.clone(),
                    method: method.to_string(),
                    headers,
                    body,
                });
                if path == "/hang" {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let (status, body) = me
                    .answers
                    .lock()
                    .unwrap()
                    .get(&path)
                    .cloned()
                    .unwrap_or((200, "ok".into()));
                (StatusCode::from_u16(status).unwrap(), body).into_response()
            },
        );
        let app = app.with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), me)
    }

    fn answer(&self, path: &str, status: u16, body: &str) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body.to_owned()));
    }

    fn at(&self, path: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    /// Waits (real time, 10 s at most) until `path` got `n` requests.
    async fn wait(&self, app: &TestApp, path: &str, n: usize) -> Vec<Got> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.at(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} got {} requests, expected {n}",
                got.len()
            );
            app.engine.wake();
            app.engine.deliveries_wake().notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn app(b: Backend, verification: bool) -> Option<TestApp> {
    spawn_app_with(
        b,
        ApiOptions {
            outbound: OutboundSettings {
                allow: vec!["127.0.0.1/32".parse().unwrap()],
                verification,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
}

async fn webhook(app: &TestApp, body: Value) -> Value {
    let (s, w) = app.post(&app.admin_key, "/v1/webhooks", body).await;
    assert_eq!(s, StatusCode::CREATED, "{w}");
    w
}

/// An active inbound flow whose one step sends to `webhook_id`; its id and
/// inbound path.
async fn sending_flow(app: &TestApp, webhook_id: &str) -> (String, String) {
    named_flow(app, webhook_id, &format!("Flow{}", rand_suffix())).await
}

async fn named_flow(app: &TestApp, webhook_id: &str, name: &str) -> (String, String) {
    let (s, l) = app
        .post(
            &app.admin_key,
            "/v1/lists",
            json!({"name": format!("L{}", rand_suffix()), "fields": [{"name": "plan", "type": "text"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{l}");
    let f = app
        .active_flow(json!({
            "name": name,
            "trigger": {"type": "inbound", "list_id": l["id"], "mapping": {"plan": "plan"}},
            "steps": [{"id": "notify", "type": "send_webhook", "webhook_id": webhook_id}]
        }))
        .await;
    (f.id, f.url.unwrap())
}

fn rand_suffix() -> String {
    hookflow::domain::ContactId::generate().to_string()
}

/// Calls the inbound URL for `email`; the run id.
async fn enter(app: &TestApp, url: &str, email: &str) -> String {
    let (s, r) = app
        .post(
            &app.admin_key,
            url,
            json!({"email": email, "plan": "pro", "order": 42}),
        )
        .await;
    assert!(s.is_success(), "{s} {r}");
    r["run_id"].as_str().unwrap().to_owned()
}

/// Polls a delivery until `done` holds.
async fn wait_delivery(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let d = app
            .get_ok(&app.admin_key, &format!("/v1/deliveries/{id}"))
            .await;
        if done(&d) {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery {id} did not reach the expected state: {d:#}"
        );
        app.engine.deliveries_wake().notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The delivery id a run's `send_webhook` step recorded.
async fn delivery_of(app: &TestApp, run: &str) -> String {
    let r = app
        .wait_run(run, |r| {
            r["status"] == "completed" || r["status"] == "failed"
        })
        .await;
    assert_eq!(r["status"], "completed", "{r:#}");
    let step = &r["history"][0];
    assert_eq!(step["step"], "notify", "{r:#}");
    step["detail"]["delivery_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no delivery id in {r:#}"))
        .to_owned()
}

async fn a_send_webhook_step_delivers_a_signed_default_body(b: Backend) {
    let Some(app) = app(b, false).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    let w = webhook(
        &app,
        json!({"name": "CrmSync", "url": format!("{base}/in"), "headers": {"X-Source": "hookflow", "X-Api-Key": "k-SECRET-9"},
               "auth": {"type": "bearer", "token": "tok-SECRET-1"}}),
    )
    .await;
    let secret = w["signing_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{w}");
    let (flow, url) = named_flow(&app, w["id"].as_str().unwrap(), "Welcome").await;
    let run = enter(&app, &url, "ada@example.com").await;
    let delivery = delivery_of(&app, &run).await;
    assert!(delivery.starts_with("msg_"), "{delivery}");

    let got = rx.wait(&app, "/in", 1).await;
    let g = &got[0];
    assert_eq!(g.method, "POST");
    let h = |n: &str| g.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(h("webhook-id"), delivery);
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(h("x-source"), "hookflow");
    assert_eq!(h("x-api-key"), "k-SECRET-9");
    assert!(
        !w.to_string().contains("k-SECRET-9"),
        "a secret header in the answer: {w}"
    );
    assert_eq!(w["headers"]["x-api-key"], "********", "{w}");
    assert_eq!(h("authorization"), "Bearer tok-SECRET-1");
    let ts: i64 = h("webhook-timestamp").parse().unwrap();
    let expected = SigningSecret::from_trusted(secret).sign(&delivery, ts, &g.body);
    assert_eq!(h("webhook-signature"), expected);

    // SendPulse's shape (seed 002): an array of one object, keys in the
    // seed's order (checked in the raw text: a parsed map sorts its keys).
    let raw = String::from_utf8_lossy(&g.body).into_owned();
    let at: Vec<usize> = [
        "automation_id",
        "title",
        "execution_date",
        "email",
        "phone",
        "variables",
    ]
    .iter()
    .map(|k| {
        raw.find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} missing: {raw}"))
    })
    .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "keys out of order: {raw}"
    );
    assert!(raw.starts_with("[{\"automation_id\":"), "{raw}");
    let body: Value = serde_json::from_slice(&g.body).unwrap();
    let item = &body.as_array().expect("an array")[0];
    assert_eq!(item["automation_id"], flow.as_str());
    assert_eq!(item["title"], "Welcome");
    assert_eq!(item["email"], "ada@example.com");
    assert_eq!(item["phone"], "");
    let date = item["execution_date"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%d %H:%M:%S").is_ok(),
        "{date}"
    );
    let vars = item["variables"].as_array().unwrap();
    assert!(vars.contains(&json!({"plan": "pro"})), "{vars:?}");
    assert!(vars.contains(&json!({"order": 42})), "{vars:?}");

    // The activity: succeeded, one attempt with the request as sent
    // (secrets masked) and the answer.
    let d = wait_delivery(&app, &delivery, |d| d["status"] == "succeeded").await;
    assert_eq!(d["webhook_id"], w["id"]);
    assert_eq!(d["run_id"], run.as_str());
    assert_eq!(d["flow_id"], flow.as_str());
    let attempts = d["attempts_made"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{d:#}");
    assert_eq!(attempts[0]["response_status"], 200);
    assert_eq!(attempts[0]["response_body"], "ok");
    assert_eq!(attempts[0]["outcome"], "succeeded");
    assert_eq!(
        attempts[0]["request"]["body"],
        String::from_utf8_lossy(&g.body).as_ref()
    );
    let text = d.to_string();
    assert!(
        !text.contains("tok-SECRET-1"),
        "a secret in the activity: {text}"
    );
    assert!(
        !text.contains("k-SECRET-9"),
        "a secret header in the activity: {text}"
    );
    assert!(text.contains("Bearer ********"), "{text}");

    // Listed, newest first, and found by filters.
    let page = app
        .get_ok(&app.admin_key, &format!("/v1/deliveries?run_id={run}"))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    let page = app
        .get_ok(&app.admin_key, "/v1/deliveries?status=failed")
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");

    // A resend goes out again under the same id.
    let (s, r) = app
        .post(
            &app.admin_key,
            &format!("/v1/deliveries/{delivery}/resend"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let again = rx.wait(&app, "/in", 2).await;
    assert_eq!(
        again[1]
            .headers
            .get("webhook-id")
            .unwrap()
            .to_str()
            .unwrap(),
        delivery
    );
    wait_delivery(&app, &delivery, |d| {
        d["attempts_made"].as_array().unwrap().len() == 2 && d["status"] == "succeeded"
    })
    .await;
}

async fn failures_retry_on_schedule_and_final_answers_stop(b: Backend) {
    let Some(app) = app(b, false).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    rx.answer("/flaky", 500, "down");
    rx.answer("/gone", 410, "gone");
    rx.answer("/bad", 400, "no");
    let flaky = webhook(
        &app,
        json!({"name": "Flaky", "url": format!("{base}/flaky"), "retries": 2}),
    )
    .await;
    let gone = webhook(&app, json!({"name": "Gone", "url": format!("{base}/gone")})).await;
    let bad = webhook(&app, json!({"name": "Bad", "url": format!("{base}/bad")})).await;

    // 500: the first retry at once, the second after 5 s (±20 %), then no
    // more (retries: 2).
    let (_, url) = sending_flow(&app, flaky["id"].as_str().unwrap()).await;
    let run = enter(&app, &url, "f@example.com").await;
    let d = delivery_of(&app, &run).await;
    rx.wait(&app, "/flaky", 2).await;
    let pending = wait_delivery(&app, &d, |d| d["attempts"] == 2).await;
    assert_eq!(pending["status"], "pending", "{pending:#}");
    assert!(pending["next_attempt_at"].is_string(), "{pending:#}");
    // Not before the clock moves (no sleeps: the test clock stands still).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.at("/flaky").len(), 2);
    app.clock.advance(Duration::from_secs(7));
    rx.wait(&app, "/flaky", 3).await;
    let failed = wait_delivery(&app, &d, |d| d["status"] == "failed").await;
    assert_eq!(failed["attempts_made"].as_array().unwrap().len(), 3);
    assert!(
        failed["last_error"].as_str().unwrap().contains("500"),
        "{failed:#}"
    );
    app.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.at("/flaky").len(), 3, "retried past its retries");

    // 410: final at once, and the webhook is disabled.
    let (_, url) = sending_flow(&app, gone["id"].as_str().unwrap()).await;
    let d = delivery_of(&app, &enter(&app, &url, "g@example.com").await).await;
    let failed = wait_delivery(&app, &d, |d| d["status"] == "failed").await;
    assert_eq!(failed["attempts_made"].as_array().unwrap().len(), 1);
    let w = app
        .get_ok(
            &app.admin_key,
            &format!("/v1/webhooks/{}", gone["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(w["enabled"], false, "{w}");
    assert!(
        w["disabled_reason"].as_str().unwrap().contains("410"),
        "{w}"
    );

    // 400: final, no retry, the webhook stays enabled.
    let (_, url) = sending_flow(&app, bad["id"].as_str().unwrap()).await;
    let d = delivery_of(&app, &enter(&app, &url, "b@example.com").await).await;
    wait_delivery(&app, &d, |d| d["status"] == "failed").await;
    app.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.at("/bad").len(), 1);
    let w = app
        .get_ok(
            &app.admin_key,
            &format!("/v1/webhooks/{}", bad["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(w["enabled"], true, "{w}");
}

async fn the_verification_throttle_holds_until_the_key_comes_back(b: Backend) {
    let Some(app) = app(b, true).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    let w = webhook(&app, json!({"name": "New", "url": format!("{base}/v")})).await;
    assert_eq!(w["verified"], false, "{w}");
    let key = w["verification_key"].as_str().unwrap().to_owned();
    let (_, url) = sending_flow(&app, w["id"].as_str().unwrap()).await;

    // The first goes out; the receiver does not answer with the key.
    let first = delivery_of(&app, &enter(&app, &url, "one@example.com").await).await;
    wait_delivery(&app, &first, |d| d["status"] == "succeeded").await;
    // The second waits an hour: throttled, not dropped.
    let second = delivery_of(&app, &enter(&app, &url, "two@example.com").await).await;
    let held = wait_delivery(&app, &second, |d| d["status"] == "throttled").await;
    assert!(held["next_attempt_at"].is_string(), "{held:#}");
    assert_eq!(rx.at("/v").len(), 1);
    // An hour on, it goes out, and the receiver now answers with the key.
    rx.answer("/v", 200, &format!("{{\"verification_key\": \"{key}\"}}"));
    app.clock.advance(Duration::from_secs(3601));
    rx.wait(&app, "/v", 2).await;
    wait_delivery(&app, &second, |d| d["status"] == "succeeded").await;
    let w2 = app
        .get_ok(
            &app.admin_key,
            &format!("/v1/webhooks/{}", w["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(w2["verified"], true, "{w2}");
    // Verified: the next two go out at once.
    let third = delivery_of(&app, &enter(&app, &url, "three@example.com").await).await;
    let fourth = delivery_of(&app, &enter(&app, &url, "four@example.com").await).await;
    wait_delivery(&app, &third, |d| d["status"] == "succeeded").await;
    wait_delivery(&app, &fourth, |d| d["status"] == "succeeded").await;
    assert_eq!(rx.at("/v").len(), 4);
}

async fn a_disabled_webhook_holds_deliveries_until_enabled(b: Backend) {
    let Some(app) = app(b, false).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    // One at a time, so the replay's order is the order received.
    let w = webhook(
        &app,
        json!({"name": "Paused", "url": format!("{base}/p"), "max_concurrency": 1}),
    )
    .await;
    let id = w["id"].as_str().unwrap();
    let (s, off) = app
        .post(
            &app.admin_key,
            &format!("/v1/webhooks/{id}/disable"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{off}");
    assert_eq!(off["enabled"], false);
    let (_, url) = sending_flow(&app, id).await;
    let d1 = delivery_of(&app, &enter(&app, &url, "x@example.com").await).await;
    let d2 = delivery_of(&app, &enter(&app, &url, "y@example.com").await).await;
    wait_delivery(&app, &d1, |d| d["status"] == "disabled").await;
    wait_delivery(&app, &d2, |d| d["status"] == "disabled").await;
    assert_eq!(rx.at("/p").len(), 0);
    let (s, on) = app
        .post(
            &app.admin_key,
            &format!("/v1/webhooks/{id}/enable"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{on}");
    let got = rx.wait(&app, "/p", 2).await;
    let order: Vec<&str> = got
        .iter()
        .map(|g| g.headers.get("webhook-id").unwrap().to_str().unwrap())
        .collect();
    assert_eq!(order, [d1.as_str(), d2.as_str()], "replayed in order");
    wait_delivery(&app, &d1, |d| d["status"] == "succeeded").await;
    wait_delivery(&app, &d2, |d| d["status"] == "succeeded").await;
    // Finished deliveries leave no job behind: the queue's table holds
    // only work still to do (the outcome is on the delivery).
    assert_eq!(crate::helpers::delivery_jobs(&*app.store).await, 0);
}

async fn webhooks_are_checked_masked_and_isolated(b: Backend) {
    let Some(app) = app(b, false).await else {
        return;
    };
    let k = &app.admin_key;
    // Refused at save, each problem named.
    let bad = app
        .post(
            k,
            "/v1/webhooks",
            json!({"name": "Has space", "url": "http://10.0.0.1/x"}),
        )
        .await;
    assert_error(&bad, 422, "invalid_webhook");
    let text = bad.1.to_string();
    assert!(text.contains("name") && text.contains("10.0.0.1"), "{text}");
    for url in [
        "http://169.254.169.254/latest",
        "http://[::ffff:10.0.0.1]/",
        "http://167772161/",
        "ftp://example.com/",
    ] {
        let r = app
            .post(k, "/v1/webhooks", json!({"name": "Bad", "url": url}))
            .await;
        assert_eq!(r.0.as_u16(), 422, "{url}: {}", r.1);
    }
    let r = app
        .post(k, "/v1/webhooks", json!({"name": "Tpl", "url": "http://127.0.0.1:9/", "template": "{{ contact.email | nosuch }}"}))
        .await;
    assert_error(&r, 422, "invalid_webhook");
    assert!(r.1.to_string().contains("line 1"), "{}", r.1);
    let r = app
        .post(k, "/v1/webhooks", json!({"name": "Hdr", "url": "http://127.0.0.1:9/", "headers": {"webhook-signature": "x"}}))
        .await;
    assert_error(&r, 422, "invalid_webhook");

    // Secrets: shown once (the signing secret), masked everywhere after.
    let w = webhook(
        &app,
        json!({"name": "Masked", "url": "http://127.0.0.1:9/", "auth": {"type": "basic", "user": "u", "password": "pw-SECRET-2"}}),
    )
    .await;
    let id = w["id"].as_str().unwrap().to_owned();
    let secret = w["signing_secret"].as_str().unwrap().to_owned();
    assert!(!w.to_string().contains("pw-SECRET-2"), "{w}");
    let got = app.get_ok(k, &format!("/v1/webhooks/{id}")).await;
    assert!(got.get("signing_secret").is_none(), "{got}");
    assert_eq!(got["auth"]["password"], "********");
    let listed = app.get_ok(k, "/v1/webhooks").await;
    assert!(!listed.to_string().contains("pw-SECRET-2"));
    assert!(!listed.to_string().contains(&secret));
    // An update that sends the mask back keeps the password.
    let (s, upd) = app
        .call(
            k,
            Method::PUT,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"name": "Masked2", "url": "http://127.0.0.1:9/", "auth": {"type": "basic", "user": "u", "password": "********"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{upd}");
    assert_eq!(upd["name"], "Masked2");
    // Rotation shows the new secret once.
    let (s, rot) = app
        .post(k, &format!("/v1/webhooks/{id}/rotate-secret"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{rot}");
    let new = rot["signing_secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_") && new != secret, "{rot}");

    // A flow naming a webhook that does not exist is refused at save.
    let (s, l) = app.post(k, "/v1/lists", json!({"name": "Iso"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let missing = hookflow::domain::WebhookId::generate().to_string();
    let r = app
        .post(
            k,
            "/v1/flows",
            json!({"name": "Bad", "trigger": {"type": "inbound", "list_id": l["id"]},
                   "steps": [{"id": "s", "type": "send_webhook", "webhook_id": missing}]}),
        )
        .await;
    assert_eq!(r.0.as_u16(), 422, "{}", r.1);
    assert!(r.1.to_string().contains("webhook_id"), "{}", r.1);

    // Another workspace sees none of it.
    let other = app.workspace_key("other", Scope::Admin).await;
    assert_error(
        &app.get(&other, &format!("/v1/webhooks/{id}")).await,
        404,
        "not_found",
    );
    let theirs = app.get_ok(&other, "/v1/webhooks").await;
    assert_eq!(theirs["items"].as_array().unwrap().len(), 0, "{theirs}");
    assert_error(
        &app.post(&other, &format!("/v1/webhooks/{id}/disable"), json!({}))
            .await,
        404,
        "not_found",
    );
    let (s, _) = app
        .call(&other, Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(k, Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(
        &app.get(k, &format!("/v1/webhooks/{id}")).await,
        404,
        "not_found",
    );
}

async fn test_requests_answer_with_the_seed_codes(b: Backend) {
    let Some(app) = app(b, true).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    rx.answer("/fail", 500, "down");
    rx.answer("/plain", 200, "not json");
    let k = &app.admin_key;
    let test = |webhook: Value| {
        let app = &app;
        async move {
            let (s, r) = app
                .post(
                    &app.admin_key,
                    "/v1/webhooks/test",
                    json!({"webhook": webhook, "event": {"order": 7}}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{r}");
            r
        }
    };
    let ok = test(json!({"name": "T", "url": format!("{base}/ok"), "auth": {"type": "bearer", "token": "tk-SECRET-3"}})).await;
    assert_eq!(
        (ok["status"].as_bool(), ok["code"].as_u64()),
        (Some(true), Some(1)),
        "{ok}"
    );
    assert_eq!(ok["response"]["status"], 200);
    assert_eq!(ok["response"]["body"], "ok");
    assert_eq!(ok["request"]["method"], "POST");
    assert!(!ok.to_string().contains("tk-SECRET-3"), "{ok}");
    let sent = rx.at("/ok");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].headers["authorization"], "Bearer tk-SECRET-3");
    assert!(String::from_utf8_lossy(&sent[0].body).contains("\"order\":7"));

    let failed = test(json!({"name": "T", "url": format!("{base}/fail")})).await;
    assert_eq!(
        (failed["status"].as_bool(), failed["code"].as_u64()),
        (Some(false), Some(11_110_111)),
        "{failed}"
    );
    assert_eq!(failed["response"]["status"], 500);
    let strict =
        test(json!({"name": "T", "url": format!("{base}/plain"), "strict_json": true})).await;
    assert_eq!(strict["code"], 11_110_112, "{strict}");
    let slow = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}";
    let tpl = test(json!({"name": "T", "url": format!("{base}/tpl"), "template": slow})).await;
    assert_eq!(tpl["code"], 21_111_011, "{tpl}");
    assert_eq!(rx.at("/tpl").len(), 0, "a failed render sent nothing");

    // A stored, unverified webhook: 2xx without the key is 11110113; with it, 1.
    let w = webhook(&app, json!({"name": "K", "url": format!("{base}/key")})).await;
    let id = w["id"].as_str().unwrap();
    let (_, r) = app
        .post(k, &format!("/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(r["code"], 11_110_113, "{r}");
    rx.answer("/key", 200, w["verification_key"].as_str().unwrap());
    let (_, r) = app
        .post(
            k,
            &format!("/v1/webhooks/{id}/test"),
            json!({"contact": {"email": "c@example.com"}}),
        )
        .await;
    assert_eq!(r["code"], 1, "{r}");
    let signed = rx.at("/key");
    let got = &signed[1];
    let secret = SigningSecret::from_trusted(w["signing_secret"].as_str().unwrap().to_owned());
    let h = |n: &str| got.headers[n].to_str().unwrap().to_owned();
    assert_eq!(
        h("webhook-signature"),
        secret.sign(
            &h("webhook-id"),
            h("webhook-timestamp").parse().unwrap(),
            &got.body
        )
    );
    assert!(String::from_utf8_lossy(&got.body).contains("c@example.com"));
}

async fn a_name_resolving_to_loopback_is_refused_at_connect(b: Backend) {
    // No allowlist here: loopback is refused like any private range.
    let Some(app) = spawn_app_with(b, ApiOptions::default()).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    let port = base.rsplit(':').next().unwrap();
    // A literal loopback address is refused at save...
    let r = app
        .post(
            &app.admin_key,
            "/v1/webhooks",
            json!({"name": "L", "url": format!("{base}/x")}),
        )
        .await;
    assert_error(&r, 422, "invalid_webhook");
    // ...a name that resolves to it passes the save (names are checked at
    // every connect), and the request is refused there.
    let (s, r) = app
        .post(
            &app.admin_key,
            "/v1/webhooks/test",
            json!({"webhook": {"name": "L", "url": format!("http://localhost:{port}/x")}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["code"], 11_110_114, "{r}");
    assert_eq!(r["status"], false);
    assert!(r["response"].is_null(), "{r}");
    assert_eq!(rx.at("/x").len(), 0, "a packet reached the receiver");
}

async fn a_hanging_endpoint_does_not_delay_the_others(b: Backend) {
    use futures_util::StreamExt;
    let Some(app) = app(b, false).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    let hang = webhook(
        &app,
        json!({"name": "Hang", "url": format!("{base}/hang"), "timeout_ms": 60000}),
    )
    .await;
    let fast = webhook(&app, json!({"name": "Fast", "url": format!("{base}/fast")})).await;
    let (_, hang_url) = sending_flow(&app, hang["id"].as_str().unwrap()).await;
    let (_, fast_url) = sending_flow(&app, fast["id"].as_str().unwrap()).await;
    for i in 0..20 {
        enter(&app, &hang_url, &format!("h{i}@example.com")).await;
    }
    rx.wait(&app, "/hang", 8).await;
    let started = std::time::Instant::now();
    futures_util::stream::iter(0..1000)
        .map(|i| {
            let (app, url) = (&app, &fast_url);
            async move { enter(app, url, &format!("f{i}@example.com")).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rx.at("/fast").len() < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 1000 arrived while another endpoint hangs",
            rx.at("/fast").len()
        );
        app.engine.wake();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "1000 deliveries beside a hanging endpoint in {:?}",
        started.elapsed()
    );
    // The hanging endpoint holds its own places (max_concurrency 8), no more.
    assert_eq!(rx.at("/hang").len(), 8);
    // The activity tells the 8 in progress from the 12 waiting for a place.
    let hang_id = hang["id"].as_str().unwrap();
    let count = |status: &'static str| {
        let app = &app;
        async move {
            let page = app
                .get_ok(
                    &app.admin_key,
                    &format!("/v1/deliveries?webhook_id={hang_id}&status={status}&limit=100"),
                )
                .await;
            page["items"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("delivering").await, 8);
    assert_eq!(count("pending").await, 12);
    let one = app
        .get_ok(
            &app.admin_key,
            &format!("/v1/deliveries?webhook_id={hang_id}&status=delivering"),
        )
        .await;
    let id = one["items"][0]["id"].as_str().unwrap();
    let d = app
        .get_ok(&app.admin_key, &format!("/v1/deliveries/{id}"))
        .await;
    assert_eq!(d["status"], "delivering", "{d}");
}

/// The events a receiver got, as (event, the body's one object, raw body).
fn events(rx: &Receiver, path: &str) -> Vec<(String, Value, String)> {
    rx.at(path)
        .iter()
        .map(|g| {
            let raw = String::from_utf8_lossy(&g.body).into_owned();
            let v: Value = serde_json::from_str(&raw).unwrap();
            let item = v.as_array().expect("an array")[0].clone();
            (item["event"].as_str().unwrap().to_owned(), item, raw)
        })
        .collect()
}

/// Keys of a raw JSON object in the order written.
fn key_order(raw: &str, keys: &[&str]) -> bool {
    let at: Vec<usize> = keys
        .iter()
        .map(|k| raw.find(&format!("\"{k}\":")).unwrap_or(usize::MAX))
        .collect();
    at.iter().all(|&i| i != usize::MAX) && at.windows(2).all(|w| w[0] < w[1])
}

async fn subscriptions_get_flow_contact_and_webhook_events(b: Backend) {
    let Some(app) = app(b, false).await else {
        return;
    };
    let k = &app.admin_key;
    let (base, rx) = Receiver::start().await;
    rx.answer("/gone", 410, "gone");
    let bad = app
        .post(
            k,
            "/v1/subscriptions",
            json!({"url": format!("{base}/events"), "event_types": ["flow.nope"]}),
        )
        .await;
    assert_error(&bad, 422, "invalid_subscription");
    let (s, sub) = app
        .post(
            k,
            "/v1/subscriptions",
            json!({"url": format!("{base}/events"), "event_types": [
                "flow.completed", "flow.goal_reached", "contact.unsubscribed",
                "contact.spam_complaint", "webhook.disabled"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sub}");
    let sub_id = sub["id"].as_str().unwrap();
    assert!(sub_id.starts_with("sub_"), "{sub}");
    assert!(
        sub["signing_secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    assert_eq!(
        app.get_ok(k, "/v1/subscriptions").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.get_ok(k, "/v1/webhooks").await["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        app.get_ok(k, &format!("/v1/subscriptions/{sub_id}")).await["event_types"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // A run that reaches its goal: flow.goal_reached, then flow.completed.
    let (s, l) = app.post(k, "/v1/lists", json!({"name": "Subs"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let f = app
        .active_flow(
            json!({"name": "Goal", "trigger": {"type": "inbound", "list_id": l["id"]},
            "steps": [{"id": "won", "type": "goal", "name": "signed_up"}]}),
        )
        .await;
    let run = enter(&app, f.url.as_ref().unwrap(), "g@example.com").await;
    rx.wait(&app, "/events", 2).await;
    let got = events(&rx, "/events");
    let goal = got
        .iter()
        .find(|e| e.0 == "flow.goal_reached")
        .expect("goal event");
    assert_eq!(goal.1["goal"], "signed_up");
    assert_eq!(goal.1["automation_id"], f.id.as_str());
    assert_eq!(goal.1["run_id"], run.as_str());
    assert_eq!(goal.1["email"], "g@example.com");
    let done = got
        .iter()
        .find(|e| e.0 == "flow.completed")
        .expect("completed event");
    assert_eq!(done.1["reason"], "goal");
    assert_eq!(done.1["title"], "Goal");

    // A contact unsubscribing: SendPulse's unsubscribe shape, field by field.
    let (s, _) = app
        .post(
            k,
            "/v1/contacts",
            json!({"email": "u@example.com", "lists": [l["id"]]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let before = rx.at("/events").len();
    let (s, c) = app
        .post(
            k,
            "/v1/contacts",
            json!({"email": "u@example.com", "status": "unsubscribed", "lists": [l["id"]]}),
        )
        .await;
    assert!(s.is_success(), "{c}");
    rx.wait(&app, "/events", before + 1).await;
    let (_, unsub, raw) = events(&rx, "/events")
        .into_iter()
        .find(|e| e.0 == "unsubscribe")
        .expect("unsubscribe event");
    assert!(
        key_order(
            &raw,
            &[
                "task_id",
                "timestamp",
                "from_all",
                "email",
                "reason",
                "book_id",
                "event",
                "categories",
                "source",
                "automation_id"
            ]
        ),
        "{raw}"
    );
    assert_eq!(unsub["email"], "u@example.com");
    assert_eq!(unsub["from_all"], 1);
    assert_eq!(unsub["reason"], Value::Null);
    assert_eq!(unsub["book_id"], l["id"]);
    assert_eq!(unsub["categories"], "");
    assert!(
        unsub["timestamp"].as_str().unwrap().parse::<i64>().is_ok(),
        "{raw}"
    );
    // Unchanged status: no second event.
    app.post(
        k,
        "/v1/contacts",
        json!({"email": "u@example.com", "status": "unsubscribed"}),
    )
    .await;
    // A spam complaint (PATCH): the spam shape.
    let (s, s2) = app
        .post(k, "/v1/contacts", json!({"email": "s@example.com"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .call(
            k,
            Method::PATCH,
            &format!("/v1/contacts/{}", s2["id"].as_str().unwrap()),
            Some(json!({"status": "complained"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let n = rx.at("/events").len();
    rx.wait(&app, "/events", n.max(before + 2)).await;
    let (_, spam, raw) = events(&rx, "/events")
        .into_iter()
        .find(|e| e.0 == "spam")
        .expect("spam event");
    assert!(
        key_order(
            &raw,
            &[
                "timestamp",
                "event",
                "task_id",
                "email",
                "source",
                "automation_id"
            ]
        ),
        "{raw}"
    );
    assert_eq!(spam["email"], "s@example.com");
    assert!(spam["timestamp"].is_i64(), "{raw}");
    assert_eq!(
        events(&rx, "/events")
            .iter()
            .filter(|e| e.0 == "unsubscribe")
            .count(),
        1
    );

    // A webhook disabled by a 410: webhook.disabled.
    let gone = webhook(&app, json!({"name": "Gone", "url": format!("{base}/gone")})).await;
    let (_, url) = sending_flow(&app, gone["id"].as_str().unwrap()).await;
    enter(&app, &url, "x@example.com").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let off = loop {
        if let Some(e) = events(&rx, "/events")
            .into_iter()
            .find(|e| e.0 == "webhook.disabled")
        {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no webhook.disabled event"
        );
        app.engine.deliveries_wake().notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(off.1["webhook_id"], gone["id"]);
    assert!(
        off.1["reason"].as_str().unwrap().contains("410"),
        "{}",
        off.2
    );

    // Events are deliveries like any other: listed, signed, isolated.
    let listed = app
        .get_ok(k, &format!("/v1/deliveries?subscription_id={sub_id}"))
        .await;
    assert!(listed["items"].as_array().unwrap().len() >= 5, "{listed}");
    let other = app.workspace_key("other", Scope::Admin).await;
    assert_error(
        &app.get(&other, &format!("/v1/subscriptions/{sub_id}"))
            .await,
        404,
        "not_found",
    );
    let (s, _) = app
        .call(
            k,
            Method::DELETE,
            &format!("/v1/subscriptions/{sub_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

async fn a_webhook_failing_too_long_is_disabled_and_replays_when_enabled(b: Backend) {
    let Some(app) = spawn_app_with(
        b,
        ApiOptions {
            outbound: OutboundSettings {
                allow: vec!["127.0.0.1/32".parse().unwrap()],
                verification: false,
                disable_after: Duration::from_secs(3600),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    rx.answer("/down", 503, "down");
    let w = webhook(
        &app,
        json!({"name": "Down", "url": format!("{base}/down"), "retries": 20}),
    )
    .await;
    let id = w["id"].as_str().unwrap().to_owned();
    let (_, url) = sending_flow(&app, &id).await;
    let d = delivery_of(&app, &enter(&app, &url, "d@example.com").await).await;
    // Attempts at once, then after 5 s, 5 min, 30 min, 2 h (each +20 % at
    // most): the last is over an hour after the first failure.
    rx.wait(&app, "/down", 2).await;
    for (n, wait) in [(3, 6), (4, 6 * 60), (5, 37 * 60), (6, 2 * 3600 + 25 * 60)] {
        app.clock.advance(Duration::from_secs(wait));
        rx.wait(&app, "/down", n).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let off = loop {
        let got = app
            .get_ok(&app.admin_key, &format!("/v1/webhooks/{id}"))
            .await;
        if got["enabled"] == false {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "not disabled: {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        off["disabled_reason"].as_str().unwrap().contains("1 hours"),
        "{off}"
    );
    // Kept, not dropped: held while disabled, sent when enabled.
    app.clock.advance(Duration::from_secs(11 * 3600));
    wait_delivery(&app, &d, |d| d["status"] == "disabled").await;
    let sent = rx.at("/down").len();
    rx.answer("/down", 200, "ok");
    let (s, _) = app
        .post(
            &app.admin_key,
            &format!("/v1/webhooks/{id}/enable"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    rx.wait(&app, "/down", sent + 1).await;
    wait_delivery(&app, &d, |d| d["status"] == "succeeded").await;
}

async fn a_step_waits_for_the_result_and_maps_the_answer(b: Backend) {
    let Some(app) = app(b, false).await else {
        return;
    };
    let k = &app.admin_key;
    let (base, rx) = Receiver::start().await;
    rx.answer(
        "/crm",
        200,
        r#"{"crm_id": "C-77", "account": {"tier": "gold"}}"#,
    );
    rx.answer("/bad", 400, "no");
    let good = webhook(&app, json!({"name": "Crm", "url": format!("{base}/crm")})).await;
    let bad = webhook(&app, json!({"name": "Bad", "url": format!("{base}/bad")})).await;
    let (s, l) = app
        .post(
            k,
            "/v1/lists",
            json!({"name": "Sync", "fields": [
            {"name": "crm_id", "type": "text"}, {"name": "tier", "type": "text"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let doc = |w: &Value, name: &str| {
        json!({"name": name, "trigger": {"type": "inbound", "list_id": l["id"]},
            "steps": [
                {"id": "push", "type": "send_webhook", "webhook_id": w["id"], "wait_for_result": true,
                 "on_success": "ok", "on_failure": "ko",
                 "response_mapping": {"crm_id": "crm_id", "account.tier": "tier"}},
                {"id": "ok", "type": "goal", "name": "synced"},
                {"id": "ko", "type": "exit"}]})
    };
    // Refused: next with wait_for_result; on_success without it.
    let mut wrong = doc(&good, "Wrong");
    wrong["steps"][0]["next"] = json!("ok");
    assert_eq!(
        app.post(k, "/v1/flows", wrong).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut wrong = doc(&good, "Wrong2");
    wrong["steps"][0]["wait_for_result"] = json!(false);
    assert_eq!(
        app.post(k, "/v1/flows", wrong).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let f = app.active_flow(doc(&good, "Sync")).await;
    let run = enter(&app, f.url.as_ref().unwrap(), "w@example.com").await;
    let r = app
        .wait_run(&run, |r| {
            r["status"] == "completed" || r["status"] == "exited" || r["status"] == "failed"
        })
        .await;
    assert_eq!(r["end_reason"], "goal", "{r:#}");
    let steps: Vec<(&str, &str)> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["step"].as_str().unwrap(), h["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [("push", "waiting"), ("push", "yes"), ("ok", "goal")],
        "{r:#}"
    );
    let delivery = r["history"][0]["detail"]["delivery_id"].as_str().unwrap();
    assert_eq!(r["history"][1]["detail"]["delivery_id"], delivery);
    let c = app
        .get_ok(
            k,
            &format!("/v1/contacts/{}", r["contact_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(c["fields"]["crm_id"], "C-77", "{c}");
    assert_eq!(c["fields"]["tier"], "gold", "{c}");

    // A final failure takes the other branch.
    let f = app.active_flow(doc(&bad, "SyncBad")).await;
    let run = enter(&app, f.url.as_ref().unwrap(), "x@example.com").await;
    let r = app
        .wait_run(&run, |r| {
            r["status"] == "completed" || r["status"] == "exited" || r["status"] == "failed"
        })
        .await;
    assert_eq!(r["status"], "exited", "{r:#}");
    assert_eq!(r["history"][1]["outcome"], "no", "{r:#}");
    assert_eq!(r["history"][1]["detail"]["response_status"], 400, "{r:#}");
    assert_eq!(rx.at("/bad").len(), 1);
}

const MASK: &str = "********";

async fn webhook_count(app: &TestApp) -> usize {
    app.get_ok(&app.admin_key, "/v1/webhooks").await["items"]
        .as_array()
        .unwrap()
        .len()
}

async fn an_inline_webhook_is_checked_kept_masked_and_delivers(b: Backend) {
    let Some(app) = app(b, false).await else {
        return;
    };
    let (base, rx) = Receiver::start().await;
    let (s, l) = app
        .post(
            &app.admin_key,
            "/v1/lists",
            json!({"name": "Inline", "fields": [{"name": "plan", "type": "text"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{l}");
    let doc = |step: Value| {
        json!({
            "name": "InlineFlow",
            "trigger": {"type": "inbound", "list_id": l["id"], "mapping": {"plan": "plan"}},
            "steps": [step]
        })
    };

    // Problems point at the step's inline configuration; nothing is kept.
    let (s, e) = app
        .post(
            &app.admin_key,
            "/v1/flows",
            doc(json!({"id": "notify", "type": "send_webhook", "webhook": {
                "url": "http://10.0.0.7/hook",
                "headers": {"Host": "x"},
                "template": "{{ contact.email | no_such_filter }}"
            }})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "invalid_flow", "{e}");
    let settings: Vec<&str> = e["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["setting"].as_str().unwrap())
        .collect();
    assert_eq!(
        settings,
        ["webhook.url", "webhook.headers[0]", "webhook.template"],
        "{e}"
    );
    assert_eq!(e["error"]["field"], "steps.notify.webhook.url", "{e}");
    for (step, setting) in [
        (
            json!({"id": "notify", "type": "send_webhook"}),
            "webhook_id",
        ),
        (
            json!({"id": "notify", "type": "send_webhook", "webhook": {"url": format!("{base}/x"), "colour": 1}}),
            "webhook",
        ),
        (
            json!({"id": "notify", "type": "send_webhook", "webhook": {"url": format!("{base}/x"),
                "auth": {"type": "basic", "user": "u", "password": "********"}}}),
            "webhook.auth.password",
        ),
    ] {
        let (s, e) = app.post(&app.admin_key, "/v1/flows", doc(step)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["error"]["details"][0]["setting"], setting, "{e}");
    }
    assert_eq!(
        webhook_count(&app).await,
        0,
        "a refused save keeps no webhook"
    );

    // A good one is kept as a webhook marked inline; the flow shows it masked.
    let step = json!({"id": "notify", "type": "send_webhook", "webhook": {
        "url": format!("{base}/inline"),
        "auth": {"type": "basic", "user": "crm", "password": "s3cret-pass"},
        "headers": {"X-Api-Key": "key-123", "X-Team": "growth"}
    }});
    let (s, created) = app.post(&app.admin_key, "/v1/flows", doc(step)).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let text = created.to_string();
    assert!(
        !text.contains("s3cret-pass") && !text.contains("key-123"),
        "{created}"
    );
    let shown = &created["document"]["steps"][0];
    let hook_id = shown["webhook_id"]
        .as_str()
        .expect("the save names the webhook")
        .to_owned();
    assert_eq!(shown["webhook"]["auth"]["password"], MASK, "{created}");
    assert_eq!(shown["webhook"]["headers"]["X-Api-Key"], MASK, "{created}");
    assert_eq!(shown["webhook"]["headers"]["X-Team"], "growth", "{created}");
    let w = app
        .get_ok(&app.admin_key, &format!("/v1/webhooks/{hook_id}"))
        .await;
    assert_eq!(w["inline"], true, "{w}");
    assert_eq!(w["name"], "stepnotify", "{w}");
    assert_eq!(w["url"], format!("{base}/inline"), "{w}");
    assert!(!w.to_string().contains("s3cret-pass"), "{w}");

    // Saving back what was read keeps the webhook and its secrets.
    let flow_id = created["id"].as_str().unwrap().to_owned();
    let mut again = created["document"].clone();
    again["steps"][0]["webhook"]["timeout_ms"] = json!(5000);
    let (s, updated) = app
        .put(&app.admin_key, &format!("/v1/flows/{flow_id}"), again)
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(
        updated["document"]["steps"][0]["webhook_id"],
        hook_id.as_str()
    );
    assert_eq!(updated["version"], 2, "{updated}");
    assert_eq!(webhook_count(&app).await, 1);
    let w = app
        .get_ok(&app.admin_key, &format!("/v1/webhooks/{hook_id}"))
        .await;
    assert_eq!(w["timeout_ms"], 5000, "{w}");

    // A document without the id (a flow file kept in git, secrets and all)
    // keeps the step's webhook too. The clock moves first, so that a write
    // to the webhook would show in its `updated_at`.
    app.advance(Duration::from_secs(1));
    let mut plain = created["document"].clone();
    let step = &mut plain["steps"][0];
    step.as_object_mut().unwrap().remove("webhook_id");
    step["webhook"]["auth"]["password"] = json!("s3cret-pass");
    step["webhook"]["headers"]["X-Api-Key"] = json!("key-123");
    step["webhook"]["timeout_ms"] = json!(5000);
    let (s, updated) = app
        .put(&app.admin_key, &format!("/v1/flows/{flow_id}"), plain)
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(
        updated["document"]["steps"][0]["webhook_id"],
        hook_id.as_str()
    );
    assert_eq!(webhook_count(&app).await, 1);
    // Nothing changed in it, so nothing was written to it.
    let same = app
        .get_ok(&app.admin_key, &format!("/v1/webhooks/{hook_id}"))
        .await;
    assert_eq!(same["updated_at"], w["updated_at"], "{same}");

    // A save that fails for a missing flow keeps no webhook.
    let mut stray = created["document"].clone();
    stray["steps"][0]
        .as_object_mut()
        .unwrap()
        .remove("webhook_id");
    stray["steps"][0]["webhook"]["auth"]["password"] = json!("other");
    stray["steps"][0]["webhook"]["headers"]["X-Api-Key"] = json!("other-key");
    let missing = hookflow::domain::FlowId::generate();
    let (s, e) = app
        .put(&app.admin_key, &format!("/v1/flows/{missing}"), stray)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(webhook_count(&app).await, 1);

    // Deliveries carry the kept secrets.
    let (s, active) = app
        .post(
            &app.admin_key,
            &format!("/v1/flows/{flow_id}/activate"),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{active}");
    let url = active["inbound_url"].as_str().unwrap().to_owned();
    let run = enter(&app, &url, "inline@example.com").await;
    let delivery = delivery_of(&app, &run).await;
    let got = rx.wait(&app, "/inline", 1).await;
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("crm:s3cret-pass");
    assert_eq!(
        got[0].headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    assert_eq!(got[0].headers["x-api-key"], "key-123");
    assert_eq!(got[0].headers["x-team"], "growth");
    let d = wait_delivery(&app, &delivery, |d| d["status"] == "succeeded").await;
    assert_eq!(d["webhook_id"], hook_id.as_str(), "{d}");

    // Naming a reusable webhook beside an inline configuration is refused:
    // a flow save never overwrites a webhook other flows may share.
    let shared = webhook(
        &app,
        json!({"name": "Shared", "url": format!("{base}/shared")}),
    )
    .await;
    let mut doc2 = created["document"].clone();
    doc2["steps"][0]["webhook_id"] = shared["id"].clone();
    let (s, e) = app
        .put(&app.admin_key, &format!("/v1/flows/{flow_id}"), doc2)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["details"][0]["setting"], "webhook_id", "{e}");
}
