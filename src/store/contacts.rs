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

pub fn by_id(ws: &WorkspaceId, id: &ContactId) -> Stmt {
    Stmt::new(
        contact_select!(
            "",
            "FROM contacts c WHERE c.workspace_id = $1 AND c.id = $2"
        ),
        vec![ws.as_str().into(), id.as_str().into()],
    )
    .or_not_found("contact", id)
}

pub fn by_email(ws: &WorkspaceId, email: &Email) -> Stmt {
    Stmt::new(
        contact_select!(
            "",
            "FROM contacts c WHERE c.workspace_id = $1 AND c.email = $2"
        ),
        vec![ws.as_str().into(), email.as_str().into()],
    )
    .or_not_found("contact", email)
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
        Stmt::new(
            "SELECT 1 FROM lists WHERE workspace_id = $1 AND id = $2",
            vec![ws.as_str().into(), list.as_str().into()],
        )
        .or_not_found("list", list),
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
        by_id(ws, id),
        Stmt::new(
            "SELECT list_id, contact_id, status, since FROM memberships WHERE contact_id = $1 ORDER BY list_id",
            vec![id.as_str().into()],
        ),
    ]
}

pub fn contacts(done: &Done) -> Result<Vec<ContactRecord>> {
    done.rows.iter().map(|r| contact(r)).collect()
}

/// The one contact a [`by_id`] or [`by_email`] found.
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
                status: MembershipStatus::decode(&r.text(7)?)?,
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
        status: MembershipStatus::decode(&r.text(2)?)?,
        since: r.int(3)?,
    })
}

fn contact(r: &[Val]) -> Result<ContactRecord> {
    Ok(ContactRecord {
        id: ContactId::from_trusted(r.text(0)?),
        email: Email::from_trusted(r.text(1)?),
        phone: r.opt_text(2)?.map(Phone::from_trusted),
        status: ContactStatus::decode(&r.text(3)?)?,
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
