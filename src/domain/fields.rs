//! Typed custom fields: list field definitions and the coercion of incoming
//! values to the declared type.
//!
//! A contact's custom values live on the contact (one map per contact, shared
//! by all its lists); the *definitions* live on lists. A value is accepted only
//! for a field that a list the contact belongs to (or is being added to)
//! defines, and must fit every such definition.

use crate::domain::ErrorCode;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A field's name: a letter, then letters, digits or `_`, at most 64 in all.
/// Names are used as template variables, hence the identifier syntax.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FieldName(String);

impl FieldName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if first_ok && rest_ok && raw.len() <= 64 {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a valid field name (a letter, then letters, digits or `_`, at most 64)",
                raw.chars().take(70).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The declared type of a list field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Text,
    Number,
    Date,
    Boolean,
    Enum,
}

crate::stored_enum!(FieldType, "field type", {
    Text => "text",
    Number => "number",
    Date => "date",
    Boolean => "boolean",
    Enum => "enum",
});

/// One field definition of a list. `options` is non-empty exactly when the
/// type is `enum`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldDef {
    pub name: FieldName,
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Names a list field may not take, in any case: they are the contact's
/// own values, and a field of that name would shadow them in mappings and
/// conditions.
pub const RESERVED_FIELD_NAMES: [&str; 2] = ["email", "phone"];

/// Longest text value accepted; a marketing field is not a document store.
pub const MAX_TEXT_LEN: usize = 4096;

impl FieldDef {
    /// The name a new definition may take: a valid field name that is not
    /// one of [`RESERVED_FIELD_NAMES`], in any case.
    pub fn definable_name(raw: &str) -> Result<FieldName, String> {
        let name = FieldName::parse(raw)?;
        match RESERVED_FIELD_NAMES
            .iter()
            .find(|r| r.eq_ignore_ascii_case(name.as_str()))
        {
            Some(builtin) => Err(format!(
                "`{name}` is reserved: every contact has its own {builtin}; to take it from an inbound call, map the body's path onto `{builtin}` in the flow's trigger mapping"
            )),
            None => Ok(name),
        }
    }

    pub fn new(name: &str, kind: FieldType, options: Vec<String>) -> Result<Self, String> {
        let name = Self::definable_name(name)?;
        match kind {
            FieldType::Enum if options.is_empty() => {
                return Err("an `enum` field needs at least one option".into());
            }
            FieldType::Enum => {
                let mut seen = std::collections::HashSet::new();
                for o in &options {
                    if o.is_empty() || o.len() > 256 || o.chars().any(char::is_control) {
                        return Err("enum options must be 1 to 256 characters, none of them control characters".into());
                    }
                    if !seen.insert(o) {
                        return Err(format!("enum option `{o}` is listed twice"));
                    }
                }
            }
            _ if !options.is_empty() => {
                return Err(format!(
                    "only `enum` fields take options, not `{}`",
                    kind.as_str()
                ));
            }
            _ => {}
        }
        Ok(Self {
            name,
            kind,
            options,
        })
    }

    /// Converts `value` to this field's type, or says why it does not fit.
    /// `null` passes through: it means "clear the value".
    pub fn coerce(&self, value: &Value) -> Result<Value, String> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        let wrong = || {
            format!(
                "{} does not fit the {} field `{}`",
                describe(value),
                self.kind.as_str(),
                self.name
            )
        };
        match self.kind {
            FieldType::Text => match value {
                Value::String(s) if s.chars().any(forbidden_control) => Err(format!(
                    "text field `{}` cannot hold control characters (other than tab, line feed and carriage return)",
                    self.name
                )),
                Value::String(s) if s.chars().count() <= MAX_TEXT_LEN => Ok(value.clone()),
                Value::String(_) => Err(format!(
                    "text field `{}` holds at most {MAX_TEXT_LEN} characters",
                    self.name
                )),
                Value::Number(n) => {
                    exact(n, &self.name)?;
                    Ok(Value::String(n.to_string()))
                }
                Value::Bool(b) => Ok(Value::String(b.to_string())),
                _ => Err(wrong()),
            },
            FieldType::Number => match value {
                Value::Number(n) => {
                    exact(n, &self.name)?;
                    Ok(value.clone())
                }
                Value::String(s) => {
                    let parsed = parse_number(s.trim()).ok_or_else(wrong)?;
                    if let Value::Number(n) = &parsed {
                        exact(n, &self.name)?;
                    }
                    Ok(parsed)
                }
                _ => Err(wrong()),
            },
            FieldType::Boolean => match value {
                Value::Bool(_) => Ok(value.clone()),
                Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" | "on" => Ok(Value::Bool(true)),
                    "false" | "no" | "0" | "off" => Ok(Value::Bool(false)),
                    _ => Err(wrong()),
                },
                Value::Number(n) if n.as_i64() == Some(1) => Ok(Value::Bool(true)),
                Value::Number(n) if n.as_i64() == Some(0) => Ok(Value::Bool(false)),
                _ => Err(wrong()),
            },
            FieldType::Date => match value {
                Value::String(s) => parse_date(s.trim()).map(Value::String).ok_or_else(|| {
                    format!(
                        "{} is not a date for field `{}` (expected YYYY-MM-DD or an RFC 3339 date-time)",
                        describe(value),
                        self.name
                    )
                }),
                _ => Err(wrong()),
            },
            FieldType::Enum => {
                let s = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => {
                        exact(n, &self.name)?;
                        n.to_string()
                    }
                    _ => return Err(wrong()),
                };
                if self.options.contains(&s) {
                    Ok(Value::String(s))
                } else {
                    Err(format!(
                        "`{}` is not one of the options of field `{}` ({})",
                        s.chars().take(64).collect::<String>(),
                        self.name,
                        self.options.join(", ")
                    ))
                }
            }
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{}\"", s.chars().take(64).collect::<String>()),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        Value::Null => "null".into(),
    }
}

/// The largest magnitude a number is kept at exactly: 2^53 − 1. Numbers
/// are IEEE-754 doubles (what JSON readers, JavaScript among them, assume);
/// beyond this not every integer is one, so a larger value would be stored
/// rounded (`123456789012345678901234567890` as `1.2345678901234568e29`).
pub const MAX_EXACT_NUMBER: u64 = (1 << 53) - 1;

/// Refuses a number that cannot be kept exactly (see [`MAX_EXACT_NUMBER`]).
fn exact(n: &Number, field: &FieldName) -> Result<(), String> {
    let fits = match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u <= MAX_EXACT_NUMBER,
        (_, Some(i), _) => i.unsigned_abs() <= MAX_EXACT_NUMBER,
        (_, _, Some(f)) => f.abs() <= MAX_EXACT_NUMBER as f64,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "{n} cannot be kept exactly in field `{field}`: numbers must lie within ±{MAX_EXACT_NUMBER} (send larger values, such as ids, as text)"
        ))
    }
}

/// Control characters text may not hold: C0 and C1 controls and DEL, except
/// tab, line feed and carriage return (multi-line text from forms).
pub fn forbidden_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

fn parse_number(s: &str) -> Option<Value> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::Number(i.into()));
    }
    let f: f64 = s.parse().ok()?;
    Number::from_f64(f).map(Value::Number)
}

/// Dates are kept as `YYYY-MM-DD`; date-times as RFC 3339 in UTC, so that
/// string order is time order in both stores.
fn parse_date(s: &str) -> Option<String> {
    use chrono::Datelike;
    // Years outside 1..=9999 do not format as four digits, which would
    // break "string order is time order".
    let sane = |y: i32| (1..=9999).contains(&y);
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return sane(d.year()).then(|| d.format("%Y-%m-%d").to_string());
    }
    let dt = chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .with_timezone(&chrono::Utc);
    sane(dt.year()).then(|| dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// A failure to apply custom field values, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValueError {
    /// JSON path of the offending value, e.g. `fields.age`.
    pub field: String,
    pub code: crate::domain::ErrorCode,
    pub message: String,
}

/// Checks `input` against the definitions of every list in `defs` and merges
/// the coerced values into `current`. A `null` removes the value.
pub fn apply_field_values(
    defs: &[FieldDef],
    current: &Map<String, Value>,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, FieldValueError> {
    let mut by_name: BTreeMap<&str, Vec<&FieldDef>> = BTreeMap::new();
    for d in defs {
        by_name.entry(d.name.as_str()).or_default().push(d);
    }
    let mut out = current.clone();
    for (name, value) in input {
        let path = format!("fields.{name}");
        let Some(candidates) = by_name.get(name.as_str()) else {
            // A value whose definition was removed can still be cleared.
            if value.is_null() && out.contains_key(name) {
                out.remove(name);
                continue;
            }
            return Err(FieldValueError {
                field: path,
                code: ErrorCode::UnknownField,
                message: format!(
                    "field `{}` is not defined by any list this contact belongs to",
                    name.chars().take(64).collect::<String>()
                ),
            });
        };
        let mut coerced: Option<Value> = None;
        for def in candidates {
            let v = def.coerce(value).map_err(|message| FieldValueError {
                field: path.clone(),
                code: ErrorCode::InvalidFieldValue,
                message,
            })?;
            // Lists may define the same name with different types; the
            // stored value must be what every definition makes of it.
            if coerced.as_ref().is_some_and(|c| *c != v) {
                return Err(FieldValueError {
                    field: path,
                    code: ErrorCode::ConflictingFieldDefinitions,
                    message: format!(
                        "the contact's lists define field `{name}` with different types; the value fits them differently"
                    ),
                });
            }
            coerced = Some(v);
        }
        match coerced {
            Some(v) if !v.is_null() => {
                out.insert(name.clone(), v);
            }
            _ => {
                out.remove(name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn def(name: &str, kind: FieldType) -> FieldDef {
        let opts = if kind == FieldType::Enum {
            vec!["gold".into(), "silver".into()]
        } else {
            vec![]
        };
        FieldDef::new(name, kind, opts).unwrap()
    }

    #[test]
    fn numbers_are_coerced_from_strings() {
        let d = def("age", FieldType::Number);
        assert_eq!(d.coerce(&json!("42")).unwrap(), json!(42));
        assert_eq!(d.coerce(&json!(" 4.5 ")).unwrap(), json!(4.5));
        let err = d.coerce(&json!("abc")).unwrap_err();
        assert!(err.contains("`age`"), "{err}");
        assert!(d.coerce(&json!(true)).is_err());
        assert!(d.coerce(&json!("NaN")).is_err());
    }

    #[test]
    fn booleans_dates_and_enums() {
        assert_eq!(
            def("b", FieldType::Boolean).coerce(&json!("Yes")).unwrap(),
            json!(true)
        );
        assert!(
            def("b", FieldType::Boolean)
                .coerce(&json!("maybe"))
                .is_err()
        );
        let d = def("d", FieldType::Date);
        assert_eq!(d.coerce(&json!("1990-02-28")).unwrap(), json!("1990-02-28"));
        assert_eq!(
            d.coerce(&json!("2024-01-01T10:00:00+02:00")).unwrap(),
            json!("2024-01-01T08:00:00Z")
        );
        assert!(d.coerce(&json!("1990-02-30")).is_err());
        let e = def("tier", FieldType::Enum);
        assert_eq!(e.coerce(&json!("gold")).unwrap(), json!("gold"));
        assert!(e.coerce(&json!("bronze")).is_err());
        assert_eq!(
            def("t", FieldType::Text).coerce(&json!(7)).unwrap(),
            json!("7")
        );
        assert!(def("t", FieldType::Text).coerce(&json!({"a": 1})).is_err());
    }

    #[test]
    fn field_definitions_are_checked() {
        assert!(FieldDef::new("1abc", FieldType::Text, vec![]).is_err());
        assert!(FieldDef::new("a b", FieldType::Text, vec![]).is_err());
        assert!(FieldDef::new("tier", FieldType::Enum, vec![]).is_err());
        assert!(FieldDef::new("tier", FieldType::Text, vec!["x".into()]).is_err());
        assert!(FieldDef::new("tier", FieldType::Enum, vec!["x".into(), "x".into()]).is_err());
    }

    #[test]
    fn apply_rejects_unknown_and_merges_known() {
        let defs = vec![def("age", FieldType::Number), def("name", FieldType::Text)];
        let current = json!({"name": "Ann", "age": 3})
            .as_object()
            .unwrap()
            .clone();
        let out = apply_field_values(
            &defs,
            &current,
            json!({"age": "41", "name": null}).as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(Value::Object(out), json!({"age": 41}));
        let err = apply_field_values(&defs, &current, json!({"shoe": 1}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.code.as_str()),
            ("fields.shoe", "unknown_field")
        );
        let err = apply_field_values(&defs, &current, json!({"age": "x"}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.code.as_str()),
            ("fields.age", "invalid_field_value")
        );
    }

    #[test]
    fn removed_definitions_can_be_cleared_and_conflicts_are_refused() {
        let current = json!({"old": 1}).as_object().unwrap().clone();
        let out =
            apply_field_values(&[], &current, json!({"old": null}).as_object().unwrap()).unwrap();
        assert!(out.is_empty());
        let defs = vec![
            def("score", FieldType::Number),
            def("score", FieldType::Text),
        ];
        let err = apply_field_values(
            &defs,
            &Map::new(),
            json!({"score": "42"}).as_object().unwrap(),
        )
        .unwrap_err();
        assert_eq!(err.code, "conflicting_field_definitions");
        assert!(def("t", FieldType::Text).coerce(&json!("a\u{0}b")).is_err());
        assert!(
            def("d", FieldType::Date)
                .coerce(&json!("+10000-01-01"))
                .is_err()
        );
        assert!(
            def("d", FieldType::Date)
                .coerce(&json!("0000-01-01"))
                .is_err()
        );
    }

    #[test]
    fn numbers_beyond_the_exact_range_are_refused_naming_the_field() {
        let d = def("age", FieldType::Number);
        let big: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        assert_eq!(
            d.coerce(&big).unwrap_err(),
            "1.2345678901234568e+29 cannot be kept exactly in field `age`: numbers must lie within ±9007199254740991 (send larger values, such as ids, as text)"
        );
        assert!(d.coerce(&json!("18446744073709551617")).is_err());
        assert!(d.coerce(&json!(u64::MAX)).is_err());
        assert!(d.coerce(&json!(-9007199254740992i64)).is_err());
        assert_eq!(
            d.coerce(&json!(9007199254740991u64)).unwrap(),
            json!(9007199254740991u64)
        );
        assert_eq!(
            d.coerce(&json!("-9007199254740991")).unwrap(),
            json!(-9007199254740991i64)
        );
        assert_eq!(d.coerce(&json!(0.1)).unwrap(), json!(0.1));
        // Text and enum fields read numbers too: the same rule.
        assert!(def("t", FieldType::Text).coerce(&big).is_err());
    }

    #[test]
    fn text_refuses_control_characters_but_tab_and_line_breaks() {
        let d = def("note", FieldType::Text);
        assert_eq!(
            d.coerce(&json!("a\u{7}\u{1b}[31mb")).unwrap_err(),
            "text field `note` cannot hold control characters (other than tab, line feed and carriage return)"
        );
        assert!(d.coerce(&json!("a\u{85}b")).is_err(), "C1 controls too");
        assert!(d.coerce(&json!("a\u{0}b")).is_err());
        assert_eq!(
            d.coerce(&json!("line 1\r\n\tline 2")).unwrap(),
            json!("line 1\r\n\tline 2")
        );
    }

    proptest! {
        #[test]
        fn coercion_never_panics_and_is_idempotent(s in "\\PC{0,30}", n in any::<f64>(), b in any::<bool>()) {
            for kind in [FieldType::Text, FieldType::Number, FieldType::Date, FieldType::Boolean, FieldType::Enum] {
                let d = def("f", kind);
                for v in [json!(s), json!(n), json!(b)] {
                    if let Ok(out) = d.coerce(&v) {
                        prop_assert_eq!(d.coerce(&out).unwrap(), out);
                    }
                }
            }
        }
    }
}
