//! Finds a key repeated within one JSON object. serde_json keeps the last
//! of two equal keys without a word (`{"email":"a@x","email":"b@y"}` is
//! `b@y`), so what one layer of a proxy sees and what hookflow stores could
//! differ. Refused instead, naming the path (`customer.email`, `items[0].sku`).

use std::collections::HashSet;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The path of the first repeated key, or `None` (also for bytes that are
/// not JSON: the typed parse reports those).
pub fn duplicate_key(bytes: &[u8]) -> Option<String> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = Walk {
        path: String::new(),
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// Visits a value at `path`, recording the first repeated key in `found`.
struct Walk<'a> {
    path: String,
    found: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) && self.found.is_none() {
                *self.found = Some(path.clone());
            }
            map.next_value_seed(Walk {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_key;
    use proptest::prelude::*;

    #[test]
    fn finds_the_first_repeated_key_with_its_path() {
        let dup = |s: &str| duplicate_key(s.as_bytes());
        assert_eq!(
            dup(r#"{"email":"a@x.co","email":"b@x.co"}"#).as_deref(),
            Some("email")
        );
        assert_eq!(
            dup(r#"{"customer":{"email":1,"name":2,"email":3}}"#).as_deref(),
            Some("customer.email")
        );
        assert_eq!(
            dup(r#"{"items":[{"sku":1},{"sku":2,"sku":3}]}"#).as_deref(),
            Some("items[1].sku")
        );
        assert_eq!(
            dup(r#"{"a":{"x":1},"b":{"x":1}}"#),
            None,
            "same key in two objects"
        );
        assert_eq!(dup(r#"[{"a":1},{"a":1}]"#), None);
        assert_eq!(dup("not json"), None);
    }

    proptest! {
        /// Any JSON a serde_json::Value can hold has no repeated key.
        #[test]
        fn never_fires_on_a_serialised_value(v in any::<Vec<(String, i64)>>()) {
            let map: serde_json::Map<String, serde_json::Value> =
                v.into_iter().map(|(k, n)| (k, n.into())).collect();
            let text = serde_json::to_string(&serde_json::json!({"outer": map, "list": [map.clone()]})).unwrap();
            prop_assert_eq!(duplicate_key(text.as_bytes()), None);
        }
    }
}
