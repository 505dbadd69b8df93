//! The store contract, checked directly on both implementations.

use std::collections::HashSet;

use hookflow::domain::keys::hash_presented;
use hookflow::domain::{
    ApiKeyId, ContactStatus, Email, FieldDef, FieldType, ListId, PageRequest, Phone, Scope,
};
use hookflow::store::{
    ClaimLimit, ContactFilter, ContactPatch, ContactUpsert, EntryRequest, FlowStatus, NewApiKey,
    StoreError,
};
use serde_json::json;

use crate::both_stores;
use crate::helpers::{Backend, open_store, test_db};

both_stores!(
    workspaces_and_keys,
    two_bootstraps_at_once_create_one_workspace,
    two_saves_of_one_flow_at_once_get_the_next_two_versions,
    lists_and_fields,
    contacts_upsert_and_fields,
    memberships_and_cascades,
    pagination_is_complete_and_stable,
    concurrent_upserts_of_one_email_make_one_contact,
    concurrent_member_adds_and_upserts_all_succeed,
    flows_keep_every_version,
    entering_a_flow_follows_repeat_and_idempotency,
    committed_writes_survive_reopening,
    claims_are_leased_and_completion_checks_the_lease,
    a_claim_stops_at_its_event_bytes,
    an_unknown_stored_value_is_an_error_not_a_default,
    a_flow_activated_by_another_process_fires_at_once,
    a_wake_up_during_a_lease_is_not_lost,
    a_burst_of_mixed_writes_answers_each_as_if_alone,
    one_completion_applies_each_runs_effects_in_order,
);

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn new_key(scope: Scope) -> (NewApiKey, String) {
    let secret = hookflow::domain::ApiKeySecret::generate();
    let key = NewApiKey {
        id: ApiKeyId::generate(),
        name: Some("t".into()),
        scope,
        prefix: secret.display_prefix(),
        hash: secret.hash(),
    };
    (key, secret.expose().to_owned())
}

async fn workspaces_and_keys(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let (k, secret) = new_key(Scope::Admin);
    let (ws, rec) = s
        .bootstrap("default", k)
        .await
        .unwrap()
        .expect("first bootstrap creates");
    assert_eq!(rec.workspace_id, ws.id);
    assert!(
        s.bootstrap("default", new_key(Scope::Admin).0)
            .await
            .unwrap()
            .is_none(),
        "bootstrap runs once"
    );
    assert!(matches!(
        s.create_workspace("default").await,
        Err(StoreError::Conflict { .. })
    ));
    let other = s.create_workspace("other").await.unwrap();
    assert_eq!(s.list_workspaces().await.unwrap().len(), 2);
    assert_eq!(s.workspace_by_name("other").await.unwrap(), other);

    let found = s
        .api_key_by_hash(&hash_presented(&secret))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id.clone(), found.scope, found.revoked_at),
        (rec.id.clone(), Scope::Admin, None)
    );
    assert!(
        s.api_key_by_hash(&hash_presented("hfk_nope"))
            .await
            .unwrap()
            .is_none()
    );
    let (ik, _) = new_key(Scope::Ingest);
    s.create_api_key(&other.id, ik).await.unwrap();
    assert_eq!(s.list_api_keys(Some(&other.id)).await.unwrap().len(), 1);
    assert_eq!(s.list_api_keys(None).await.unwrap().len(), 2);
    let revoked = s.revoke_api_key(&rec.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(
        s.api_key_by_hash(&hash_presented(&secret))
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert!(matches!(
        s.revoke_api_key(&ApiKeyId::generate()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.create_api_key(
            &hookflow::domain::WorkspaceId::generate(),
            new_key(Scope::Admin).0
        )
        .await,
        Err(StoreError::NotFound {
            kind: "workspace",
            ..
        })
    ));
    assert!(matches!(
        s.workspace_by_name("nowhere").await,
        Err(StoreError::NotFound { .. })
    ));
    s.close().await;
}

/// Two processes starting on one empty database at once: one bootstrap
/// creates the workspace and its key, the other creates nothing.
async fn two_bootstraps_at_once_create_one_workspace(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let (a, bb) = (open_store(&db).await, open_store(&db).await);
    let (one, two) = tokio::join!(
        a.bootstrap("default", new_key(Scope::Admin).0),
        bb.bootstrap("default", new_key(Scope::Admin).0)
    );
    let created: Vec<_> = [one.unwrap(), two.unwrap()].into_iter().flatten().collect();
    assert_eq!(created.len(), 1, "exactly one bootstrap creates");
    assert_eq!(a.list_workspaces().await.unwrap().len(), 1);
    assert_eq!(a.list_api_keys(None).await.unwrap().len(), 1, "and one key");
    a.close().await;
    bb.close().await;
}

async fn lists_and_fields(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let age = FieldDef::new("age", FieldType::Number, vec![]).unwrap();
    let list = s
        .create_list(&ws, "Buyers", vec![age.clone()])
        .await
        .unwrap();
    assert_eq!(list.fields, vec![age.clone()]);
    assert!(matches!(
        s.create_list(&ws, "Buyers", vec![]).await,
        Err(StoreError::Conflict {
            code: hookflow::domain::ErrorCode::ListNameTaken,
            ..
        })
    ));
    let renamed = s.rename_list(&ws, &list.id, "Customers").await.unwrap();
    assert_eq!(renamed.name, "Customers");
    let tier = FieldDef::new("tier", FieldType::Enum, vec!["gold".into()]).unwrap();
    let with = s.add_list_field(&ws, &list.id, tier.clone()).await.unwrap();
    assert_eq!(with.fields, vec![age.clone(), tier.clone()]);
    assert!(matches!(
        s.add_list_field(&ws, &list.id, tier).await,
        Err(StoreError::Conflict {
            code: hookflow::domain::ErrorCode::FieldExists,
            ..
        })
    ));
    let without = s.remove_list_field(&ws, &list.id, "age").await.unwrap();
    assert_eq!(without.fields.len(), 1);
    assert!(matches!(
        s.remove_list_field(&ws, &list.id, "age").await,
        Err(StoreError::NotFound { .. })
    ));
    s.delete_list(&ws, &list.id).await.unwrap();
    assert!(matches!(
        s.get_list(&ws, &list.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_list(&ws, &list.id).await,
        Err(StoreError::NotFound { .. })
    ));
    s.close().await;
}

async fn contacts_upsert_and_fields(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let defs = vec![
        FieldDef::new("age", FieldType::Number, vec![]).unwrap(),
        FieldDef::new("vip", FieldType::Boolean, vec![]).unwrap(),
    ];
    let list = s.create_list(&ws, "L", defs).await.unwrap();
    let first = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("Ann@Example.com")),
                phone: Some(Some(Phone::parse("+380631234567").unwrap())),
                fields: json!({"age": "41"}).as_object().unwrap().clone(),
                lists: vec![list.id.clone()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.contact.email.as_str(), "ann@example.com");
    assert_eq!(first.contact.fields["age"], json!(41));
    let again = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("Ann@EXAMPLE.COM")),
                fields: json!({"vip": "yes"}).as_object().unwrap().clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!again.created, "same normalised email updates");
    assert_eq!(again.contact.id, first.contact.id);
    assert_eq!(
        again.contact.fields,
        *json!({"age": 41, "vip": true}).as_object().unwrap()
    );
    assert_eq!(again.contact.phone, first.contact.phone);

    // A field no list of the contact defines is refused and nothing changes.
    let err = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("new@example.com")),
                fields: json!({"age": 1}).as_object().unwrap().clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                code: hookflow::domain::ErrorCode::UnknownField,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        s.contact_by_email(&ws, &email("new@example.com")).await,
        Err(StoreError::NotFound { .. })
    ));
    let err = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("new@example.com")),
                lists: vec![ListId::generate()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                code: hookflow::domain::ErrorCode::UnknownList,
                ..
            }
        ),
        "{err:?}"
    );

    let patched = s
        .update_contact(
            &ws,
            &first.contact.id,
            ContactPatch {
                status: Some(ContactStatus::Unsubscribed),
                phone: Some(None),
                fields: json!({"age": null}).as_object().unwrap().clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.status, ContactStatus::Unsubscribed);
    assert_eq!(patched.phone, None);
    assert_eq!(patched.fields, *json!({"vip": true}).as_object().unwrap());
    assert_eq!(
        s.get_contact(&ws, &first.contact.id).await.unwrap(),
        patched
    );

    let other = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("b@example.com")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let clash = s
        .update_contact(
            &ws,
            &other.contact.id,
            ContactPatch {
                email: Some(email("Ann@example.com")),
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(
            clash,
            Err(StoreError::Conflict {
                code: hookflow::domain::ErrorCode::EmailTaken,
                ..
            })
        ),
        "{clash:?}"
    );
    s.delete_contact(&ws, &other.contact.id).await.unwrap();
    assert!(matches!(
        s.get_contact(&ws, &other.contact.id).await,
        Err(StoreError::NotFound { .. })
    ));
    s.close().await;
}

async fn memberships_and_cascades(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let l1 = s.create_list(&ws, "one", vec![]).await.unwrap().id;
    let l2 = s.create_list(&ws, "two", vec![]).await.unwrap().id;
    let c = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("c@example.com")),
                lists: vec![l1.clone()],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .contact;
    let m = s.add_membership(&ws, &l2, &c.id).await.unwrap();
    let again = s.add_membership(&ws, &l2, &c.id).await.unwrap();
    assert_eq!(m, again, "adding twice is idempotent");
    let lists: Vec<_> = s
        .contact_lists(&ws, &c.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.list_id)
        .collect();
    assert_eq!(lists.len(), 2);
    assert_eq!(s.get_list(&ws, &l1).await.unwrap().member_count, 1);
    let members = s
        .list_members(&ws, &l2, &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(members.items[0].contact.id, c.id);
    let filter = ContactFilter {
        list_id: Some(l2.clone()),
        status: None,
    };
    assert_eq!(
        s.list_contacts(&ws, &filter, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    s.remove_membership(&ws, &l2, &c.id).await.unwrap();
    assert!(matches!(
        s.remove_membership(&ws, &l2, &c.id).await,
        Err(StoreError::NotFound { .. })
    ));
    s.delete_list(&ws, &l1).await.unwrap();
    assert!(
        s.contact_lists(&ws, &c.id).await.unwrap().is_empty(),
        "deleting a list removes its memberships"
    );
    assert!(
        s.get_contact(&ws, &c.id).await.is_ok(),
        "…but not its contacts"
    );
    s.add_membership(&ws, &l2, &c.id).await.unwrap();
    s.delete_contact(&ws, &c.id).await.unwrap();
    assert_eq!(
        s.get_list(&ws, &l2).await.unwrap().member_count,
        0,
        "deleting a contact removes its memberships"
    );
    s.close().await;
}

async fn pagination_is_complete_and_stable(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let list = s.create_list(&ws, "all", vec![]).await.unwrap().id;
    for i in 0..23 {
        s.upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email(&format!("p{i}@example.com"))),
                lists: vec![list.clone()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let mut seen = HashSet::new();
    let mut page = PageRequest::first(5);
    let mut pages = 0;
    loop {
        let got = s
            .list_contacts(&ws, &ContactFilter::default(), &page)
            .await
            .unwrap();
        pages += 1;
        for c in &got.items {
            assert!(seen.insert(c.id.clone()), "a contact appeared twice");
        }
        match got.next {
            Some(next) => {
                page = PageRequest {
                    after: Some(next),
                    limit: 5,
                }
            }
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (23, 5));
    let members = s
        .list_members(&ws, &list, &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(members.items.len(), 23);
    assert!(members.next.is_none());
    s.close().await;
}

async fn concurrent_upserts_of_one_email_make_one_contact(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (s, ws) = (s.clone(), ws.clone());
        tasks.push(tokio::spawn(async move {
            s.upsert_contact(
                &ws,
                ContactUpsert {
                    email: Some(email(&format!("same{}@example.com", i % 10))),
                    ..Default::default()
                },
            )
            .await
            .map(|u| u.created)
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap().expect("every upsert succeeds") {
            created += 1;
        }
    }
    assert_eq!(created, 10, "exactly one upsert per email creates");
    let all = s
        .list_contacts(&ws, &ContactFilter::default(), &PageRequest::first(500))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 10);
    s.close().await;
}

async fn committed_writes_survive_reopening(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let c = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("keep@example.com")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.close().await;
    drop(s);
    let reopened = open_store(&db).await;
    assert_eq!(
        reopened.get_contact(&ws, &c.contact.id).await.unwrap(),
        c.contact
    );
    reopened.close().await;
}

/// Adding a contact to a list while the same contact is upserted into that
/// list takes the same locks in the same order: no deadlock, no failure.
async fn concurrent_member_adds_and_upserts_all_succeed(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let mut lists = Vec::new();
    for i in 0..4 {
        lists.push(
            s.create_list(&ws, &format!("l{i}"), vec![])
                .await
                .unwrap()
                .id,
        );
    }
    let mut contacts = Vec::new();
    for i in 0..4 {
        let c = s.upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email(&format!("c{i}@example.com"))),
                ..Default::default()
            },
        );
        contacts.push(c.await.unwrap().contact);
    }
    let mut tasks = Vec::new();
    for round in 0..25 {
        for (i, c) in contacts.iter().enumerate() {
            let (s, ws, c) = (s.clone(), ws.clone(), c.clone());
            let list = lists[(i + round) % lists.len()].clone();
            let other = lists[(i + round + 1) % lists.len()].clone();
            tasks.push(tokio::spawn(async move {
                let a = s.add_membership(&ws, &list, &c.id);
                let u = s.upsert_contact(
                    &ws,
                    ContactUpsert {
                        email: Some(c.email.clone()),
                        lists: vec![other, list.clone()],
                        ..Default::default()
                    },
                );
                let (a, u) = tokio::join!(a, u);
                a.map(|_| ()).and(u.map(|_| ()))
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().expect("no deadlock or failure");
    }
    s.close().await;
}

/// Flows: every save is a new version, names are unique per workspace, the
/// inbound token is set once on activation and replaced by rotation.
async fn flows_keep_every_version(b: Backend) {
    use hookflow::store::FlowStatus;
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let other = s.create_workspace("other").await.unwrap().id;
    let doc = json!({"name": "Welcome", "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
    let f = s.create_flow(&ws, "Welcome", doc.clone()).await.unwrap();
    assert_eq!(
        (f.version, f.status, f.inbound_token.clone()),
        (1, FlowStatus::Draft, None)
    );
    let parsed = |v: &serde_json::Value| {
        serde_json::from_value::<hookflow::domain::flow::FlowDoc>(v.clone()).unwrap()
    };
    assert_eq!(*f.document, parsed(&doc));
    assert!(matches!(
        s.create_flow(&ws, "Welcome", doc.clone()).await,
        Err(StoreError::Conflict {
            code: hookflow::domain::ErrorCode::FlowNameTaken,
            ..
        })
    ));
    s.create_flow(&other, "Welcome", doc.clone())
        .await
        .expect("names are unique per workspace only");

    let mut doc2 = doc.clone();
    doc2["repeat"] = json!(true);
    let f2 = s
        .update_flow(&ws, &f.id, "Welcome v2", doc2.clone())
        .await
        .unwrap();
    assert_eq!((f2.version, f2.name.as_str()), (2, "Welcome v2"));
    assert_eq!(
        *s.get_flow(&ws, &f.id).await.unwrap().document,
        parsed(&doc2)
    );
    assert_eq!(s.flow_by_name(&ws, "Welcome v2").await.unwrap().id, f.id);

    let active = s
        .set_flow_status(&ws, &f.id, FlowStatus::Active, Some("tok1".into()))
        .await
        .unwrap();
    assert_eq!(
        (active.status, active.inbound_token.as_deref()),
        (FlowStatus::Active, Some("tok1"))
    );
    let again = s
        .set_flow_status(&ws, &f.id, FlowStatus::Active, Some("tok2".into()))
        .await
        .unwrap();
    assert_eq!(
        again.inbound_token.as_deref(),
        Some("tok1"),
        "activation keeps an existing token"
    );
    let rotated = s
        .rotate_inbound_token(&ws, &f.id, "tok3".into())
        .await
        .unwrap();
    assert_eq!(rotated.inbound_token.as_deref(), Some("tok3"));

    assert!(
        matches!(
            s.get_flow(&other, &f.id).await,
            Err(StoreError::NotFound { .. })
        ),
        "tenant isolation"
    );
    assert!(matches!(
        s.delete_flow(&other, &f.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        s.list_flows(&ws, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    s.delete_flow(&ws, &f.id).await.unwrap();
    assert!(matches!(
        s.get_flow(&ws, &f.id).await,
        Err(StoreError::NotFound { .. })
    ));
    s.close().await;
}

/// Entering a flow: contact and membership written with the run; repeat off
/// means once ever; repeat on means never two unfinished runs; an
/// Idempotency-Key replays the first answer; a paused flow takes nobody.
async fn entering_a_flow_follows_repeat_and_idempotency(b: Backend) {
    use hookflow::store::{EntryRequest, FlowStatus};
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let list = s
        .create_list(
            &ws,
            "L",
            vec![FieldDef::new("age", FieldType::Number, vec![]).unwrap()],
        )
        .await
        .unwrap()
        .id;
    let doc =
        json!({"name": "F", "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
    let once = s.create_flow(&ws, "once", doc.clone()).await.unwrap();
    s.set_flow_status(&ws, &once.id, FlowStatus::Active, Some("tok-once".into()))
        .await
        .unwrap();
    let again = s.create_flow(&ws, "again", doc).await.unwrap();
    s.set_flow_status(&ws, &again.id, FlowStatus::Active, None)
        .await
        .unwrap();
    let req =
        |flow: &hookflow::store::FlowRecord, repeat: bool, key: Option<(&str, u8)>| EntryRequest {
            flow_id: flow.id.clone(),
            flow_version: flow.version,
            first_step: "x".into(),
            repeat,
            has_exits: false,
            inbound_token: None,
            contact: ContactUpsert {
                email: Some(email("in@example.com")),
                fields: json!({"age": "7"}).as_object().unwrap().clone(),
                lists: vec![list.clone()],
                ..Default::default()
            },
            event_data: json!({"order": 1}),
            idempotency: key.map(|(k, h)| (k.to_owned(), vec![h])),
        };

    let first = s
        .enter_flow(&ws, req(&once, false, Some(("k1", 1))))
        .await
        .unwrap();
    assert!(
        !first.replayed && first.result.run_id.is_some(),
        "{first:?}"
    );
    let c = s
        .contact_by_email(&ws, &email("in@example.com"))
        .await
        .unwrap();
    assert_eq!(
        (c.id.to_string(), c.fields["age"].clone()),
        (first.result.contact_id.clone(), json!(7))
    );
    assert_eq!(
        s.contact_lists(&ws, &c.id).await.unwrap().len(),
        1,
        "added to the trigger's list"
    );
    let replay = s
        .enter_flow(&ws, req(&once, false, Some(("k1", 1))))
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.result, first.result, "the first answer, again");
    let reused = s.enter_flow(&ws, req(&once, false, Some(("k1", 2)))).await;
    assert!(
        matches!(
            reused,
            Err(StoreError::Conflict {
                code: hookflow::domain::ErrorCode::IdempotencyKeyReused,
                ..
            })
        ),
        "{reused:?}"
    );
    let second = s.enter_flow(&ws, req(&once, false, None)).await.unwrap();
    assert_eq!(
        (
            second.result.run_id.clone(),
            second.result.not_started.as_deref()
        ),
        (None, Some("already_entered"))
    );

    let a = s.enter_flow(&ws, req(&again, true, None)).await.unwrap();
    assert!(a.result.run_id.is_some());
    let b2 = s.enter_flow(&ws, req(&again, true, None)).await.unwrap();
    assert_eq!(
        b2.result.not_started.as_deref(),
        Some("run_active"),
        "never two unfinished runs"
    );

    let (found_ws, found) = s.flow_by_token("tok-once").await.unwrap();
    assert_eq!((found_ws, found.id.clone()), (ws.clone(), once.id.clone()));
    assert!(matches!(
        s.flow_by_token("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    s.set_flow_status(&ws, &once.id, FlowStatus::Paused, None)
        .await
        .unwrap();
    let paused = s.enter_flow(&ws, req(&once, true, None)).await;
    assert!(
        matches!(
            paused,
            Err(StoreError::Conflict {
                code: hookflow::domain::ErrorCode::FlowNotActive,
                ..
            })
        ),
        "{paused:?}"
    );
    s.close().await;
}

/// Runs raw SQL against the test database, as a newer version or a hand
/// edit would.
async fn raw_sql(db: &crate::helpers::TestDb, sqlite: &str, postgres: &str) {
    if let Some(path) = db.url.strip_prefix("sqlite://") {
        let path = path.to_owned();
        let sql = sqlite.to_owned();
        tokio::task::spawn_blocking(move || {
            rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(&sql)
                .unwrap()
        })
        .await
        .unwrap();
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::raw_sql(postgres).execute(&pool).await.unwrap();
        pool.close().await;
    }
}

/// A status the code does not know (written by a newer version, or by
/// hand) is an error naming the value, on both stores; before, SQLite read
/// such a contact as `subscribed` and such a run as `failed` (PostgreSQL:
/// `active`, so the engine would execute it), each store its own guess.
async fn an_unknown_stored_value_is_an_error_not_a_default(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let contact = s
        .upsert_contact(
            &ws,
            ContactUpsert {
                email: Some(email("odd@example.com")),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .contact
        .id;
    s.get_contact(&ws, &contact).await.unwrap();
    // The tables' CHECKs refuse it, so this stands for a newer version
    // whose migration widened them.
    raw_sql(
        &db,
        "PRAGMA ignore_check_constraints = ON; UPDATE contacts SET status = 'zombie'",
        "ALTER TABLE contacts DROP CONSTRAINT contacts_status_check;
         UPDATE contacts SET status = 'zombie'",
    )
    .await;
    let err = s.get_contact(&ws, &contact).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("contact status `zombie`")),
        "{err:?}"
    );
    let doc =
        json!({"name": "F", "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
    let flow = s.create_flow(&ws, "F", doc).await.unwrap().id;
    raw_sql(
        &db,
        "PRAGMA ignore_check_constraints = ON; UPDATE flows SET status = 'archived'",
        "ALTER TABLE flows DROP CONSTRAINT flows_status_check;
         UPDATE flows SET status = 'archived'",
    )
    .await;
    let err = s.get_flow(&ws, &flow).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("flow status `archived`")),
        "{err:?}"
    );
    s.close().await;
}

/// A claim takes runs oldest first until their event data passes the byte
/// limit, and always takes the first one, however large: large inbound bodies
/// are not held in memory hundreds at a time, and none is left behind.
async fn a_claim_stops_at_its_event_bytes(b: Backend) {
    use hookflow::store::{EntryRequest, FlowStatus};
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let list = s.create_list(&ws, "L", vec![]).await.unwrap().id;
    let doc =
        json!({"name": "F", "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
    let flow = s.create_flow(&ws, "F", doc).await.unwrap();
    s.set_flow_status(&ws, &flow.id, FlowStatus::Active, None)
        .await
        .unwrap();
    // Four runs of 3,000 bytes of event data each ({"pad":"…"} is 10 more).
    let mut ids = Vec::new();
    for i in 0..4 {
        let entered = s
            .enter_flow(
                &ws,
                EntryRequest {
                    flow_id: flow.id.clone(),
                    flow_version: flow.version,
                    first_step: "x".into(),
                    repeat: false,
                    has_exits: false,
                    inbound_token: None,
                    contact: ContactUpsert {
                        email: Some(email(&format!("big{i}@example.com"))),
                        lists: vec![list.clone()],
                        ..Default::default()
                    },
                    event_data: json!({"pad": "p".repeat(2_990)}),
                    idempotency: None,
                },
            )
            .await
            .unwrap();
        ids.push(entered.result.run_id.unwrap());
    }
    // Claims go by due time, then id; ids made by one process increase, so
    // "oldest first" has one answer even within one millisecond. A claim's
    // rows come back in no set order: compare them sorted.
    let now = chrono::Utc::now().timestamp_millis() + 1_000;
    let limit = |bytes| ClaimLimit {
        runs: 10,
        event_bytes: bytes,
    };
    // 5,000 bytes: the first (0 before it) and the second (3,000 before it).
    let first = s
        .claim_runs("e", now, now + 30_000, limit(5_000))
        .await
        .unwrap();
    let mut got: Vec<&str> = first.iter().map(|r| r.id.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(first[1].event_data["pad"].as_str().unwrap().len(), 2_990);
    // Smaller than one run: that run alone.
    let second = s
        .claim_runs("e", now, now + 30_000, limit(100))
        .await
        .unwrap();
    let mut got: Vec<&str> = second.iter().map(|r| r.id.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, [ids[2].as_str()]);
    // The run count still limits.
    let third = s
        .claim_runs("e", now, now + 30_000, ClaimLimit::runs(10))
        .await
        .unwrap();
    let mut got: Vec<&str> = third.iter().map(|r| r.id.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, [ids[3].as_str()]);
    s.close().await;
}

/// FL-5 at the store: a claimed run is invisible to other claims until its
/// lease expires; after that another engine takes it, and the first one's
/// completion is refused (nothing written), the second's applied.
async fn claims_are_leased_and_completion_checks_the_lease(b: Backend) {
    use hookflow::store::{
        AdvanceOutcome, EntryRequest, FlowStatus, RunAdvance, RunEnd, RunStatus,
    };
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let list = s.create_list(&ws, "L", vec![]).await.unwrap().id;
    let doc =
        json!({"name": "F", "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
    let flow = s.create_flow(&ws, "F", doc).await.unwrap();
    s.set_flow_status(&ws, &flow.id, FlowStatus::Active, None)
        .await
        .unwrap();
    let entered = s
        .enter_flow(
            &ws,
            EntryRequest {
                flow_id: flow.id.clone(),
                flow_version: flow.version,
                first_step: "x".into(),
                repeat: false,
                has_exits: false,
                inbound_token: None,
                contact: ContactUpsert {
                    email: Some(email("lease@example.com")),
                    lists: vec![list],
                    ..Default::default()
                },
                event_data: json!({}),
                idempotency: None,
            },
        )
        .await
        .unwrap();
    let run_id = entered.result.run_id.unwrap();
    let now = chrono::Utc::now().timestamp_millis() + 1_000;
    let a = s
        .claim_runs("engine-a", now, now + 10_000, ClaimLimit::runs(10))
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].id.as_str(), run_id);
    assert_eq!(a[0].contact.email.as_str(), "lease@example.com");
    assert!(
        s.claim_runs("engine-b", now + 5_000, now + 15_000, ClaimLimit::runs(10))
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // A's lease expired: B takes the run over.
    let b_claim = s
        .claim_runs("engine-b", now + 11_000, now + 20_000, ClaimLimit::runs(10))
        .await
        .unwrap();
    assert_eq!(b_claim.len(), 1);
    let finish = |run: &hookflow::store::ClaimedRun| RunAdvance {
        run_id: run.id.clone(),
        workspace_id: run.workspace_id.clone(),
        contact_id: run.contact.id.clone(),
        first_seq: run.step_count,
        history: vec![hookflow::store::StepRecord {
            step: "x".into(),
            kind: "exit".into(),
            at: now,
            input: json!({}),
            outcome: hookflow::flows::records::StepOutcome::ExitStep,
            detail: json!(null),
            error: None,
        }],
        effects: vec![],
        end: RunEnd::Finished {
            status: RunStatus::Exited,
            reason: hookflow::flows::records::EndReason::ExitStep,
            step: Some("x".into()),
        },
        event_data: None,
        consumed_event: false,
        claimed_due: run.claimed_due,
    };
    let late = s
        .complete_runs("engine-a", now + 12_000, vec![finish(&a[0])])
        .await
        .unwrap();
    assert_eq!(late, vec![AdvanceOutcome::LeaseLost]);
    let ok = s
        .complete_runs("engine-b", now + 12_000, vec![finish(&b_claim[0])])
        .await
        .unwrap();
    assert_eq!(ok, vec![AdvanceOutcome::Applied]);
    let (run, history) = s.get_run(&ws, &b_claim[0].id).await.unwrap();
    assert_eq!(
        (run.status, run.end_reason.map(|r| r.as_str())),
        (RunStatus::Exited, Some("exit_step"))
    );
    assert_eq!(history.len(), 1, "the refused completion wrote nothing");
    // Finished runs are never claimed again.
    assert!(
        s.claim_runs("engine-c", now + 60_000, now + 90_000, ClaimLimit::runs(10))
            .await
            .unwrap()
            .is_empty()
    );
    s.close().await;
}

/// Two stores on one database stand for two processes (the server and the
/// CLI). The first has just written contacts (and learned the workspace had
/// no contact-triggered flows); the second adds a list field and activates
/// a `list_added` flow. The first's next writes must see both at once.
async fn a_flow_activated_by_another_process_fires_at_once(b: Backend) {
    use hookflow::store::{FlowStatus, RunFilter};
    let Some(db) = test_db(b).await else { return };
    let server = open_store(&db).await;
    let cli = open_store(&db).await;
    let ws = server.create_workspace("w").await.unwrap().id;
    let list = server.create_list(&ws, "L", vec![]).await.unwrap().id;
    let upsert = |e: &str, fields: serde_json::Value| ContactUpsert {
        email: Some(email(e)),
        fields: fields.as_object().unwrap().clone(),
        lists: vec![list.clone()],
        ..Default::default()
    };
    server
        .upsert_contact(&ws, upsert("a@example.com", json!({})))
        .await
        .unwrap();

    cli.add_list_field(
        &ws,
        &list,
        FieldDef::new("tier", FieldType::Text, vec![]).unwrap(),
    )
    .await
    .unwrap();
    let doc = json!({"name": "On join", "trigger": {"type": "list_added", "list_id": list.to_string()},
                     "steps": [{"id": "x", "type": "exit"}]});
    let flow = cli.create_flow(&ws, "On join", doc).await.unwrap();
    cli.set_flow_status(&ws, &flow.id, FlowStatus::Active, None)
        .await
        .unwrap();

    let b_contact = server
        .upsert_contact(&ws, upsert("b@example.com", json!({"tier": "gold"})))
        .await
        .expect("the field added by the other process is known");
    let runs = server
        .list_runs(
            &ws,
            &RunFilter {
                flow_id: Some(flow.id.clone()),
                ..Default::default()
            },
            &hookflow::domain::PageRequest::new(None, None).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        runs.items.len(),
        1,
        "the flow activated elsewhere started a run"
    );
    assert_eq!(runs.items[0].contact_id, b_contact.contact.id);
    cli.close().await;
    server.close().await;
}

/// A contact change while the engine holds a waiting run (an exit check is
/// owed) must not be overwritten by the completion's timer; and two runs of
/// one contact claimed together each see the contact's lists.
async fn a_wake_up_during_a_lease_is_not_lost(b: Backend) {
    use hookflow::store::{
        AdvanceOutcome, ClaimedRun, ContactPatch, EntryRequest, FlowStatus, RunAdvance, RunEnd,
        RunStatus,
    };
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let list = s
        .create_list(
            &ws,
            "L",
            vec![FieldDef::new("plan", FieldType::Text, vec![]).unwrap()],
        )
        .await
        .unwrap()
        .id;
    let doc =
        json!({"name": "F", "trigger": {"type": "flow"}, "steps": [{"id": "w", "type": "exit"}]});
    let mut runs = Vec::new();
    for name in ["one", "two"] {
        let flow = s.create_flow(&ws, name, doc.clone()).await.unwrap();
        s.set_flow_status(&ws, &flow.id, FlowStatus::Active, None)
            .await
            .unwrap();
        let entered = s
            .enter_flow(
                &ws,
                EntryRequest {
                    flow_id: flow.id.clone(),
                    flow_version: flow.version,
                    first_step: "w".into(),
                    repeat: false,
                    has_exits: true,
                    inbound_token: None,
                    contact: ContactUpsert {
                        email: Some(email("wake@example.com")),
                        lists: vec![list.clone()],
                        ..Default::default()
                    },
                    event_data: json!({}),
                    idempotency: None,
                },
            )
            .await
            .unwrap();
        runs.push(entered.result.run_id.unwrap());
    }
    let day = 86_400_000;
    let wait = |run: &ClaimedRun, until: i64| RunAdvance {
        run_id: run.id.clone(),
        workspace_id: run.workspace_id.clone(),
        contact_id: run.contact.id.clone(),
        first_seq: run.step_count,
        history: vec![],
        effects: vec![],
        end: RunEnd::Waiting {
            step: "w".into(),
            wait_until: until,
            wait_event: None,
        },
        event_data: None,
        consumed_event: false,
        claimed_due: run.claimed_due,
    };
    let now = chrono::Utc::now().timestamp_millis() + 1_000;
    let claimed = s
        .claim_runs("e", now, now + 30_000, ClaimLimit::runs(10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "both runs of the contact are due");
    // A claim leaves due_at as it was, but a leased run is not due: an
    // idle engine must not wake up for runs it holds.
    assert_eq!(s.next_due(now, now + day).await.unwrap(), None);
    for c in &claimed {
        assert_eq!(
            c.lists,
            vec![list.clone()],
            "each claimed run sees the contact's lists"
        );
    }
    let advances = claimed.iter().map(|c| wait(c, now + day)).collect();
    let done = s.complete_runs("e", now, advances).await.unwrap();
    assert_eq!(done, vec![AdvanceOutcome::Applied, AdvanceOutcome::Applied]);
    // Released and waiting: due at the wait's end, found only by a look
    // that reaches that far.
    assert_eq!(s.next_due(now, now + day).await.unwrap(), Some(now + day));
    assert_eq!(s.next_due(now, now + day - 1).await.unwrap(), None);

    // A contact change wakes the waiting runs (they have exit conditions).
    let ct = claimed[0].contact.id.clone();
    let patch = |v: &str| ContactPatch {
        fields: json!({"plan": v}).as_object().unwrap().clone(),
        ..Default::default()
    };
    s.update_contact(&ws, &ct, patch("a")).await.unwrap();
    let later = chrono::Utc::now().timestamp_millis() + 2_000;
    let claimed = s
        .claim_runs("e", later, later + 30_000, ClaimLimit::runs(10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "woken for an exit check");
    // While they are leased, the contact changes again …
    s.update_contact(&ws, &ct, patch("b")).await.unwrap();
    // … and the engine, which read the contact before, puts them back.
    let advances = claimed.iter().map(|c| wait(c, later + day)).collect();
    s.complete_runs("e", later, advances).await.unwrap();
    for id in &runs {
        let (run, _) = s
            .get_run(&ws, &hookflow::domain::RunId::parse(id).unwrap())
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Waiting);
        assert!(
            run.due_at.unwrap() <= later,
            "the change during the lease still owes an exit check: due {:?}",
            run.due_at
        );
    }
    s.close().await;
}

/// Many writes at once (PostgreSQL batches them into shared transactions):
/// each gets the answer it would get alone. Data errors stay with their
/// write, a write the database refuses (NUL in jsonb) fails alone after the
/// batch is retried one write at a time, and two entries of one email
/// start one run.
async fn a_burst_of_mixed_writes_answers_each_as_if_alone(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let fields = vec![FieldDef::new("age", FieldType::Number, vec![]).unwrap()];
    let list = s.create_list(&ws, "L", fields).await.unwrap().id;
    let flow = active_exit_flow(&s, &ws, "f").await;
    let unknown = ListId::generate();
    let mut tasks = Vec::new();
    for i in 0..60usize {
        let (s, ws, list, unknown, flow) = (
            s.clone(),
            ws.clone(),
            list.clone(),
            unknown.clone(),
            flow.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut contact = ContactUpsert {
                email: Some(email(&format!("c{i}@example.com"))),
                lists: vec![list],
                ..Default::default()
            };
            let enter = |contact, data| entry(&flow, contact, data);
            match i % 6 {
                0 => {
                    contact.lists = vec![unknown];
                    s.upsert_contact(&ws, contact).await.map(|_| None)
                }
                1 => {
                    contact.fields = json!({"age": "old"}).as_object().unwrap().clone();
                    s.upsert_contact(&ws, contact).await.map(|_| None)
                }
                2 => {
                    let nul = json!({"note": "a\u{0}b"});
                    let out = s.enter_flow(&ws, enter(contact, nul)).await;
                    out.map(|o| o.result.run_id)
                }
                3 => {
                    contact.email = Some(email(&format!("pair{}@example.com", i / 12)));
                    let out = s.enter_flow(&ws, enter(contact, json!({"i": i}))).await;
                    out.map(|o| o.result.run_id)
                }
                _ => s.upsert_contact(&ws, contact).await.map(|_| None),
            }
        }));
    }
    let mut runs = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap();
        match (i % 6, &out) {
            (0, Err(StoreError::Invalid { code, .. })) => assert_eq!(*code, "unknown_list"),
            (1, Err(StoreError::Invalid { field, .. })) => assert_eq!(field, "fields.age"),
            (2, Err(StoreError::Internal(_))) if matches!(b, Backend::Postgres) => {}
            (2, Ok(Some(_))) if matches!(b, Backend::Sqlite) => runs += 1,
            (3, Ok(run)) => runs += usize::from(run.is_some()),
            (4 | 5, Ok(None)) => {}
            _ => panic!("write {i} answered {out:?}"),
        }
    }
    // Ten `pair` entries over five emails start five runs; SQLite also
    // stores the NUL character PostgreSQL refuses.
    let sqlite_nul = if matches!(b, Backend::Sqlite) { 10 } else { 0 };
    assert_eq!(runs, 5 + sqlite_nul);
    let page = PageRequest::first(500);
    let all = s
        .list_contacts(&ws, &ContactFilter::default(), &page)
        .await
        .unwrap();
    // 20 plain upserts, 5 pair contacts, and the NUL entries' contacts on SQLite.
    assert_eq!(all.items.len(), 25 + sqlite_nul, "{:?}", all.items.len());
    s.close().await;
}

/// One completion batch with several runs (the engine's usual case): each
/// run's effects apply as if the runs were stored one after another. Two
/// runs of one contact keep their order (leave a list, then join it again:
/// the contact ends in the list); an effect on a deleted list fails its run
/// at that step and skips the run's later effects; other runs still apply.
async fn one_completion_applies_each_runs_effects_in_order(b: Backend) {
    use hookflow::flows::records::{EndReason, StepOutcome};
    use hookflow::store::{AdvanceOutcome, ClaimedRun, Effect, RunAdvance, RunEnd, RunStatus};
    let Some(db) = test_db(b).await else { return };
    let s = open_store(&db).await;
    let ws = s.create_workspace("w").await.unwrap().id;
    let fields = vec![FieldDef::new("age", FieldType::Number, vec![]).unwrap()];
    let list = s.create_list(&ws, "L", fields).await.unwrap().id;
    let gone = s.create_list(&ws, "gone", vec![]).await.unwrap().id;
    let flows = [
        active_exit_flow(&s, &ws, "f1").await,
        active_exit_flow(&s, &ws, "f2").await,
    ];
    let enter = |flow: usize, who: &str| {
        let contact = ContactUpsert {
            email: Some(email(&format!("{who}@example.com"))),
            lists: vec![list.clone()],
            ..Default::default()
        };
        entry(&flows[flow], contact, json!({}))
    };
    let mut runs = Vec::new();
    for (flow, who) in [(0, "a"), (1, "a"), (0, "b"), (0, "c")] {
        let out = s.enter_flow(&ws, enter(flow, who)).await.unwrap();
        runs.push(out.result.run_id.unwrap());
    }
    s.delete_list(&ws, &gone).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis() + 1_000;
    let claimed = s
        .claim_runs("engine", now, now + 10_000, ClaimLimit::runs(10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    let run = |id: &str| claimed.iter().find(|r| r.id.as_str() == id).unwrap();
    let advance = |run: &ClaimedRun, effects: Vec<Effect>| RunAdvance {
        run_id: run.id.clone(),
        workspace_id: run.workspace_id.clone(),
        contact_id: run.contact.id.clone(),
        first_seq: run.step_count,
        history: vec![hookflow::store::StepRecord {
            step: "x".into(),
            kind: "exit".into(),
            at: now,
            input: json!({}),
            outcome: StepOutcome::ExitStep,
            detail: json!(null),
            error: None,
        }],
        effects: effects.into_iter().map(|e| (0, e)).collect(),
        end: RunEnd::Finished {
            status: RunStatus::Exited,
            reason: EndReason::ExitStep,
            step: Some("x".into()),
        },
        event_data: None,
        consumed_event: false,
        claimed_due: run.claimed_due,
    };
    let age = |v: serde_json::Value| Effect::SetField {
        name: "age".into(),
        value: v,
    };
    let advances = vec![
        advance(run(&runs[0]), vec![Effect::RemoveFromList(list.clone())]),
        advance(
            run(&runs[1]),
            vec![Effect::AddToList(list.clone()), age(json!(30))],
        ),
        advance(
            run(&runs[2]),
            vec![Effect::AddToList(gone.clone()), age(json!(40))],
        ),
        advance(run(&runs[3]), vec![age(json!("7"))]),
    ];
    let out = s.complete_runs("engine", now, advances).await.unwrap();
    assert_eq!(out[0], AdvanceOutcome::Applied);
    assert_eq!(out[1], AdvanceOutcome::Applied);
    assert!(
        matches!(&out[2], AdvanceOutcome::Failed { step, error } if step == "x" && error.contains("gone") || error.contains(gone.as_str())),
        "{:?}",
        out[2]
    );
    assert_eq!(out[3], AdvanceOutcome::Applied);
    let contact = |who: &str| {
        let s = s.clone();
        let ws = ws.clone();
        let who = email(&format!("{who}@example.com"));
        async move { s.contact_by_email(&ws, &who).await.unwrap() }
    };
    let a = contact("a").await;
    let lists = s.contact_lists(&ws, &a.id).await.unwrap();
    assert_eq!(lists.len(), 1, "left, then joined again: {lists:?}");
    assert_eq!(a.fields.get("age"), Some(&json!(30)));
    let b_ = contact("b").await;
    assert_eq!(b_.fields.get("age"), None, "the failed run's later effect");
    assert_eq!(contact("c").await.fields.get("age"), Some(&json!(7)));
    let (failed, _) = s.get_run(&ws, &run(&runs[2]).id).await.unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    s.close().await;
}

/// An active flow of one exit step, entered by other flows or directly.
async fn active_exit_flow(
    s: &std::sync::Arc<dyn hookflow::store::Store>,
    ws: &hookflow::domain::WorkspaceId,
    name: &str,
) -> hookflow::store::FlowRecord {
    let doc =
        json!({"name": "F", "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
    let flow = s.create_flow(ws, name, doc).await.unwrap();
    s.set_flow_status(ws, &flow.id, FlowStatus::Active, None)
        .await
        .unwrap();
    flow
}

/// An entry of `contact` into `flow` (no repeat, no key), at step `x`.
fn entry(
    flow: &hookflow::store::FlowRecord,
    contact: ContactUpsert,
    event_data: serde_json::Value,
) -> EntryRequest {
    EntryRequest {
        flow_id: flow.id.clone(),
        flow_version: flow.version,
        first_step: "x".into(),
        repeat: false,
        has_exits: false,
        inbound_token: None,
        contact,
        event_data,
        idempotency: None,
    }
}

/// Two processes saving one flow at once: each save gets its own version
/// number (2 and 3), and both versions are kept.
async fn two_saves_of_one_flow_at_once_get_the_next_two_versions(b: Backend) {
    let Some(db) = test_db(b).await else { return };
    let (a, bb) = (open_store(&db).await, open_store(&db).await);
    let ws = a.create_workspace("w").await.unwrap().id;
    let doc = |n: u32| json!({"name": format!("v{n}"), "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
    let f = a.create_flow(&ws, "F", doc(1)).await.unwrap();
    let (one, two) = tokio::join!(
        a.update_flow(&ws, &f.id, "F", doc(2)),
        bb.update_flow(&ws, &f.id, "F", doc(3))
    );
    let mut versions = vec![one.unwrap().version, two.unwrap().version];
    versions.sort_unstable();
    assert_eq!(versions, [2, 3]);
    for v in [1, 2, 3] {
        a.flow_version(&ws, &f.id, v).await.unwrap();
    }
    assert_eq!(a.get_flow(&ws, &f.id).await.unwrap().version, 3);
    assert!(matches!(
        a.flow_version(&ws, &f.id, 4).await,
        Err(StoreError::NotFound { .. })
    ));
    a.close().await;
    bb.close().await;
}
