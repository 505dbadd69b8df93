//! Reads of contacts and memberships, and a contact's deletion, written
//! once (`store::sql`) and run by the `Store` trait's default methods.
//! Contact writes that fire triggers go through `store::logic`.

use serde_json::{Map, Value};

use super::sql::{Done, RowExt, Stmt, Val};
use super::{ContactFilter, ContactRecord, Member, Membership, Result};
use crate::domain::{
    ContactId, ContactStatus, Email, ListId, MembershipStatus, Page, PageRequest, Phone, Stored,
    WorkspaceId,
};

/// The contact columns read (0–6), then `$tail`.
macro_rules! contact_select {
    ($extra:literal, $tail:literal) => {
        concat!(
            "SELECT c.id, c.email, c.phone, c.status, c.fields, c.created_at, c.updated_at",
            $extra,
            " ",
            $tail
        )
    };
}

/// The contact by id (NotFound if absent), row-locked when `lock` (the
/// engine's reads for update on PostgreSQL: `logic::Tx::ROW_LOCKS`).
pub fn by_id(ws: &WorkspaceId, id: &ContactId, lock: bool) -> Stmt {
    Stmt::new(
        crate::with_lock!(
            lock,
            contact_select!(
                "",
                "FROM contacts c WHERE c.workspace_id = $1 AND c.id = $2"
            ),
            " FOR UPDATE"
        ),
        vec![ws.as_str().into(), id.as_str().into()],
    )
    .or_not_found("contact", id)
}

/// The contact with this email, if any (no row otherwise), row-locked
/// when `lock`.
pub fn by_email(ws: &WorkspaceId, email: &Email, lock: bool) -> Stmt {
    Stmt::new(
        crate::with_lock!(
            lock,
            contact_select!(
                "",
                "FROM contacts c WHERE c.workspace_id = $1 AND c.email = $2"
            ),
            " FOR UPDATE"
        ),
        vec![ws.as_str().into(), email.as_str().into()],
    )
}

pub fn page(ws: &WorkspaceId, filter: &ContactFilter, page: &PageRequest) -> Stmt {
    Stmt::new(
        contact_select!(
            "",
            "FROM contacts c
             WHERE c.workspace_id = $1 AND c.id > $2
               AND ($3 IS NULL OR c.status = $3)
               AND ($4 IS NULL OR EXISTS (SELECT 1 FROM memberships m WHERE m.list_id = $4 AND m.contact_id = c.id))
             ORDER BY c.id LIMIT $5"
        ),
        vec![
            ws.as_str().into(),
            page.after_id().into(),
            filter.status.map(|s| s.as_str()).into(),
            filter.list_id.as_ref().map(ListId::as_str).into(),
            i64::from(page.limit + 1).into(),
        ],
    )
}

pub fn delete(ws: &WorkspaceId, id: &ContactId) -> Stmt {
    Stmt::new(
        "DELETE FROM contacts WHERE workspace_id = $1 AND id = $2",
        vec![ws.as_str().into(), id.as_str().into()],
    )
    .or_not_found("contact", id)
}

/// A page of list `list`'s members (NotFound if `ws` has no such list).
pub fn members(ws: &WorkspaceId, list: &ListId, page: &PageRequest) -> [Stmt; 2] {
    [
        lock_list(ws, list, false).or_not_found("list", list),
        Stmt::new(
            contact_select!(
                ", m.status, m.since",
                "FROM memberships m JOIN contacts c ON c.id = m.contact_id
                 WHERE m.list_id = $1 AND c.workspace_id = $2 AND m.contact_id > $3
                 ORDER BY m.contact_id LIMIT $4"
            ),
            vec![
                list.as_str().into(),
                ws.as_str().into(),
                page.after_id().into(),
                i64::from(page.limit + 1).into(),
            ],
        ),
    ]
}

/// The lists contact `id` is in (NotFound if `ws` has no such contact).
pub fn lists_of(ws: &WorkspaceId, id: &ContactId) -> [Stmt; 2] {
    [
        Stmt::new(
            "SELECT 1 FROM contacts WHERE workspace_id = $1 AND id = $2",
            vec![ws.as_str().into(), id.as_str().into()],
        )
        .or_not_found("contact", id),
        Stmt::new(
            "SELECT list_id, contact_id, status, since FROM memberships WHERE contact_id = $1 ORDER BY list_id",
            vec![id.as_str().into()],
        ),
    ]
}

fn contacts(done: &Done) -> Result<Vec<ContactRecord>> {
    done.rows.iter().map(|r| contact(r)).collect()
}

/// The one contact a [`by_id`] found.
pub fn one(done: &Done) -> Result<ContactRecord> {
    contact(done.row("contact")?)
}

pub fn to_page(done: &Done, page: &PageRequest) -> Result<Page<ContactRecord>> {
    Ok(Page::from_overfetch(contacts(done)?, page.limit, |c| {
        c.id.as_str()
    }))
}

pub fn members_page(done: &Done, page: &PageRequest) -> Result<Page<Member>> {
    let members = done
        .rows
        .iter()
        .map(|r| {
            Ok(Member {
                contact: contact(r)?,
                status: MembershipStatus::decode(r.str_at(7)?)?,
                since: r.int(8)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Page::from_overfetch(members, page.limit, |m| {
        m.contact.id.as_str()
    }))
}

pub fn memberships(done: &Done) -> Result<Vec<Membership>> {
    done.rows.iter().map(|r| membership_row(r)).collect()
}

pub fn membership_row(r: &[Val]) -> Result<Membership> {
    Ok(Membership {
        list_id: ListId::from_trusted(r.text(0)?),
        contact_id: ContactId::from_trusted(r.text(1)?),
        status: MembershipStatus::decode(r.str_at(2)?)?,
        since: r.int(3)?,
    })
}

fn contact(r: &[Val]) -> Result<ContactRecord> {
    Ok(ContactRecord {
        id: ContactId::from_trusted(r.text(0)?),
        email: Email::from_trusted(r.text(1)?),
        phone: r.opt_text(2)?.map(Phone::from_trusted),
        status: ContactStatus::decode(r.str_at(3)?)?,
        fields: r.json::<Map<String, Value>>(4)?,
        created_at: r.int(5)?,
        updated_at: r.int(6)?,
    })
}

/// Contact `contact`'s membership of `list` (NotFound if there is none).
pub fn membership(list: &ListId, contact: &ContactId) -> Stmt {
    Stmt::new(
        "SELECT list_id, contact_id, status, since FROM memberships WHERE list_id = $1 AND contact_id = $2",
        vec![list.as_str().into(), contact.as_str().into()],
    )
    .or_not_found("membership", format!("{list}/{contact}"))
}

/// The lists the contact is subscribed to (what a claimed run sees).
pub fn subscribed(contact: &ContactId) -> Stmt {
    Stmt::new(
        "SELECT list_id FROM memberships WHERE contact_id = $1 AND status = 'subscribed'",
        vec![contact.as_str().into()],
    )
}

pub fn list_ids(done: &Done) -> Result<Vec<ListId>> {
    done.rows
        .iter()
        .map(|r| Ok(ListId::from_trusted(r.text(0)?)))
        .collect()
}

/// Removes the membership; it changed a row iff there was one.
pub fn remove_membership(ws: &WorkspaceId, list: &ListId, contact: &ContactId) -> Stmt {
    Stmt::new(
        "DELETE FROM memberships WHERE workspace_id = $1 AND list_id = $2 AND contact_id = $3",
        vec![
            ws.as_str().into(),
            list.as_str().into(),
            contact.as_str().into(),
        ],
    )
}

// ---- the engine's contact statements (`logic::Tx`'s defaults) ----------------------

/// The contact a [`by_email`] found, if any.
pub fn maybe_one(done: &Done) -> Result<Option<ContactRecord>> {
    done.rows.first().map(|r| contact(r)).transpose()
}

/// Inserts the contact or overwrites it (a taken email is a Conflict).
pub fn write(ws: &WorkspaceId, c: &ContactRecord) -> Result<Stmt> {
    Ok(Stmt::new(
        "INSERT INTO contacts (id, workspace_id, email, phone, status, fields, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET email = excluded.email, phone = excluded.phone,
           status = excluded.status, fields = excluded.fields, updated_at = excluded.updated_at",
        vec![
            c.id.as_str().into(),
            ws.as_str().into(),
            c.email.as_str().into(),
            c.phone.as_ref().map(Phone::as_str).into(),
            c.status.as_str().into(),
            super::sql::Arg::json(&c.fields)?,
            c.created_at.into(),
            c.updated_at.into(),
        ],
    )
    .on_unique(super::plan::email_taken(c.email.as_str())))
}

/// Subscribes the contact to the list; it changed a row iff the contact
/// was not subscribed.
pub fn subscribe(ws: &WorkspaceId, list: &ListId, contact: &ContactId, now: i64) -> Stmt {
    Stmt::new(
        "INSERT INTO memberships (list_id, contact_id, workspace_id, status, since)
         VALUES ($1, $2, $3, 'subscribed', $4)
         ON CONFLICT (list_id, contact_id) DO UPDATE SET status = 'subscribed',
           since = excluded.since WHERE memberships.status <> 'subscribed'",
        vec![
            list.as_str().into(),
            contact.as_str().into(),
            ws.as_str().into(),
            now.into(),
        ],
    )
}

/// The list if it is in the workspace, share-locked when `lock` (so it is
/// not deleted under the write that uses it).
pub fn lock_list(ws: &WorkspaceId, list: &ListId, lock: bool) -> Stmt {
    Stmt::new(
        crate::with_lock!(
            lock,
            "SELECT 1 FROM lists WHERE workspace_id = $1 AND id = $2",
            " FOR SHARE"
        ),
        vec![ws.as_str().into(), list.as_str().into()],
    )
}
