//! Bad input: each malformed request gets the right status and error code,
//! and the database is exactly as it was before.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::{Backend, TEST_BODY_LIMIT, TestApp, spawn_app};

both_stores!(malformed_requests_are_refused_and_change_nothing);

/// Everything the API can show of the workspace.
async fn snapshot(app: &TestApp) -> Value {
    let k = &app.admin_key;
    let lists = app.get_ok(k, "/v1/lists?limit=500").await;
    let mut members = Vec::new();
    for l in lists["data"].as_array().unwrap() {
        members.push(
            app.get_ok(
                k,
                &format!("/v1/lists/{}/members?limit=500", l["id"].as_str().unwrap()),
            )
            .await,
        );
    }
    json!({
        "lists": lists,
        "contacts": app.get_ok(k, "/v1/contacts?limit=500").await,
        "members": members,
        "flows": app.get_ok(k, "/v1/flows?limit=500").await,
        "runs": app.get_ok(k, "/v1/runs?limit=500").await,
        "rows": app.row_counts().await,
    })
}

/// What to send: JSON, raw bytes with a content type, or nothing.
enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Body,
    key: Option<String>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    body: Body,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        body,
        key: None,
        status,
        code,
        field: None,
    }
}

impl Case {
    fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }
    fn key(mut self, k: &str) -> Self {
        self.key = Some(k.to_owned());
        self
    }
}

fn contact(extra: Value) -> Body {
    let mut base = json!({"email": "new@example.com"});
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    Body::Json(base)
}

async fn malformed_requests_are_refused_and_change_nothing(b: Backend) {
    let Some(app) = spawn_app(b).await else {
        return;
    };
    let k = app.admin_key.clone();
    let (_, list) = app
        .post(&k, "/v1/lists", json!({"name": "Shop", "fields": [
            {"name": "age", "type": "number"}, {"name": "vip", "type": "boolean"},
            {"name": "birthday", "type": "date"}, {"name": "tier", "type": "enum", "options": ["gold", "silver"]},
            {"name": "nickname", "type": "text"}]}))
        .await;
    let l = list["id"].as_str().unwrap().to_owned();
    let (_, c1) = app
        .post(
            &k,
            "/v1/contacts",
            json!({"email": "one@example.com", "lists": [l]}),
        )
        .await;
    let (_, c2) = app
        .post(&k, "/v1/contacts", json!({"email": "two@example.com"}))
        .await;
    let c1 = c1["id"].as_str().unwrap().to_owned();
    let c2 = c2["id"].as_str().unwrap().to_owned();
    let unknown_ct = hookflow::domain::ContactId::generate().to_string();
    let unknown_ls = hookflow::domain::ListId::generate().to_string();
    let long_local = format!("{}@example.com", "a".repeat(1000));
    let nested = format!(
        "{{\"email\":\"d@example.com\",\"fields\":{{\"x\":{}{}}}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let huge = format!(
        "{{\"email\":\"big@example.com\",\"fields\":{{\"x\":\"{}\"}}}}",
        "x".repeat(TEST_BODY_LIMIT + 1)
    );
    use Method as M;
    let cases = vec![
        case("truncated JSON", M::POST, "/v1/contacts", Body::Raw("application/json", b"{\"email\":".to_vec()), 400, "malformed_json"),
        case("not JSON", M::POST, "/v1/contacts", Body::Raw("application/json", b"email=a@b.co".to_vec()), 400, "malformed_json"),
        case("empty body", M::POST, "/v1/contacts", Body::Raw("application/json", vec![]), 400, "malformed_json"),
        case("trailing garbage", M::POST, "/v1/contacts", Body::Raw("application/json", b"{\"email\":\"t@example.com\"} x".to_vec()), 400, "malformed_json"),
        case("deeply nested", M::POST, "/v1/contacts", Body::Raw("application/json", nested.into_bytes()), 400, "malformed_json"),
        case("invalid UTF-8", M::POST, "/v1/contacts", Body::Raw("application/json", b"{\"email\":\"\xff@example.com\"}".to_vec()), 422, "invalid_value"), // the value at `email`, named
        case("array, not object", M::POST, "/v1/contacts", Body::Json(json!([{"email": "a@example.com"}])), 422, "invalid_value"),
        case("no content type", M::POST, "/v1/contacts", Body::Raw("", b"{\"email\":\"n@example.com\"}".to_vec()), 415, "unsupported_media_type"),
        case("text/plain", M::POST, "/v1/contacts", Body::Raw("text/plain", b"{\"email\":\"n@example.com\"}".to_vec()), 415, "unsupported_media_type"),
        case("form encoded", M::POST, "/v1/lists", Body::Raw("application/x-www-form-urlencoded", b"name=x".to_vec()), 415, "unsupported_media_type"),
        case("oversized body", M::POST, "/v1/contacts", Body::Raw("application/json", huge.into_bytes()), 413, "payload_too_large"),
        case("missing email", M::POST, "/v1/contacts", Body::Json(json!({"status": "subscribed"})), 422, "missing_field").field("email"),
        case("email a@", M::POST, "/v1/contacts", Body::Json(json!({"email": "a@"})), 422, "invalid_email").field("email"),
        case("email @b.c", M::POST, "/v1/contacts", Body::Json(json!({"email": "@b.c"})), 422, "invalid_email").field("email"),
        case("email with space", M::POST, "/v1/contacts", Body::Json(json!({"email": "a b@c.d"})), 422, "invalid_email").field("email"),
        case("1000-char local part", M::POST, "/v1/contacts", Body::Json(json!({"email": long_local})), 422, "invalid_email").field("email"),
        case("empty email", M::POST, "/v1/contacts", Body::Json(json!({"email": " "})), 422, "invalid_email").field("email"),
        case("email is a number", M::POST, "/v1/contacts", Body::Json(json!({"email": 42})), 422, "invalid_value").field("email"),
        case("phone without +", M::POST, "/v1/contacts", contact(json!({"phone": "380631234567"})), 422, "invalid_phone").field("phone"),
        case("phone too short", M::POST, "/v1/contacts", contact(json!({"phone": "+12"})), 422, "invalid_phone").field("phone"),
        case("phone with letters", M::POST, "/v1/contacts", contact(json!({"phone": "+38063abc4567"})), 422, "invalid_phone").field("phone"),
        case("phone is a number", M::POST, "/v1/contacts", contact(json!({"phone": 380631234567u64})), 422, "invalid_value").field("phone"),
        case("unknown status", M::POST, "/v1/contacts", contact(json!({"status": "deleted"})), 422, "invalid_value").field("status"),
        case("number field gets text", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"age": "abc"}})), 422, "invalid_field_value").field("fields.age"),
        case("boolean field gets maybe", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"vip": "maybe"}})), 422, "invalid_field_value").field("fields.vip"),
        case("impossible date", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"birthday": "1990-02-30"}})), 422, "invalid_field_value").field("fields.birthday"),
        case("enum value not allowed", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"tier": "bronze"}})), 422, "invalid_field_value").field("fields.tier"),
        case("object into number field", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"age": {"v": 1}}})), 422, "invalid_field_value").field("fields.age"),
        case("field no list defines", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"shoe": 42}})), 422, "unknown_field").field("fields.shoe"),
        case("misspelt top-level key", M::POST, "/v1/contacts", contact(json!({"fiels": {"age": 1}})), 422, "unknown_field").field("fiels"),
        case("fields not an object", M::POST, "/v1/contacts", contact(json!({"fields": "age=1"})), 422, "invalid_value").field("fields"),
        case("list id of the wrong kind", M::POST, "/v1/contacts", contact(json!({"lists": [c1]})), 422, "invalid_id").field("lists[0]"),
        case("unknown list", M::POST, "/v1/contacts", contact(json!({"lists": [unknown_ls]})), 422, "unknown_list").field("lists[0]"),
        case("unknown contact id", M::GET, format!("/v1/contacts/{unknown_ct}"), Body::None, 404, "not_found"),
        case("contact path with a list id", M::GET, format!("/v1/contacts/{l}"), Body::None, 404, "not_found"),
        case("garbage id", M::GET, "/v1/contacts/%27%20OR%201=1", Body::None, 404, "not_found"),
        case("patch with bad email", M::PATCH, format!("/v1/contacts/{c1}"), Body::Json(json!({"email": "nope"})), 422, "invalid_email").field("email"),
        case("patch to a taken email", M::PATCH, format!("/v1/contacts/{c2}"), Body::Json(json!({"email": "one@example.com"})), 409, "email_taken"),
        case("patch with bad field value", M::PATCH, format!("/v1/contacts/{c1}"), Body::Json(json!({"fields": {"age": "old"}})), 422, "invalid_field_value").field("fields.age"),
        case("patch unknown contact", M::PATCH, format!("/v1/contacts/{unknown_ct}"), Body::Json(json!({"status": "bounced"})), 404, "not_found"),
        case("delete unknown contact", M::DELETE, format!("/v1/contacts/{unknown_ct}"), Body::None, 404, "not_found"),
        case("NUL in a list name", M::POST, "/v1/lists", Body::Json(json!({"name": "a\u{0}b"})), 422, "invalid_name").field("name"),
        case("NUL in an enum option", M::POST, "/v1/lists", Body::Json(json!({"name": "N", "fields": [{"name": "t", "type": "enum", "options": ["a\u{0}"]}]})), 422, "invalid_field_definition").field("fields[0].options"),
        case("NUL in a text value", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"nickname": "a\u{0}b"}})), 422, "invalid_field_value").field("fields.nickname"),
        case("NUL in a field name path", M::DELETE, format!("/v1/lists/{l}/fields/a%00"), Body::None, 404, "not_found"),
        case("date out of range", M::POST, "/v1/contacts", contact(json!({"lists": [l], "fields": {"birthday": "+10000-01-01"}})), 422, "invalid_field_value").field("fields.birthday"),
        case("huge bad value is not echoed whole", M::POST, "/v1/contacts", contact(json!({"status": "x".repeat(50_000)})), 422, "invalid_value").field("status"),
        case("empty list name", M::POST, "/v1/lists", Body::Json(json!({"name": "  "})), 422, "invalid_name").field("name"),
        case("list name taken", M::POST, "/v1/lists", Body::Json(json!({"name": "Shop"})), 409, "list_name_taken"),
        case("bad field name", M::POST, "/v1/lists", Body::Json(json!({"name": "N", "fields": [{"name": "1st", "type": "text"}]})), 422, "invalid_field_definition").field("fields[0].name"),
        case("unknown field type", M::POST, "/v1/lists", Body::Json(json!({"name": "N", "fields": [{"name": "c", "type": "color"}]})), 422, "invalid_value").field("fields[0].type"),
        case("enum without options", M::POST, "/v1/lists", Body::Json(json!({"name": "N", "fields": [{"name": "t", "type": "enum"}]})), 422, "invalid_field_definition").field("fields[0].options"),
        case("field defined twice", M::POST, "/v1/lists", Body::Json(json!({"name": "N", "fields": [{"name": "a", "type": "text"}, {"name": "a", "type": "number"}]})), 422, "duplicate_field").field("fields[1]"),
        case("existing field added again", M::POST, format!("/v1/lists/{l}/fields"), Body::Json(json!({"name": "age", "type": "text"})), 409, "field_exists"),
        case("remove unknown field", M::DELETE, format!("/v1/lists/{l}/fields/nope"), Body::None, 404, "not_found"),
        case("member id of the wrong kind", M::POST, format!("/v1/lists/{l}/members"), Body::Json(json!({"contact_id": l})), 422, "invalid_id").field("contact_id"),
        case("member unknown contact", M::POST, format!("/v1/lists/{l}/members"), Body::Json(json!({"contact_id": unknown_ct})), 404, "not_found"),
        case("members of unknown list", M::GET, format!("/v1/lists/{unknown_ls}/members"), Body::None, 404, "not_found"),
        case("delete unknown list", M::DELETE, format!("/v1/lists/{unknown_ls}"), Body::None, 404, "not_found"),
        case("limit zero", M::GET, "/v1/contacts?limit=0", Body::None, 400, "invalid_limit"),
        case("limit not a number", M::GET, "/v1/contacts?limit=ten", Body::None, 400, "invalid_query"),
        case("forged cursor", M::GET, "/v1/contacts?cursor=%21%21", Body::None, 400, "invalid_cursor"),
        case("unknown query parameter", M::GET, "/v1/contacts?colour=red", Body::None, 400, "invalid_query"),
        case("bad status filter", M::GET, "/v1/contacts?status=gone", Body::None, 400, "invalid_query"),
        case("lookup with bad email", M::GET, "/v1/contacts/lookup?email=nope", Body::None, 400, "invalid_email"),
        case("unknown route", M::GET, "/v1/nothing", Body::None, 404, "route_not_found"),
        case("wrong method", M::PUT, "/v1/lists", Body::Json(json!({})), 405, "method_not_allowed"),
        case("no key", M::POST, "/v1/lists", Body::Json(json!({"name": "K"})), 401, "unauthorized").key(""),
        case("wrong key", M::POST, "/v1/lists", Body::Json(json!({"name": "K"})), 401, "unauthorized").key("hfk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ];
    assert!(cases.len() >= 30);
    let before = snapshot(&app).await;
    for c in cases {
        let mut req = app
            .http
            .request(c.method.clone(), format!("{}{}", app.base, c.path));
        let key = c.key.clone().unwrap_or_else(|| k.clone());
        if !key.is_empty() {
            req = req.bearer_auth(&key);
        }
        req = match c.body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw("", bytes) => req.body(bytes),
            Body::Raw(ct, bytes) => req.header("content-type", ct).body(bytes),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = resp.status().as_u16();
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", c.name));
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(body["error"]["code"], c.code, "{}: {body}", c.name);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            c.name
        );
        if let Some(f) = c.field {
            assert_eq!(body["error"]["field"], f, "{}: {body}", c.name);
        }
        assert_eq!(
            snapshot(&app).await,
            before,
            "{} changed the database",
            c.name
        );
    }
    app.stop().await;
}
