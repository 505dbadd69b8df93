//! `/v1/flows`: validation on save, versions, activation and inbound URLs,
//! tenant isolation.

use hookflow::domain::Scope;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TestApp, assert_error, spawn_app};

both_stores!(
    flows_are_validated_versioned_and_activated,
    flows_of_other_workspaces_are_not_found
);

async fn list(app: &TestApp, key: &str, name: &str) -> String {
    let (s, l) = app
        .post(key, "/v1/lists", json!({"name": name, "fields": [{"name": "first_name", "type": "text"}, {"name": "plan", "type": "text"}]}))
        .await;
    assert_eq!(s, 201, "{l}");
    l["id"].as_str().unwrap().to_owned()
}

fn welcome(list: &str) -> Value {
    json!({
        "name": "Welcome",
        "trigger": {"type": "inbound", "list_id": list, "mapping": {"customer.first_name": "first_name"}},
        "steps": [
            {"id": "join", "type": "add_to_list", "list_id": list, "next": "pause"},
            {"id": "pause", "type": "wait", "duration": "1s", "next": "upgrade"},
            {"id": "upgrade", "type": "update_field", "field": "plan", "value": "pro", "next": "won"},
            {"id": "won", "type": "goal", "name": "converted"}
        ]
    })
}

async fn flows_are_validated_versioned_and_activated(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let l = list(&app, &k, "Shop").await;

    let (s, f) = app.post(&k, "/v1/flows", welcome(&l)).await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(
        (
            f["version"].as_i64(),
            f["status"].as_str(),
            f["inbound_url"].is_null()
        ),
        (Some(1), Some("draft"), true)
    );
    let id = f["id"].as_str().unwrap().to_owned();

    // Every problem is reported, each naming its step and setting.
    let mut bad = welcome(&l);
    bad["steps"][1]["next"] = json!("nowhere");
    bad["steps"][1]["duration"] = json!("soon");
    bad["steps"][0]["list_id"] = json!(hookflow::domain::ListId::generate());
    let got = app.post(&k, "/v1/flows", bad).await;
    assert_error(&got, 422, "invalid_flow");
    let details = got.1["error"]["details"].as_array().unwrap();
    let named: Vec<(String, String)> = details
        .iter()
        .map(|d| {
            (
                d["step"].as_str().unwrap_or("").to_owned(),
                d["setting"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("pause", "next"),
        ("pause", "duration"),
        ("join", "list_id"),
    ] {
        assert!(
            named.contains(&(want.0.into(), want.1.into())),
            "{want:?} missing from {named:?}"
        );
    }
    assert_eq!(
        got.1["error"]["field"]
            .as_str()
            .map(|f| f.starts_with("steps.")),
        Some(true)
    );
    let mut misspelt = welcome(&l);
    misspelt["steps"][1]["durration"] = json!("1d");
    assert_error(
        &app.post(&k, "/v1/flows", misspelt).await,
        422,
        "unknown_field",
    );
    assert_error(
        &app.post(&k, "/v1/flows", welcome(&l)).await,
        409,
        "flow_name_taken",
    );
    let mut nul = welcome(&l);
    nul["name"] = json!("We\u{0}lcome");
    assert_error(&app.post(&k, "/v1/flows", nul).await, 422, "nul_character");

    // Saving again makes a new version.
    let mut v2 = welcome(&l);
    v2["repeat"] = json!(true);
    let (s, f2) = app
        .call(&k, Method::PUT, &format!("/v1/flows/{id}"), Some(v2))
        .await;
    assert_eq!(
        (
            s.as_u16(),
            f2["version"].as_i64(),
            f2["document"]["repeat"].as_bool()
        ),
        (200, Some(2), Some(true))
    );

    // Activation gives an inbound flow its URL; rotation replaces it.
    let (s, active) = app
        .post(&k, &format!("/v1/flows/{id}/activate"), json!({}))
        .await;
    assert_eq!(
        (s.as_u16(), active["status"].as_str()),
        (200, Some("active"))
    );
    let url = active["inbound_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/hooks/") && url.len() > 40, "{url}");
    let (_, rotated) = app
        .post(&k, &format!("/v1/flows/{id}/rotate-token"), json!({}))
        .await;
    assert_ne!(rotated["inbound_url"].as_str().unwrap(), url);
    let (_, paused) = app
        .post(&k, &format!("/v1/flows/{id}/pause"), json!({}))
        .await;
    assert_eq!(paused["status"], "paused");
    let listed = app.get(&k, "/v1/flows").await.1;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    let (s, _) = app
        .call(&k, Method::DELETE, &format!("/v1/flows/{id}"), None)
        .await;
    assert_eq!(s, 204);
    assert_error(
        &app.get(&k, &format!("/v1/flows/{id}")).await,
        404,
        "not_found",
    );
    app.stop().await;
}

async fn flows_of_other_workspaces_are_not_found(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let other = app.workspace_key("tenant-b", Scope::Admin).await;
    let l = list(&app, &k, "Shop").await;
    let (_, f) = app.post(&k, "/v1/flows", welcome(&l)).await;
    let id = f["id"].as_str().unwrap();
    for (method, path, body) in [
        (Method::GET, format!("/v1/flows/{id}"), None),
        (
            Method::PUT,
            format!("/v1/flows/{id}"),
            Some(welcome(&list(&app, &other, "Theirs").await)),
        ),
        (Method::DELETE, format!("/v1/flows/{id}"), None),
        (
            Method::POST,
            format!("/v1/flows/{id}/activate"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/flows/{id}/pause"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/flows/{id}/rotate-token"),
            Some(json!({})),
        ),
    ] {
        let got = app.call(&other, method.clone(), &path, body).await;
        assert_error(&got, 404, "not_found");
    }
    // A flow may not name another workspace's list.
    let got = app.post(&other, "/v1/flows", welcome(&l)).await;
    assert_error(&got, 422, "invalid_flow");
    assert_eq!(
        app.get(&other, "/v1/flows").await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        app.get(&k, &format!("/v1/flows/{id}")).await.1["version"],
        1,
        "unchanged"
    );
    app.stop().await;
}
