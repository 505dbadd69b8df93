use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::domain::{FieldType, ListId};

/// A workspace with two lists: `shop` (first_name, plan) and `vip` (tier).
struct TestCatalog {
    lists: HashMap<ListId, Vec<FieldDef>>,
    shop: ListId,
    vip: ListId,
}

impl TestCatalog {
    fn new() -> Self {
        let (shop, vip) = (ListId::generate(), ListId::generate());
        let mut lists = HashMap::new();
        lists.insert(
            shop.clone(),
            vec![
                FieldDef::new("first_name", FieldType::Text, vec![]).unwrap(),
                FieldDef::new("plan", FieldType::Enum, vec!["free".into(), "pro".into()]).unwrap(),
            ],
        );
        lists.insert(
            vip.clone(),
            vec![FieldDef::new("tier", FieldType::Text, vec![]).unwrap()],
        );
        Self { lists, shop, vip }
    }
}

impl Catalog for TestCatalog {
    fn list_fields(&self, list: &ListId) -> Option<Vec<FieldDef>> {
        self.lists.get(list).cloned()
    }
}

/// The benchmark flow: add to list → wait 1 s → update field → goal.
fn good(cat: &TestCatalog) -> serde_json::Value {
    json!({
        "name": "Welcome",
        "trigger": {"type": "inbound", "list_id": cat.shop, "mapping": {"customer.first_name": "first_name"}},
        "steps": [
            {"id": "join", "type": "add_to_list", "list_id": cat.vip, "next": "pause"},
            {"id": "pause", "type": "wait", "duration": "1s", "next": "upgrade"},
            {"id": "upgrade", "type": "update_field", "field": "plan", "value": "pro", "next": "won"},
            {"id": "won", "type": "goal", "name": "converted"}
        ],
        "exit_conditions": [{"field": "status", "op": "eq", "value": "unsubscribed"}]
    })
}

fn parse(v: serde_json::Value) -> FlowDoc {
    serde_json::from_value(v).expect("document parses")
}

fn errors(v: serde_json::Value, cat: &TestCatalog) -> Vec<(Option<String>, String)> {
    validate(&parse(v), cat)
        .into_iter()
        .map(|e| (e.step, e.setting))
        .collect()
}

fn one(step: &str, setting: &str) -> Vec<(Option<String>, String)> {
    vec![(Some(step.to_owned()), setting.to_owned())]
}

#[test]
fn a_well_formed_flow_has_no_errors() {
    let cat = TestCatalog::new();
    assert_eq!(validate(&parse(good(&cat)), &cat), vec![]);
}

#[test]
fn every_step_type_parses() {
    let cat = TestCatalog::new();
    let doc = json!({
        "name": "All", "trigger": {"type": "event", "name": "order.paid"}, "repeat": true,
        "steps": [
            {"id": "a", "type": "wait", "until": "2030-01-01T09:00:00Z", "next": "b"},
            {"id": "b", "type": "wait", "time_of_day": "09:30", "time_zone": "Europe/Rome", "next": "c"},
            {"id": "c", "type": "wait", "event": "order.shipped", "timeout": "3d", "on_event": "d", "on_timeout": "x"},
            {"id": "d", "type": "condition", "match": "any", "yes": "e", "no": "x", "conditions": [
                {"field": "fields.plan", "op": "in", "value": ["pro"]},
                {"field": "event.order.total", "op": "gte", "value": 100},
                {"field": "lists", "op": "contains", "value": cat.vip},
                {"field": "phone", "op": "exists"}]},
            {"id": "e", "type": "add_to_list", "list_id": cat.shop, "next": "f"},
            {"id": "f", "type": "remove_from_list", "list_id": cat.shop, "next": "g"},
            {"id": "g", "type": "move_to_list", "from_list_id": cat.shop, "to_list_id": cat.vip, "next": "h"},
            {"id": "h", "type": "update_field", "field": "tier", "value": "gold", "next": "i"},
            {"id": "i", "type": "start_flow", "flow_id": "fl_01hzzzzzzzzzzzzzzzzzzzzzzz", "next": "j"},
            {"id": "j", "type": "goal", "name": "done", "next": "x"},
            {"id": "x", "type": "exit"}
        ]
    });
    assert_eq!(errors(doc.clone(), &cat), vec![]);
    let parsed = parse(doc);
    assert!(parsed.repeat);
    // Round trip: what is stored reads back the same.
    assert_eq!(parse(serde_json::to_value(&parsed).unwrap()), parsed);
}

#[test]
fn unknown_step_targets_are_named() {
    let cat = TestCatalog::new();
    let mut doc = good(&cat);
    doc["steps"][1]["next"] = json!("nowhere");
    let errs = errors(doc, &cat);
    assert!(
        errs.contains(&(Some("pause".into()), "next".into())),
        "{errs:?}"
    );
}

#[test]
fn unreachable_steps_are_named() {
    let cat = TestCatalog::new();
    let mut doc = good(&cat);
    doc["steps"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "orphan", "type": "exit"}));
    assert_eq!(errors(doc, &cat), one("orphan", "id"));
}

#[test]
fn a_loop_without_a_wait_is_refused_and_one_with_a_wait_is_not() {
    let cat = TestCatalog::new();
    let spin = json!({"name": "Spin", "trigger": {"type": "flow"}, "steps": [
        {"id": "a", "type": "update_field", "field": "tier", "value": "x", "next": "b"},
        {"id": "b", "type": "add_to_list", "list_id": cat.vip, "next": "a"}]});
    assert_eq!(errors(spin, &cat), one("b", "next"));
    let paced = json!({"name": "Paced", "trigger": {"type": "flow"}, "steps": [
        {"id": "a", "type": "add_to_list", "list_id": cat.vip, "next": "b"},
        {"id": "b", "type": "wait", "duration": "1d", "next": "a"}]});
    assert_eq!(errors(paced, &cat), vec![]);
    let until_loop = json!({"name": "Until", "trigger": {"type": "flow"}, "steps": [
        {"id": "a", "type": "wait", "until": "2020-01-01T00:00:00Z", "next": "b"},
        {"id": "b", "type": "add_to_list", "list_id": cat.vip, "next": "a"}]});
    assert_eq!(
        errors(until_loop, &cat),
        one("b", "next"),
        "a past `until` does not pause a loop"
    );
    let self_loop = json!({"name": "Self", "trigger": {"type": "flow"}, "steps": [
        {"id": "a", "type": "condition", "conditions": [{"field": "status", "op": "eq", "value": "x"}], "yes": "a", "no": "b"},
        {"id": "b", "type": "exit"}]});
    assert_eq!(errors(self_loop, &cat), one("a", "next"));
}

#[test]
fn missing_lists_and_fields_are_named() {
    let cat = TestCatalog::new();
    let mut doc = good(&cat);
    doc["steps"][0]["list_id"] = json!(ListId::generate());
    doc["steps"][2]["field"] = json!("shoe_size");
    doc["trigger"]["mapping"] = json!({"customer.size": "size", "customer.tier": "tier"});
    let errs = errors(doc, &cat);
    assert!(
        errs.contains(&(Some("join".into()), "list_id".into())),
        "{errs:?}"
    );
    assert!(
        errs.contains(&(Some("upgrade".into()), "field".into())),
        "{errs:?}"
    );
    assert!(
        errs.contains(&(None, "trigger.mapping.size".into())),
        "{errs:?}"
    );
    let mut doc = good(&cat);
    doc["trigger"]["mapping"] = json!({"items[x].sku": "first_name"});
    assert!(errors(doc, &cat).contains(&(None, "trigger.mapping.items[x].sku".into())));
    let mut doc = good(&cat);
    doc["trigger"]["list_id"] = json!("ct_01hzzzzzzzzzzzzzzzzzzzzzzz");
    assert!(errors(doc, &cat).contains(&(None, "trigger.list_id".into())));
}

#[test]
fn allowed_ips_are_ranges_or_addresses_and_bad_ones_are_named() {
    let cat = TestCatalog::new();
    let mut doc = good(&cat);
    doc["trigger"]["allowed_ips"] =
        json!(["10.0.0.0/8", "192.168.1.7", "::1/128", "2001:db8::/32"]);
    assert_eq!(errors(doc, &cat), vec![]);
    let mut doc = good(&cat);
    doc["trigger"]["allowed_ips"] = json!(["10.0.0.0/8", "10.0.0.0/33", "localhost", ""]);
    assert_eq!(
        errors(doc, &cat),
        vec![
            (None, "trigger.allowed_ips[1]".into()),
            (None, "trigger.allowed_ips[2]".into()),
            (None, "trigger.allowed_ips[3]".into()),
        ]
    );
}

#[test]
fn allowed_ips_contain_their_addresses_only() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let list = vec![
        "10.0.0.0/8".to_owned(),
        "::1/128".to_owned(),
        "192.168.1.7".to_owned(),
    ];
    for yes in ["10.1.2.3", "::1", "192.168.1.7", "::ffff:10.9.9.9"] {
        assert!(ip_allowed(&list, ip(yes)), "{yes}");
    }
    for no in [
        "11.0.0.1",
        "127.0.0.1",
        "192.168.1.8",
        "::2",
        "::ffff:11.0.0.1",
    ] {
        assert!(!ip_allowed(&list, ip(no)), "{no}");
    }
    assert!(ip_allowed(&[], ip("203.0.113.5")), "no list: anyone");
    assert!(
        !ip_allowed(&["nonsense".to_owned()], ip("127.0.0.1")),
        "an unparsable entry allows nothing"
    );
}

#[test]
fn malformed_waits_are_named() {
    let cat = TestCatalog::new();
    for (wait, setting) in [
        (json!({"duration": "3 days"}), "duration"),
        (json!({"duration": "0s"}), "duration"),
        (json!({"until": "tomorrow"}), "until"),
        (json!({"time_of_day": "25:00"}), "time_of_day"),
        (
            json!({"duration": "1h", "until": "2030-01-01T00:00:00Z"}),
            "wait",
        ),
        (json!({}), "wait"),
        (
            json!({"duration": "1h", "time_zone": "Europe/Rome"}),
            "time_zone",
        ),
        (
            json!({"event": "paid", "on_event": "upgrade", "on_timeout": "won"}),
            "timeout",
        ),
    ] {
        let mut doc = good(&cat);
        let step = doc["steps"][1].as_object_mut().unwrap();
        step.retain(|k, _| k == "id" || k == "type" || k == "next");
        step.extend(wait.as_object().unwrap().clone());
        if wait.get("event").is_some() {
            step.remove("next");
        }
        let errs = errors(doc, &cat);
        assert!(
            errs.contains(&(Some("pause".into()), setting.into())),
            "{wait}: {errs:?}"
        );
    }
}

#[test]
fn conditions_are_checked() {
    let cat = TestCatalog::new();
    for (cond, setting) in [
        (
            json!({"field": "fields.nope", "op": "eq", "value": 1}),
            "conditions[0].field",
        ),
        (
            json!({"field": "colour", "op": "eq", "value": 1}),
            "conditions[0].field",
        ),
        (
            json!({"field": "status", "op": "eq"}),
            "conditions[0].value",
        ),
        (
            json!({"field": "phone", "op": "exists", "value": 1}),
            "conditions[0].value",
        ),
        (
            json!({"field": "status", "op": "in", "value": "subscribed"}),
            "conditions[0].value",
        ),
        (
            json!({"field": "event.total", "op": "gt", "value": {"a": 1}}),
            "conditions[0].value",
        ),
    ] {
        let doc = json!({"name": "C", "trigger": {"type": "list_added", "list_id": cat.shop}, "steps": [
            {"id": "c", "type": "condition", "conditions": [cond.clone()], "yes": "x", "no": "x"},
            {"id": "x", "type": "exit"}]});
        assert_eq!(errors(doc, &cat), one("c", setting), "{cond}");
    }
}

#[test]
fn duplicate_ids_and_empty_flows_are_refused() {
    let cat = TestCatalog::new();
    let mut doc = good(&cat);
    doc["steps"][3]["id"] = json!("join");
    assert!(errors(doc, &cat).contains(&(Some("join".into()), "id".into())));
    let mut doc = good(&cat);
    doc["steps"] = json!([]);
    assert!(errors(doc, &cat).contains(&(None, "steps".into())));
}

#[test]
fn unknown_step_types_and_settings_do_not_parse() {
    let cat = TestCatalog::new();
    let mut doc = good(&cat);
    doc["steps"][0]["type"] = json!("teleport");
    assert!(serde_json::from_value::<FlowDoc>(doc).is_err());
    let mut doc = good(&cat);
    doc["steps"][1]["durration"] = json!("1d");
    assert!(
        serde_json::from_value::<FlowDoc>(doc).is_err(),
        "a misspelt setting would be silently lost"
    );
}

#[test]
fn durations() {
    assert_eq!(
        parse_duration("3d").unwrap(),
        Duration::from_secs(3 * 86_400)
    );
    assert_eq!(parse_duration("2h30m").unwrap(), Duration::from_secs(9_000));
    assert_eq!(
        parse_duration("1w2d").unwrap(),
        Duration::from_secs(9 * 86_400)
    );
    for bad in [
        "",
        "3",
        "d",
        "1x",
        "30m2h",
        "1h1h",
        "-1s",
        "1.5h",
        "9999999999s",
        "300w",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn duration_parsing_never_panics(s in "\\PC{0,20}") {
        let _ = parse_duration(&s);
    }

    #[test]
    fn durations_round_trip(w in 0u64..5, d in 0u64..7, h in 0u64..24, m in 0u64..60, s in 1u64..60) {
        let text = format!("{}{}{}{}{s}s",
            if w > 0 { format!("{w}w") } else { String::new() },
            if d > 0 { format!("{d}d") } else { String::new() },
            if h > 0 { format!("{h}h") } else { String::new() },
            if m > 0 { format!("{m}m") } else { String::new() });
        let secs = w * 604_800 + d * 86_400 + h * 3_600 + m * 60 + s;
        prop_assert_eq!(parse_duration(&text).unwrap(), Duration::from_secs(secs));
    }

    /// Random graphs of steps never make validation panic, and a flow of
    /// only waits has no loop error whatever its edges.
    #[test]
    fn graph_validation_never_panics(edges in proptest::collection::vec((0usize..6, 0usize..6), 1..12), waits in proptest::collection::vec(any::<bool>(), 6)) {
        let cat = TestCatalog::new();
        let mut next: Vec<Option<usize>> = vec![None; 6];
        for (a, b) in edges { next[a] = Some(b); }
        let steps: Vec<_> = (0..6).map(|i| {
            let n = next[i].map(|t| format!("s{t}"));
            if waits[i] {
                json!({"id": format!("s{i}"), "type": "wait", "duration": "1m", "next": n})
            } else {
                json!({"id": format!("s{i}"), "type": "add_to_list", "list_id": cat.vip, "next": n})
            }
        }).collect();
        let doc = json!({"name": "G", "trigger": {"type": "flow"}, "steps": steps});
        let errs = errors(doc, &cat);
        if waits.iter().all(|w| *w) {
            prop_assert!(errs.iter().all(|(_, s)| s != "next"));
        }
    }
}

#[test]
fn a_wait_parses_to_one_typed_form_or_every_problem() {
    let w = |v: serde_json::Value| serde_json::from_value::<Wait>(v).unwrap();
    assert_eq!(
        w(json!({"duration": "2h30m"})).form().unwrap(),
        WaitFor::Duration(Duration::from_secs(9_000))
    );
    assert_eq!(
        w(json!({"until": "2030-01-01T00:00:00Z"})).form().unwrap(),
        WaitFor::Until(1_893_456_000_000)
    );
    assert_eq!(
        w(json!({"time_of_day": "09:30", "time_zone": "Europe/Rome"}))
            .form()
            .unwrap(),
        WaitFor::TimeOfDay {
            at: chrono::NaiveTime::from_hms_opt(9, 30, 0).unwrap(),
            zone: Some(chrono_tz::Europe::Rome)
        }
    );
    assert_eq!(
        w(json!({"time_of_day": "09:30"})).form().unwrap(),
        WaitFor::TimeOfDay {
            at: chrono::NaiveTime::from_hms_opt(9, 30, 0).unwrap(),
            zone: None
        }
    );
    assert_eq!(
        w(json!({"event": "paid", "timeout": "1d", "on_event": "a", "on_timeout": "b"}))
            .form()
            .unwrap(),
        WaitFor::Event {
            timeout: Duration::from_secs(86_400)
        }
    );
    let settings = |v| {
        w(v).form()
            .unwrap_err()
            .into_iter()
            .map(|(s, _)| s)
            .collect::<Vec<_>>()
    };
    assert_eq!(settings(json!({})), ["wait"]);
    assert_eq!(
        settings(json!({"duration": "2h", "until": "2030-01-01T00:00:00Z"})),
        ["wait"]
    );
    assert_eq!(
        settings(json!({"duration": "soon", "time_zone": "Mars/Base"})),
        ["time_zone", "time_zone", "duration"]
    );
    assert_eq!(
        settings(json!({"event": "paid", "next": "x"})),
        ["timeout", "on_event", "on_timeout", "next"]
    );
    assert_eq!(
        settings(json!({"duration": "1h", "on_event": "x"})),
        ["timeout"]
    );
    assert_eq!(settings(json!({"until": "tomorrow"})), ["until"]);
    assert_eq!(settings(json!({"time_of_day": "25:00"})), ["time_of_day"]);
}

#[test]
fn a_setting_parses_as_the_document_is_read_and_is_written_back_as_given() {
    let step: Step = serde_json::from_value(json!({
        "id": "w", "type": "send_webhook", "webhook_id": "wh_01J00000000000000000000000",
        "wait_for_result": true, "on_success": "a", "on_failure": "b", "timeout": "1h30m"
    }))
    .unwrap();
    let StepKind::SendWebhook {
        webhook_id: Some(id),
        timeout: Some(t),
        ..
    } = &step.kind
    else {
        panic!("{step:?}")
    };
    // Ids are lower case once parsed; the setting keeps what was written.
    assert_eq!(id.get().unwrap().as_str(), "wh_01j00000000000000000000000");
    assert_eq!(id.as_str(), "wh_01J00000000000000000000000");
    assert_eq!(*t.get().unwrap(), Duration::from_secs(5400));
    // The text as given, not a normal form of the value.
    assert_eq!(serde_json::to_value(&step).unwrap()["timeout"], "1h30m");
}

#[test]
fn a_setting_that_does_not_parse_is_read_and_reported_by_validate_with_the_rest() {
    let doc: FlowDoc = serde_json::from_value(json!({
        "name": "F",
        "trigger": {"type": "list_added", "list_id": "nope"},
        "steps": [
            {"id": "go", "type": "start_flow", "flow_id": "ls_01J00000000000000000000000"},
            {"id": "w", "type": "wait", "duration": "soon"}
        ]
    }))
    .expect("a bad id or duration is not a shape error");
    let named: Vec<(Option<String>, String)> = validate(&doc, &TestCatalog::new())
        .into_iter()
        .map(|e| (e.step, e.setting))
        .collect();
    for want in [
        (None, "trigger.list_id"),
        (Some("go"), "flow_id"),
        (Some("w"), "duration"),
    ] {
        assert!(
            named.contains(&(want.0.map(str::to_owned), want.1.to_owned())),
            "{want:?} missing from {named:?}"
        );
    }
    let Trigger::ListAdded { list_id } = &doc.trigger else {
        panic!()
    };
    assert!(list_id.get().unwrap_err().contains("nope"));
}

proptest! {
    #[test]
    fn any_setting_text_round_trips_unchanged(text in ".{0,40}") {
        let s: Setting<Duration> = serde_json::from_value(json!(text.clone())).unwrap();
        prop_assert_eq!(serde_json::to_value(&s).unwrap(), json!(text.clone()));
        let id: Setting<ListId> = serde_json::from_value(json!(text.clone())).unwrap();
        prop_assert_eq!(id.as_str(), text.as_str());
        prop_assert_eq!(id.get().is_ok(), ListId::parse(&text).is_ok());
    }
}

#[test]
fn a_list_triggers_key_is_the_id_as_lookups_spell_it() {
    let id = ListId::generate();
    let doc: FlowDoc = serde_json::from_value(json!({
        "name": "F",
        "trigger": {"type": "list_added", "list_id": id.as_str().to_uppercase()
            .replacen("LS_", "ls_", 1)},
        "steps": [{"id": "x", "type": "exit"}]
    }))
    .unwrap();
    assert_eq!(doc.trigger_key(), id.as_str());
}
