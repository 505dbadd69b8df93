//! Writer-thread caches of rows that change rarely but are read on every
//! write: a list's field definitions (every upsert into the list, every
//! add-to-list step) and whether a workspace has flows triggered by contact
//! changes (every contact write). The writer is the one connection that
//! writes, so it drops an entry in the same job that changes the rows
//! behind it; `PRAGMA data_version`, checked before each batch, tells it
//! when another process (the CLI) committed, and then it drops everything,
//! as it does when a batch fails to commit. Other threads (readers) never
//! use these caches.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::domain::FieldDef;
use crate::store::Result;

thread_local! {
    static ON_WRITER: Cell<bool> = const { Cell::new(false) };
    static LISTS: RefCell<HashMap<(String, String), Vec<FieldDef>>> = RefCell::new(HashMap::new());
    static TRIGGERS: RefCell<HashMap<String, bool>> = RefCell::new(HashMap::new());
}

/// Marks this thread as the writer (the only one that caches).
pub fn enter_writer() {
    ON_WRITER.set(true);
}

pub fn clear() {
    LISTS.with_borrow_mut(HashMap::clear);
    TRIGGERS.with_borrow_mut(HashMap::clear);
}

/// A list's fields changed, or the list was deleted.
pub fn lists_changed() {
    LISTS.with_borrow_mut(HashMap::clear);
}

/// A flow was created, saved, activated, paused or deleted.
pub fn flows_changed() {
    TRIGGERS.with_borrow_mut(HashMap::clear);
}

/// The fields of list `id` of workspace `ws`, `None` if there is no such
/// list; `load` reads them. Only lists that exist are remembered.
pub fn list_fields(
    ws: &str,
    id: &str,
    load: impl FnOnce() -> Result<Option<Vec<FieldDef>>>,
) -> Result<Option<Vec<FieldDef>>> {
    if !ON_WRITER.get() {
        return load();
    }
    let key = (ws.to_owned(), id.to_owned());
    if let Some(hit) = LISTS.with_borrow(|m| m.get(&key).cloned()) {
        return Ok(Some(hit));
    }
    let found = load()?;
    if let Some(fields) = &found {
        LISTS.with_borrow_mut(|m| m.insert(key, fields.clone()));
    }
    Ok(found)
}

/// Whether workspace `ws` has active flows triggered by contact changes.
pub fn has_contact_triggers(ws: &str, load: impl FnOnce() -> Result<bool>) -> Result<bool> {
    if !ON_WRITER.get() {
        return load();
    }
    if let Some(hit) = TRIGGERS.with_borrow(|m| m.get(ws).copied()) {
        return Ok(hit);
    }
    let found = load()?;
    TRIGGERS.with_borrow_mut(|m| m.insert(ws.to_owned(), found));
    Ok(found)
}
