//! Decisions about what to write, shared by both stores: given the rows a
//! store read inside its transaction, compute the rows it must write. Pure
//! functions, so the rules are the same on SQLite and PostgreSQL and are
//! unit-tested without a database.

use crate::domain::ErrorCode;
use crate::domain::fields::apply_field_values;
use crate::domain::{ContactId, ContactStatus, FieldDef, Millis};

use super::{ContactPatch, ContactRecord, ContactUpsert, StoreError, Upserted};

/// The contact row an upsert must write. `existing` is the stored contact
/// with the same email, if any; `defs` the field definitions of every list
/// the contact is in or is being added to.
pub fn upsert(
    existing: Option<ContactRecord>,
    defs: &[FieldDef],
    input: &ContactUpsert,
    now: Millis,
) -> Result<Upserted, StoreError> {
    let email = input.email.clone().ok_or_else(email_required)?;
    let created = existing.is_none();
    let base = existing.unwrap_or_else(|| ContactRecord {
        id: ContactId::generate(),
        email: email.clone(),
        phone: None,
        status: ContactStatus::Subscribed,
        fields: Default::default(),
        created_at: now,
        updated_at: now,
    });
    let fields = apply_field_values(defs, &base.fields, &input.fields).map_err(field_error)?;
    let mut contact = ContactRecord {
        email,
        phone: input.phone.clone().unwrap_or_else(|| base.phone.clone()),
        status: input.status.unwrap_or(base.status),
        fields,
        ..base.clone()
    };
    let changed = created || contact != base;
    if changed {
        contact.updated_at = now;
    }
    Ok(Upserted {
        contact,
        created,
        changed,
    })
}

/// The contact row a partial update must write.
pub fn patch(
    existing: ContactRecord,
    defs: &[FieldDef],
    patch: &ContactPatch,
    now: Millis,
) -> Result<ContactRecord, StoreError> {
    let fields = apply_field_values(defs, &existing.fields, &patch.fields).map_err(field_error)?;
    Ok(ContactRecord {
        email: patch.email.clone().unwrap_or(existing.email),
        phone: patch.phone.clone().unwrap_or(existing.phone),
        status: patch.status.unwrap_or(existing.status),
        fields,
        updated_at: now,
        ..existing
    })
}

fn field_error(e: crate::domain::fields::FieldValueError) -> StoreError {
    StoreError::Invalid {
        code: e.code,
        field: e.field,
        message: e.message,
    }
}

/// The error for a contact write without an email.
/// An upsert names a list that is not in the workspace (`lists[i]`).
pub fn unknown_list(i: usize, list: &crate::domain::ListId) -> StoreError {
    StoreError::Invalid {
        code: ErrorCode::UnknownList,
        field: format!("lists[{i}]"),
        message: format!("list `{list}` does not exist"),
    }
}

pub fn email_required() -> StoreError {
    StoreError::Invalid {
        code: ErrorCode::MissingField,
        field: "email".into(),
        message: "email is required".into(),
    }
}

/// The conflict answered when a list field name is taken (the unique
/// `(list_id, name)`).
pub fn field_exists(name: &str) -> super::sql::Taken {
    super::sql::Taken {
        code: ErrorCode::FieldExists,
        message: format!("the list already has a field named `{name}`"),
    }
}

pub fn list_name_taken(name: &str) -> super::sql::Taken {
    super::sql::Taken {
        code: ErrorCode::ListNameTaken,
        message: format!("a list named `{name}` already exists in this workspace"),
    }
}

pub fn flow_name_taken(name: &str) -> super::sql::Taken {
    super::sql::Taken {
        code: ErrorCode::FlowNameTaken,
        message: format!("a flow named `{name}` already exists in this workspace"),
    }
}

pub fn email_taken(email: &str) -> super::sql::Taken {
    super::sql::Taken {
        code: ErrorCode::EmailTaken,
        message: format!("another contact already has the email `{email}`"),
    }
}

pub fn workspace_name_taken(name: &str) -> super::sql::Taken {
    super::sql::Taken {
        code: ErrorCode::WorkspaceNameTaken,
        message: format!("a workspace named `{name}` already exists"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Email, FieldType};
    use serde_json::json;

    #[test]
    fn upsert_keeps_what_is_not_given_and_merges_fields() {
        let defs = vec![FieldDef::new("age", FieldType::Number, vec![]).unwrap()];
        let first = upsert(
            None,
            &defs,
            &ContactUpsert {
                email: Some(Email::parse("a@b.co").unwrap()),
                status: Some(ContactStatus::Unsubscribed),
                fields: json!({"age": "30"}).as_object().unwrap().clone(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        assert!(first.created);
        let second = upsert(
            Some(first.contact.clone()),
            &defs,
            &ContactUpsert {
                email: Some(Email::parse("a@b.co").unwrap()),
                ..Default::default()
            },
            2,
        )
        .unwrap();
        assert!(!second.created);
        assert!(!second.changed, "repeating stored values changes nothing");
        assert_eq!(second.contact.id, first.contact.id);
        assert_eq!(second.contact.status, ContactStatus::Unsubscribed);
        assert_eq!(second.contact.fields["age"], json!(30));
        assert_eq!(
            (second.contact.created_at, second.contact.updated_at),
            (1, 1)
        );
        let third = upsert(
            Some(second.contact),
            &defs,
            &ContactUpsert {
                email: Some(Email::parse("a@b.co").unwrap()),
                fields: json!({"age": 31}).as_object().unwrap().clone(),
                ..Default::default()
            },
            3,
        )
        .unwrap();
        assert!(third.changed);
        assert_eq!(third.contact.updated_at, 3);
    }
}
