//! Finds a key repeated within one JSON object. serde_json keeps the last
//! of two equal keys without a word (`{"email":"a@x","email":"b@y"}` is
//! `b@y`), so what one layer of a proxy sees and what hookflow stores could
//! differ. Refused instead, naming the path (`customer.email`, `items[0].sku`).

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// The path of the first repeated key, or `None` (also for bytes that are
/// not JSON: the typed parse reports those). Allocation-free for bodies
/// without escapes in their keys: keys are borrowed, paths are only
/// written out when a key repeats.
pub fn duplicate_key(bytes: &[u8]) -> Option<String> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = Walk {
        at: &Seg::Root,
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// A key borrowed from the input when it has no escapes (serde's own
/// `Cow<str>` always allocates), owned otherwise.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where a value is, as a chain back to the root (written out on demand).
enum Seg<'p> {
    Root,
    Key(&'p Seg<'p>, &'p str),
    Index(&'p Seg<'p>, usize),
}

impl Seg<'_> {
    fn write(&self, out: &mut String) {
        match self {
            Seg::Root => {}
            Seg::Key(parent, key) => {
                parent.write(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(parent, i) => {
                parent.write(out);
                out.push_str(&format!("[{i}]"));
            }
        }
    }
}

/// Visits the value at `at`, recording the first repeated key in `found`.
struct Walk<'p, 'f> {
    at: &'p Seg<'p>,
    found: &'f mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Most objects are small: a linear scan beats hashing; past 16 keys
        // a set, so an object of 100,000 keys is not 10^10 comparisons.
        let mut seen: Vec<Cow<'de, str>> = Vec::new();
        let mut many: std::collections::HashSet<Cow<'de, str>> = std::collections::HashSet::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let repeated = if many.is_empty() && seen.len() < 16 {
                seen.contains(&key)
            } else {
                if many.is_empty() {
                    many.extend(seen.drain(..));
                }
                many.contains(&key)
            };
            if self.found.is_none() && repeated {
                let mut path = String::new();
                Seg::Key(self.at, &key).write(&mut path);
                *self.found = Some(path);
            }
            let here = Seg::Key(self.at, &key);
            map.next_value_seed(Walk {
                at: &here,
                found: self.found,
            })?;
            if many.is_empty() {
                seen.push(key);
            } else {
                many.insert(key);
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let here = Seg::Index(self.at, i);
            let more = seq.next_element_seed(Walk {
                at: &here,
                found: self.found,
            })?;
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
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
        // Large objects (the set, not the scan) find repeats too.
        let mut big: String = (0..100).map(|i| format!("\"k{i}\":{i},")).collect();
        big = format!("{{{big}\"k7\":0}}");
        assert_eq!(dup(&big).as_deref(), Some("k7"));
        let wide: String = (0..100_000).map(|i| format!("\"k{i}\":0,")).collect();
        let started = std::time::Instant::now();
        assert_eq!(dup(&format!("{{{}}}", wide.trim_end_matches(','))), None);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
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
