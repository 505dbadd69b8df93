//! Inbound calls without HTTP: which flow a token leads to (and a short
//! cache of it), and how a call's JSON body becomes an entry (the contact's
//! email, phone and list fields from the trigger's mapping). `api::inbound`
//! does the HTTP part: authentication, limits, reading the body, answers.

use crate::domain::ErrorCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::domain::flow::{FlowDoc, SignatureScheme, Trigger};
use crate::domain::jsonpath::JsonPath;
use crate::domain::{Email, Phone, WorkspaceId};
use crate::store::{ContactUpsert, EntryRequest, FlowRecord, FlowStatus, Store, StoreError};

/// Why a body cannot enter its flow.
#[derive(Debug, PartialEq)]
pub enum InboundError {
    /// The flow's trigger is not (or no longer) an inbound call.
    NotInbound,
    /// A value of the body is missing or wrong; `field` is its body path.
    Invalid {
        code: ErrorCode,
        field: String,
        message: String,
    },
    /// Stored state that should not be possible (logged, answered 500).
    Internal(String),
}

impl InboundError {
    fn invalid(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The flow an inbound URL leads to, with its parsed document.
pub struct Target {
    pub ws: WorkspaceId,
    pub flow: FlowRecord,
    /// The flow's document (the same `Arc` as `flow.document`).
    pub doc: Arc<FlowDoc>,
}

impl Target {
    pub fn signature(&self) -> Option<SignatureScheme> {
        match &self.doc.trigger {
            Trigger::Inbound { signature, .. } => *signature,
            _ => None,
        }
    }
}

/// The flow whose inbound URL has `token`, if it has one and its trigger is
/// (still) an inbound call. Served from [`InboundCache`] for up to 2 s:
/// reading and parsing the flow was the largest cost of a call on the HTTP
/// side. The entry's transaction re-checks status and token, so a cached
/// copy never lets a paused, deleted or rotated-away flow take a call.
pub async fn lookup(
    store: &dyn Store,
    cache: &InboundCache,
    token: &str,
) -> Result<Option<Arc<Target>>, StoreError> {
    if let Some(t) = cache.get(token) {
        return Ok(Some(t));
    }
    let (ws, flow) = match store.flow_by_token(token).await {
        Ok(found) => found,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let doc = flow.document.clone();
    if !doc.is_inbound() {
        return Ok(None);
    }
    let target = Arc::new(Target { ws, flow, doc });
    // Only active flows are cached: a flow paused here and activated by
    // another process (the CLI) must take calls at once, not after the TTL.
    // (The other way round, the entry's own re-check refuses at once.)
    if target.flow.status == FlowStatus::Active {
        cache.put(token, target.clone());
    }
    Ok(Some(target))
}

/// Flows by inbound token, each kept for [`InboundCache::TTL`]; cleared
/// whenever this process changes a flow.
#[derive(Default)]
pub struct InboundCache {
    map: Mutex<HashMap<String, (Instant, Arc<Target>)>>,
}

impl InboundCache {
    const TTL: Duration = Duration::from_secs(2);
    const MAX: usize = 10_000;

    pub fn get(&self, token: &str) -> Option<Arc<Target>> {
        let map = self.map.lock().expect("inbound cache");
        map.get(token)
            .filter(|(at, _)| at.elapsed() < Self::TTL)
            .map(|(_, t)| t.clone())
    }

    pub fn put(&self, token: &str, target: Arc<Target>) {
        let mut map = self.map.lock().expect("inbound cache");
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(token.to_owned(), (Instant::now(), target));
    }

    pub fn evict(&self, token: &str) {
        self.map.lock().expect("inbound cache").remove(token);
    }

    /// Forgets every flow (called when this process changes one).
    pub fn clear(&self) {
        self.map.lock().expect("inbound cache").clear();
    }
}

/// What entering the flow writes: the contact (email, mapped phone and
/// fields) and the run. Also, for each mapped list field, the body path it
/// came from, so errors can name the path the caller sent.
pub fn entry_request(
    flow: &FlowRecord,
    doc: &FlowDoc,
    body: Value,
    idempotency: Option<(String, Vec<u8>)>,
) -> Result<(EntryRequest, Vec<(String, String)>), InboundError> {
    let Trigger::Inbound {
        list_id, mapping, ..
    } = &doc.trigger
    else {
        return Err(InboundError::NotInbound);
    };
    if !body.is_object() {
        return Err(InboundError::invalid(
            ErrorCode::InvalidBody,
            ".",
            "the body must be a JSON object",
        ));
    }
    let email = mapped_email(&body, mapping)?;
    let mut phone = None;
    let mut fields = Map::new();
    let mut origin = Vec::new(); // (list field, body path) to name the body path in errors
    for (path, target) in mapping {
        let Ok(jp) = JsonPath::parse(path) else {
            continue;
        };
        let Some(v) = jp.get(&body).filter(|v| !v.is_null()) else {
            continue;
        };
        if target == "email" {
            continue; // read above
        }
        if target == "phone" {
            let s = v.as_str().ok_or_else(|| {
                InboundError::invalid(
                    ErrorCode::InvalidPhone,
                    path.clone(),
                    "a phone number must be a string",
                )
            })?;
            phone = Some(Some(Phone::parse(s).map_err(|e| {
                InboundError::invalid(ErrorCode::InvalidPhone, path.clone(), e.to_string())
            })?));
        } else {
            fields.insert(target.clone(), v.clone());
            origin.push((format!("fields.{target}"), path.clone()));
        }
    }
    let list = list_id
        .get()
        .map_err(|e| InboundError::Internal(format!("a stored trigger list id: {e}")))?
        .clone();
    let req = EntryRequest {
        flow_id: flow.id.clone(),
        flow_version: flow.version,
        first_step: doc.steps.first().map(|s| s.id.clone()).unwrap_or_default(),
        repeat: doc.repeat,
        has_exits: !doc.exit_conditions.is_empty(),
        contact: ContactUpsert {
            email: Some(email),
            phone,
            status: None,
            fields,
            lists: vec![list],
        },
        event_data: body,
        inbound_token: None,
        idempotency,
    };
    Ok((req, origin))
}

/// The contact's email: at the body path the mapping puts onto `email`
/// (`data.object.customer_email`, as Stripe sends it), else the top-level
/// `email`. Validated and normalised alike; errors name the body's path.
fn mapped_email(
    body: &Value,
    mapping: &std::collections::BTreeMap<String, String>,
) -> Result<Email, InboundError> {
    let mapped = mapping.iter().find(|(_, target)| *target == "email");
    let (path, value) = match mapped {
        Some((path, _)) => {
            // Paths are checked when the flow is saved.
            let jp = JsonPath::parse(path).map_err(|e| {
                InboundError::Internal(format!(
                    "a stored mapping path `{path}` does not parse: {e}"
                ))
            })?;
            (path.as_str(), jp.get(body))
        }
        None => ("email", body.get("email")),
    };
    match value {
        None | Some(Value::Null) => Err(InboundError::invalid(
            ErrorCode::MissingField,
            path,
            if mapped.is_some() {
                format!(
                    "email is required: this flow maps `{path}` onto the email, and the body has no value there"
                )
            } else {
                "email is required (or map a body path onto `email` in the flow's trigger)"
                    .to_owned()
            },
        )),
        Some(Value::String(s)) => Email::parse(s)
            .map_err(|e| InboundError::invalid(ErrorCode::InvalidEmail, path, e.to_string())),
        Some(_) => Err(InboundError::invalid(
            ErrorCode::InvalidEmail,
            path,
            "email must be a string",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(doc: &Value) -> (FlowRecord, FlowDoc) {
        let parsed: FlowDoc = serde_json::from_value(doc.clone()).unwrap();
        let record = FlowRecord {
            id: crate::domain::FlowId::generate(),
            name: "F".into(),
            status: FlowStatus::Active,
            version: 3,
            document: Arc::new(parsed.clone()),
            inbound_token: Some("t".into()),
            inbound_secret: None,
            inbound_secret_new: false,
            created_at: 0,
            updated_at: 0,
        };
        (record, parsed)
    }

    fn stripe_flow() -> Value {
        json!({"name": "F", "trigger": {"type": "inbound", "list_id": crate::domain::ListId::generate().to_string(),
               "mapping": {"data.object.customer_email": "email", "data.object.phone": "phone",
                           "data.object.plan": "plan"}},
               "steps": [{"id": "first", "type": "exit"}], "repeat": true})
    }

    #[test]
    fn a_mapping_takes_email_phone_and_fields_from_their_paths() {
        let (record, doc) = flow(&stripe_flow());
        let body = json!({"email": "ignored@example.com", "data": {"object": {
            "customer_email": "Jane@Example.com", "phone": "+380 63 123 4567", "plan": "pro"}}});
        let (req, origin) = entry_request(&record, &doc, body.clone(), None).unwrap();
        assert_eq!(req.contact.email.unwrap().as_str(), "jane@example.com");
        assert_eq!(
            req.contact.phone.unwrap().unwrap().as_str(),
            "+380631234567"
        );
        assert_eq!(req.contact.fields["plan"], "pro");
        assert_eq!(
            origin,
            [("fields.plan".to_owned(), "data.object.plan".to_owned())]
        );
        assert_eq!(
            (req.first_step.as_str(), req.repeat, req.flow_version),
            ("first", true, 3)
        );
        assert_eq!(
            req.event_data, body,
            "the run's event data is the whole body"
        );
    }

    #[test]
    fn errors_name_the_body_path() {
        let (record, doc) = flow(&stripe_flow());
        let err = |body: Value| entry_request(&record, &doc, body, None).unwrap_err();
        assert_eq!(
            err(json!({"email": "a@example.com"})),
            InboundError::invalid(
                ErrorCode::MissingField,
                "data.object.customer_email",
                "email is required: this flow maps `data.object.customer_email` onto the email, and the body has no value there"
            )
        );
        let bad_phone =
            err(json!({"data": {"object": {"customer_email": "a@example.com", "phone": 5}}}));
        assert!(
            matches!(&bad_phone, InboundError::Invalid { code: ErrorCode::InvalidPhone, field, .. } if field == "data.object.phone"),
            "{bad_phone:?}"
        );
        assert!(matches!(
            err(json!([1])),
            InboundError::Invalid {
                code: ErrorCode::InvalidBody,
                ..
            }
        ));
    }

    #[test]
    fn a_flow_that_is_not_inbound_takes_no_call() {
        let doc = json!({"name": "F", "trigger": {"type": "flow"}, "steps": [{"id": "x", "type": "exit"}]});
        let (record, parsed) = flow(&doc);
        assert_eq!(
            entry_request(&record, &parsed, json!({"email": "a@example.com"}), None).unwrap_err(),
            InboundError::NotInbound
        );
    }
}
