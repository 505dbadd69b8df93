//! The JSON paths of inbound mappings: `customer.first_name`, `items[0].sku`,
//! `a.b[2][1]`. Keys are separated by dots; `[N]` indexes an array.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed path; parse once (when the flow is saved), look up many times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath(Vec<Segment>);

impl JsonPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let err = |why: &str| {
            format!(
                "`{}` is not a JSON path such as `customer.first_name` or `items[0].sku`: {why}",
                raw.chars().take(80).collect::<String>()
            )
        };
        if raw.is_empty() {
            return Err(err("it is empty"));
        }
        let mut segments = Vec::new();
        for part in raw.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if key.is_empty() && (segments.is_empty() || rest.is_empty()) {
                return Err(err("a key is empty"));
            }
            if !key.is_empty() {
                segments.push(Segment::Key(key.to_owned()));
            }
            while !rest.is_empty() {
                let close = rest.find(']').ok_or_else(|| err("a `[` is not closed"))?;
                let n: usize = rest[1..close]
                    .parse()
                    .map_err(|_| err("an index is not a number"))?;
                segments.push(Segment::Index(n));
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(err("text follows an index"));
                }
            }
        }
        if segments.len() > 32 {
            return Err(err("it is deeper than 32 levels"));
        }
        Ok(Self(segments))
    }

    /// The value at this path, if every step of it exists.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(root, |v, seg| match seg {
            Segment::Key(k) => v.as_object()?.get(k),
            Segment::Index(i) => v.as_array()?.get(*i),
        })
    }
}

/// The JSON path of the first string (or key) holding a NUL character.
/// PostgreSQL refuses NUL in TEXT and JSONB; refusing it at the door keeps
/// both stores answering the same 422 instead of one of them a 500.
pub fn find_nul(v: &Value) -> Option<String> {
    fn walk(v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) if s.contains('\0') => Some(if path.is_empty() {
                ".".into()
            } else {
                path.to_owned()
            }),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            Value::Object(map) => map.iter().find_map(|(k, x)| {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains('\0') {
                    Some(here)
                } else {
                    walk(x, &here)
                }
            }),
            _ => None,
        }
    }
    walk(v, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn paths_find_values() {
        let body = json!({"customer": {"first_name": "Ada", "tags": ["a", "b"]}, "items": [{"sku": "X1"}], "m": [[0, 7]]});
        let get = |p: &str| JsonPath::parse(p).unwrap().get(&body).cloned();
        assert_eq!(get("customer.first_name"), Some(json!("Ada")));
        assert_eq!(get("items[0].sku"), Some(json!("X1")));
        assert_eq!(get("customer.tags[1]"), Some(json!("b")));
        assert_eq!(get("m[0][1]"), Some(json!(7)));
        assert_eq!(get("items[3].sku"), None);
        assert_eq!(get("customer.first_name.x"), None);
        assert_eq!(get("nope"), None);
    }

    #[test]
    fn nul_characters_are_found_with_their_path() {
        assert_eq!(
            find_nul(&json!({"a": [1, {"b": "x\u{0}"}]})).as_deref(),
            Some("a[1].b")
        );
        assert_eq!(find_nul(&json!({"k\u{0}": 1})).as_deref(), Some("k\u{0}"));
        assert_eq!(find_nul(&json!("\u{0}")).as_deref(), Some("."));
        assert_eq!(find_nul(&json!({"a": "fine"})), None);
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "", ".", "a.", ".a", "a..b", "a[", "a[x]", "a[1]b", "a[-1]", "[0]",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parsing_and_lookup_never_panic(p in "[a-z\\[\\]0-9.]{0,24}") {
            if let Ok(path) = JsonPath::parse(&p) {
                let _ = path.get(&json!({"a": [1, {"b": 2}]}));
            }
        }

        #[test]
        fn a_value_placed_at_a_path_is_found_there(keys in proptest::collection::vec("[a-z]{1,6}", 1..5), idx in 0usize..3) {
            let mut v = json!("leaf");
            for _ in 0..=idx { v = json!([v]); }
            let mut path = keys.last().unwrap().to_string();
            for _ in 0..=idx { path.push_str("[0]"); }
            for k in keys.iter().rev() {
                v = json!({ k.clone(): v });
            }
            let path = format!("{}.{}", keys[..keys.len() - 1].join("."), path).trim_start_matches('.').to_owned();
            prop_assert_eq!(JsonPath::parse(&path).unwrap().get(&v), Some(&json!("leaf")));
        }
    }
}
