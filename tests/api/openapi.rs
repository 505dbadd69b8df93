//! The OpenAPI document is complete and true: every handler annotated for
//! it is routed and documented, no route bypasses the documented router, and
//! every documented operation is served.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::helpers::{Backend, spawn_app};

/// `(METHOD, path)` of every `#[utoipa::path(...)]` in `src/api`.
fn annotated_operations() -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
    for entry in std::fs::read_dir(dir).unwrap() {
        let src = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for chunk in src.split("#[utoipa::path(").skip(1) {
            let method = chunk.split(',').next().unwrap().trim().to_uppercase();
            let path = chunk
                .split("path = \"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_owned();
            ops.insert((method, path));
        }
        assert!(
            !src.contains(".route(\"") && !src.contains(".nest("),
            "a route is added outside OpenApiRouter; register it with routes!() so it is documented"
        );
    }
    ops
}

fn documented_operations() -> BTreeSet<(String, String)> {
    let doc = hookflow::api::openapi_document();
    let mut ops = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        for (present, m) in [
            (item.get.is_some(), "GET"),
            (item.post.is_some(), "POST"),
            (item.put.is_some(), "PUT"),
            (item.patch.is_some(), "PATCH"),
            (item.delete.is_some(), "DELETE"),
        ] {
            if present {
                ops.insert((m.to_owned(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn every_annotated_handler_is_in_the_document() {
    let annotated = annotated_operations();
    let documented = documented_operations();
    assert!(annotated.len() >= 20, "{annotated:?}");
    let missing: Vec<_> = annotated.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "handlers missing from the OpenAPI document (not registered with routes!()): {missing:?}"
    );
    let stray: Vec<_> = documented.difference(&annotated).collect();
    assert!(stray.is_empty(), "documented but not annotated: {stray:?}");
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let served = app.get("", "/openapi.json").await.1;
    assert_eq!(
        served["openapi"].as_str().map(|v| v.starts_with("3.1")),
        Some(true),
        "OpenAPI 3.1"
    );
    for (method, path) in documented_operations() {
        assert!(
            served["paths"][&path][method.to_lowercase()].is_object(),
            "{method} {path} not in /openapi.json"
        );
        let concrete = path
            .replace("{id}", "ls_00000000000000000000000000")
            .replace("{contact_id}", "ct_00000000000000000000000000")
            .replace("{name}", "x");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = app.call(&app.admin_key, m, &concrete, None).await;
        assert!(
            body["error"]["code"] != "route_not_found"
                && body["error"]["code"] != "method_not_allowed",
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
    app.stop().await;
}

/// The `type` values of a `oneOf` schema's variants, read from the document.
fn variant_types(schema: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(values) = m
                    .get("properties")
                    .and_then(|p| p.get("type"))
                    .and_then(|t| t.get("enum"))
                    .and_then(|e| e.as_array())
                {
                    out.extend(values.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, &mut out);
    out
}

/// The error codes the document lists are exactly the codes sent on the
/// wire (a serde rename the schema generator did not see once listed the
/// Rust variant names instead).
#[test]
fn the_documented_error_codes_are_the_wire_forms() {
    let doc = serde_json::to_value(hookflow::api::openapi_document()).unwrap();
    let listed: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode is an enum of strings")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let sent: BTreeSet<String> = hookflow::domain::ErrorCode::ALL
        .iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(listed, sent);
    assert!(listed.contains("not_found"), "{listed:?}");
}

/// The flow document is described completely: the step and trigger types
/// are read from the schema (generated from the code), and each is one the
/// code accepts and docs/flows.md explains; no hand-typed list to forget.
#[test]
fn the_flow_document_is_described_in_full() {
    let doc = serde_json::to_value(hookflow::api::openapi_document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/flows.md")).unwrap();
    let steps = variant_types(&schemas["StepKind"]);
    let triggers = variant_types(&schemas["Trigger"]);
    assert!(steps.len() >= 9 && steps.contains("wait"), "{steps:?}");
    assert!(
        triggers.len() >= 5 && triggers.contains("inbound"),
        "{triggers:?}"
    );
    for step in &steps {
        // Known to the code: only missing settings can be wrong, not the type.
        let err = serde_json::from_value::<hookflow::domain::flow::Step>(
            serde_json::json!({"id": "s", "type": step}),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(!err.contains("unknown variant"), "step type {step}: {err}");
        assert!(
            reference.contains(&format!("`{step}`")),
            "docs/flows.md does not explain step `{step}`"
        );
    }
    for trigger in &triggers {
        let err = serde_json::from_value::<hookflow::domain::flow::Trigger>(
            serde_json::json!({"type": trigger}),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(!err.contains("unknown variant"), "trigger {trigger}: {err}");
        assert!(
            reference.contains(&format!("`{trigger}`")),
            "docs/flows.md does not explain trigger `{trigger}`"
        );
    }
    // And nothing the code accepts is missing from the schema.
    let err = serde_json::from_value::<hookflow::domain::flow::Step>(
        serde_json::json!({"id": "s", "type": "no_such_step"}),
    )
    .unwrap_err()
    .to_string();
    let accepted: BTreeSet<String> = err
        .split("expected one of ")
        .nth(1)
        .unwrap_or("")
        .split(", ")
        .map(|v| v.trim_matches(|c| c == '`' || c == ' ').to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    assert_eq!(
        accepted, steps,
        "step types the code accepts vs the schema's ({err})"
    );
    for setting in [
        "duration",
        "until",
        "time_of_day",
        "event",
        "timeout",
        "on_event",
        "on_timeout",
    ] {
        assert!(
            schemas["Wait"]["properties"].get(setting).is_some(),
            "wait setting {setting} missing"
        );
    }
    assert!(
        doc["paths"]["/v1/flows"]["post"]["requestBody"]
            .to_string()
            .contains("FlowDoc")
    );
}

/// docs/flows.md names every setting of the flow document that the OpenAPI
/// schema has: a new setting is documented in the same change.
#[test]
fn the_flow_reference_names_every_setting() {
    fn properties(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Object(props)) = m.get("properties") {
                    out.extend(props.keys().cloned());
                }
                m.values().for_each(|x| properties(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| properties(x, out)),
            _ => {}
        }
    }
    let doc = serde_json::to_value(hookflow::api::openapi_document()).unwrap();
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/flows.md")).unwrap();
    let mut settings = BTreeSet::new();
    for schema in [
        "FlowDoc",
        "Trigger",
        "Step",
        "StepKind",
        "Wait",
        "Condition",
    ] {
        properties(&doc["components"]["schemas"][schema], &mut settings);
    }
    settings.remove("type");
    assert!(settings.contains("signature"), "{settings:?}");
    let missing: Vec<_> = settings
        .iter()
        .filter(|s| !reference.contains(&format!("`{s}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/flows.md does not name {missing:?}"
    );
}

/// Issue 8 §3: the statuses that extractors and layers give are documented
/// on every operation they can come from, not only where a handler's
/// author remembered them.
#[test]
fn every_operation_documents_the_statuses_its_input_can_get() {
    let doc = serde_json::to_value(hookflow::api::openapi_document()).unwrap();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let documented = |status: &str| op["responses"].get(status).is_some();
            let mut expect = Vec::new();
            if op.get("requestBody").is_some() {
                expect.extend(["400", "408", "413", "415", "422", "503"]);
            }
            let query = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            if query {
                expect.push("400");
            }
            let open = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().all(|r| r.get("bearer").is_none()));
            if !open {
                expect.extend(["401", "403"]);
            }
            for status in expect {
                if !documented(status) {
                    missing.push(format!("{method} {path}: {status}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "undocumented statuses: {missing:#?}");
    // A rejected bulk item is one of the forms a result can take.
    let item = &doc["components"]["schemas"]["BulkItem"]["oneOf"];
    let forms = item.to_string();
    assert!(
        forms.contains("\"rejected\"") && forms.contains("\"accepted\""),
        "{forms}"
    );
}
