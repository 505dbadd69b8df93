//! Cursor pagination.
//!
//! Lists are ordered by id; ids are time-ordered ULIDs, so "the rows after
//! this id" is a stable cursor that neither skips nor repeats rows when rows
//! are inserted or deleted between pages (unlike offsets).

use base64::Engine;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// An opaque position: the id of the last row of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    pub fn after(id: &str) -> Self {
        Self(id.to_owned())
    }

    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    pub fn decode(raw: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| "cursor is not one this API returned".to_owned())?;
        let s = String::from_utf8(bytes)
            .map_err(|_| "cursor is not one this API returned".to_owned())?;
        if s.is_empty()
            || s.len() > 64
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err("cursor is not one this API returned".into());
        }
        Ok(Self(s))
    }

    pub fn last_id(&self) -> &str {
        &self.0
    }
}

/// Where a page starts and how long it is (already clamped to 1..=MAX_LIMIT).
#[derive(Clone, Debug)]
pub struct PageRequest {
    pub after: Option<Cursor>,
    pub limit: u32,
}

impl PageRequest {
    pub fn new(after: Option<Cursor>, limit: Option<u32>) -> Result<Self, String> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(format!("limit must be between 1 and {MAX_LIMIT}"));
        }
        Ok(Self { after, limit })
    }

    pub fn first(limit: u32) -> Self {
        Self { after: None, limit }
    }

    /// Id after which to start, or "" (sorts before every id).
    pub fn after_id(&self) -> &str {
        self.after.as_ref().map_or("", Cursor::last_id)
    }
}

/// One page of rows and the cursor for the next, if there is one.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only tells
    /// that there is a next page.
    pub fn from_overfetch(mut rows: Vec<T>, limit: u32, id_of: impl Fn(&T) -> &str) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more {
            rows.last().map(|r| Cursor::after(id_of(r)))
        } else {
            None
        };
        Self { items: rows, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor::after("ct_01hx");
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("!!!").is_err());
        assert!(Cursor::decode("").is_err());
    }

    #[test]
    fn overfetch_sets_next_only_when_more() {
        let p = Page::from_overfetch(vec!["a", "b", "c"], 2, |s| s);
        assert_eq!(p.items, vec!["a", "b"]);
        assert_eq!(p.next.unwrap().last_id(), "b");
        let p = Page::from_overfetch(vec!["a"], 2, |s| s);
        assert!(p.next.is_none());
    }
}
