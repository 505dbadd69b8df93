//! Evaluating a flow's conditions (condition steps and exit conditions)
//! against a contact, its lists and the run's event data. Pure.
//!
//! Semantics, chosen to match what marketing tools do:
//! - `eq`/`ne` compare JSON values; numbers compare by value (`1` = `1.0`),
//!   strings exactly.
//! - `contains`/`not_contains`: a substring of a string, or an element of an
//!   array (`lists contains ls_…` is list membership).
//! - `exists`/`not_exists`: present and not null.
//! - `gt`/`gte`/`lt`/`lte`: numbers by value, strings lexically (ISO dates
//!   and RFC 3339 times order correctly); anything else is false.
//! - `in`: the value is one of the array's elements.
//!   A missing value fails every operator except `ne`, `not_contains` and
//!   `not_exists`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::flow::{Condition, Match, Op};
use super::jsonpath::JsonPath;

/// What conditions read.
pub struct Subject<'a> {
    pub email: &'a str,
    pub phone: Option<&'a str>,
    pub status: &'a str,
    pub fields: &'a Map<String, Value>,
    /// Ids of the lists the contact is in.
    pub lists: &'a [String],
    pub event: &'a Value,
}

impl Subject<'_> {
    /// The value a condition's `field` names, if any.
    pub fn get(&self, field: &str) -> Option<Value> {
        match field.split_once('.') {
            None => match field {
                "email" => Some(Value::String(self.email.to_owned())),
                "phone" => self.phone.map(|p| Value::String(p.to_owned())),
                "status" => Some(Value::String(self.status.to_owned())),
                "lists" => Some(Value::Array(
                    self.lists.iter().cloned().map(Value::String).collect(),
                )),
                _ => None,
            },
            Some(("fields", name)) => self.fields.get(name).cloned(),
            Some(("event", path)) => JsonPath::parse(path)
                .ok()
                .and_then(|p| p.get(self.event).cloned()),
            _ => None,
        }
    }
}

/// Whether `conditions` hold (`all` of them, or `any`). An empty list holds
/// for `all` and not for `any`.
pub fn matches(conditions: &[Condition], how: Match, s: &Subject) -> bool {
    match how {
        Match::All => conditions.iter().all(|c| holds(c, s)),
        Match::Any => conditions.iter().any(|c| holds(c, s)),
    }
}

pub fn holds(c: &Condition, s: &Subject) -> bool {
    let actual = s.get(&c.field).filter(|v| !v.is_null());
    let want = c.value.as_ref().unwrap_or(&Value::Null);
    match (c.op, actual.as_ref()) {
        (Op::Exists, a) => a.is_some(),
        (Op::NotExists, a) => a.is_none(),
        (Op::Ne, None) | (Op::NotContains, None) => true,
        (_, None) => false,
        (Op::Eq, Some(a)) => values_equal(a, want),
        (Op::Ne, Some(a)) => !values_equal(a, want),
        (Op::Contains, Some(a)) => contains(a, want),
        (Op::NotContains, Some(a)) => !contains(a, want),
        (Op::Gt, Some(a)) => order(a, want) == Some(Ordering::Greater),
        (Op::Gte, Some(a)) => matches!(order(a, want), Some(Ordering::Greater | Ordering::Equal)),
        (Op::Lt, Some(a)) => order(a, want) == Some(Ordering::Less),
        (Op::Lte, Some(a)) => matches!(order(a, want), Some(Ordering::Less | Ordering::Equal)),
        (Op::In, Some(a)) => want
            .as_array()
            .is_some_and(|xs| xs.iter().any(|x| values_equal(a, x))),
    }
}

/// JSON equality with numbers compared by value.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn contains(a: &Value, want: &Value) -> bool {
    match (a, want) {
        (Value::String(s), Value::String(w)) => s.contains(w.as_str()),
        (Value::Array(xs), w) => xs.iter().any(|x| values_equal(x, w)),
        _ => false,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn subject<'a>(
        fields: &'a Map<String, Value>,
        lists: &'a [String],
        event: &'a Value,
    ) -> Subject<'a> {
        Subject {
            email: "ada@example.com",
            phone: None,
            status: "subscribed",
            fields,
            lists,
            event,
        }
    }

    fn cond(field: &str, op: Op, value: Option<Value>) -> Condition {
        Condition {
            field: field.into(),
            op,
            value,
        }
    }

    #[test]
    fn every_operator() {
        let fields = json!({"plan": "pro", "age": 41, "tags": ["a", "b"], "since": "2024-03-01"});
        let fields = fields.as_object().unwrap().clone();
        let lists = vec!["ls_1".to_owned()];
        let event = json!({"order": {"total": 99.5, "items": [{"sku": "X"}]}});
        let s = subject(&fields, &lists, &event);
        let t = |f: &str, op, v: Option<Value>| holds(&cond(f, op, v), &s);
        assert!(t("fields.plan", Op::Eq, Some(json!("pro"))));
        assert!(!t("fields.plan", Op::Eq, Some(json!("Pro"))));
        assert!(t("fields.age", Op::Eq, Some(json!(41.0))));
        assert!(t("fields.plan", Op::Ne, Some(json!("free"))));
        assert!(t("fields.missing", Op::Ne, Some(json!("free"))));
        assert!(t("email", Op::Contains, Some(json!("@example."))));
        assert!(t("fields.tags", Op::Contains, Some(json!("b"))));
        assert!(t("fields.tags", Op::NotContains, Some(json!("z"))));
        assert!(t("lists", Op::Contains, Some(json!("ls_1"))));
        assert!(t("lists", Op::NotContains, Some(json!("ls_2"))));
        assert!(t("phone", Op::NotExists, None));
        assert!(t("fields.age", Op::Exists, None));
        assert!(t("fields.age", Op::Gt, Some(json!(40))));
        assert!(t("fields.age", Op::Gte, Some(json!(41))));
        assert!(!t("fields.age", Op::Lt, Some(json!(41))));
        assert!(t("fields.age", Op::Lte, Some(json!(41))));
        assert!(t("fields.since", Op::Lt, Some(json!("2024-04-01"))));
        assert!(
            !t("fields.age", Op::Gt, Some(json!("40"))),
            "no mixed-type ordering"
        );
        assert!(t("fields.plan", Op::In, Some(json!(["basic", "pro"]))));
        assert!(t("event.order.total", Op::Gt, Some(json!(50))));
        assert!(t("event.order.items[0].sku", Op::Eq, Some(json!("X"))));
        assert!(!t("event.order.nothing", Op::Eq, Some(json!("X"))));
        assert!(t("status", Op::Eq, Some(json!("subscribed"))));
    }

    #[test]
    fn all_and_any() {
        let fields = Map::new();
        let event = json!({});
        let s = subject(&fields, &[], &event);
        let yes = cond("status", Op::Exists, None);
        let no = cond("phone", Op::Exists, None);
        assert!(matches(&[yes.clone(), yes.clone()], Match::All, &s));
        assert!(!matches(&[yes.clone(), no.clone()], Match::All, &s));
        assert!(matches(&[yes, no.clone()], Match::Any, &s));
        assert!(!matches(&[no], Match::Any, &s));
    }

    proptest! {
        /// `ne` is the negation of `eq`, `not_contains` of `contains`, and
        /// ordering operators are consistent with each other, for any value.
        #[test]
        fn operators_are_consistent(a in any::<i32>(), b in any::<i32>(), s1 in "[a-z]{0,6}", s2 in "[a-z]{0,3}") {
            let fields = json!({"n": a, "s": s1}).as_object().unwrap().clone();
            let event = json!({});
            let s = subject(&fields, &[], &event);
            let t = |f: &str, op, v: Value| holds(&cond(f, op, Some(v)), &s);
            prop_assert_eq!(t("fields.n", Op::Eq, json!(b)), !t("fields.n", Op::Ne, json!(b)));
            prop_assert_eq!(t("fields.s", Op::Contains, json!(s2.clone())), !t("fields.s", Op::NotContains, json!(s2)));
            prop_assert_eq!(t("fields.n", Op::Gt, json!(b)), a > b);
            prop_assert_eq!(t("fields.n", Op::Lte, json!(b)), a <= b);
            prop_assert_eq!(t("fields.n", Op::Gte, json!(b)), !t("fields.n", Op::Lt, json!(b)));
        }
    }
}
