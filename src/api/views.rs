//! What the API returns: the JSON shapes of stored records, with times as
//! RFC 3339 strings. Separate from the store's records so the wire format
//! changes only on purpose.

use crate::domain::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::domain::{ContactStatus, FieldType, MembershipStatus, millis_to_rfc3339};
use crate::store::{ContactRecord, FlowRecord, FlowStatus, ListRecord, Member, Membership};

#[derive(Serialize, ToSchema)]
pub struct FieldView {
    /// Letters, digits and `_`, starting with a letter.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Allowed values (enum fields only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ListView {
    #[schema(example = "ls_01j9zq3k0f8x5m2v7c4b6n1d0e")]
    pub id: String,
    pub name: String,
    pub fields: Vec<FieldView>,
    pub member_count: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<ListRecord> for ListView {
    fn from(l: ListRecord) -> Self {
        Self {
            id: l.id.to_string(),
            name: l.name,
            fields: l
                .fields
                .into_iter()
                .map(|f| FieldView {
                    name: f.name.to_string(),
                    kind: f.kind,
                    options: f.options,
                })
                .collect(),
            member_count: l.member_count,
            created_at: millis_to_rfc3339(l.created_at),
            updated_at: millis_to_rfc3339(l.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ContactView {
    #[schema(example = "ct_01j9zq3k0f8x5m2v7c4b6n1d0e")]
    pub id: String,
    pub email: String,
    pub phone: Option<String>,
    pub status: ContactStatus,
    /// Custom field values, typed by the lists' field definitions.
    #[schema(value_type = Object)]
    pub fields: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<ContactRecord> for ContactView {
    fn from(c: ContactRecord) -> Self {
        Self {
            id: c.id.to_string(),
            email: c.email.to_string(),
            phone: c.phone.map(|p| p.to_string()),
            status: c.status,
            fields: c.fields,
            created_at: millis_to_rfc3339(c.created_at),
            updated_at: millis_to_rfc3339(c.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MembershipView {
    pub list_id: String,
    pub contact_id: String,
    pub status: MembershipStatus,
    /// When the contact joined (or re-joined) the list.
    pub since: String,
}

impl From<Membership> for MembershipView {
    fn from(m: Membership) -> Self {
        Self {
            list_id: m.list_id.to_string(),
            contact_id: m.contact_id.to_string(),
            status: m.status,
            since: millis_to_rfc3339(m.since),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub contact: ContactView,
    pub status: MembershipStatus,
    pub since: String,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        Self {
            contact: m.contact.into(),
            status: m.status,
            since: millis_to_rfc3339(m.since),
        }
    }
}

macro_rules! page_type {
    ($name:ident, $item:ty) => {
        /// One page of results; pass `next_cursor` as `cursor` for the next.
        #[derive(Serialize, ToSchema)]
        pub struct $name {
            pub data: Vec<$item>,
            pub next_cursor: Option<String>,
        }

        impl<R: Into<$item>> From<crate::domain::Page<R>> for $name {
            fn from(p: crate::domain::Page<R>) -> Self {
                Self {
                    data: p.items.into_iter().map(Into::into).collect(),
                    next_cursor: p.next.map(|c| c.encode()),
                }
            }
        }
    };
}

page_type!(ListPage, ListView);
page_type!(ContactPage, ContactView);
page_type!(MemberPage, MemberView);
page_type!(FlowPage, FlowView);

#[derive(Serialize, ToSchema)]
pub struct FlowView {
    #[schema(example = "fl_01j9zq3k0f8x5m2v7c4b6n1d0e")]
    pub id: String,
    pub name: String,
    pub status: FlowStatus,
    /// Increases on every save; runs keep the version they started on.
    pub version: i64,
    /// The flow document as saved.
    #[schema(value_type = crate::domain::flow::FlowDoc)]
    pub document: std::sync::Arc<crate::domain::flow::FlowDoc>,
    /// Path of the flow's inbound URL (`POST` here with an API key), once the
    /// flow has been activated with an `inbound` trigger.
    pub inbound_url: Option<String>,
    /// The `whsec_…` secret that signs calls to the inbound URL, when the
    /// trigger asks for signatures. Present only in the answer of the call
    /// that generated it (the save that first asked for signatures,
    /// activation, token rotation): store it then; it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_secret: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<FlowRecord> for FlowView {
    fn from(f: FlowRecord) -> Self {
        let inbound = f.is_inbound();
        Self {
            id: f.id.to_string(),
            name: f.name,
            status: f.status,
            version: f.version,
            document: f.document,
            // Only while the trigger is inbound: a flow saved with another
            // trigger keeps its token (for a switch back) but has no URL.
            inbound_url: f
                .inbound_token
                .filter(|_| inbound)
                .map(|t| format!("/hooks/{t}")),
            inbound_secret: f
                .inbound_secret
                .filter(|_| f.inbound_secret_new)
                .map(|s| s.as_str().to_owned()),
            created_at: millis_to_rfc3339(f.created_at),
            updated_at: millis_to_rfc3339(f.updated_at),
        }
    }
}

/// Cursor pagination parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

impl PageQuery {
    pub fn to_request(&self) -> Result<crate::domain::PageRequest, super::error::ApiError> {
        let after = self
            .cursor
            .as_deref()
            .map(crate::domain::Cursor::decode)
            .transpose()
            .map_err(|m| super::error::ApiError::bad_request(ErrorCode::InvalidCursor, m))?;
        crate::domain::PageRequest::new(after, self.limit)
            .map_err(|m| super::error::ApiError::bad_request(ErrorCode::InvalidLimit, m))
    }
}

/// One contact's walk through one version of a flow.
#[derive(Serialize, ToSchema)]
pub struct RunView {
    #[schema(example = "run_01j9zq3k0f8x5m2v7c4b6n1d0e")]
    pub id: String,
    pub flow_id: String,
    /// The flow version the run follows (edits do not move it).
    pub flow_version: i64,
    pub contact_id: String,
    pub status: crate::store::RunStatus,
    /// The step the run is at; for an ended run, the step it ended on.
    pub step: Option<String>,
    /// Why an ended run ended: `completed`, `goal`, `exit_step`,
    /// `exit_condition`, `failed` or `cancelled`.
    pub end_reason: Option<String>,
    /// The data the run was started with (the inbound body, the event's
    /// properties), plus properties of events that resumed it.
    #[schema(value_type = Object)]
    pub event_data: Value,
    /// When the run is next due (a waiting run's timer or event timeout).
    pub due_at: Option<String>,
    /// The event a waiting run waits for.
    pub waiting_for_event: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl From<crate::store::RunRecord> for RunView {
    fn from(r: crate::store::RunRecord) -> Self {
        Self {
            id: r.id.to_string(),
            flow_id: r.flow_id.to_string(),
            flow_version: r.flow_version,
            contact_id: r.contact_id.to_string(),
            status: r.status,
            step: r.step,
            end_reason: r.end_reason.map(|e| e.as_str().to_owned()),
            event_data: r.event_data,
            due_at: r.due_at.map(millis_to_rfc3339),
            waiting_for_event: if r.status == crate::store::RunStatus::Waiting {
                r.wait_event
            } else {
                None
            },
            created_at: millis_to_rfc3339(r.created_at),
            updated_at: millis_to_rfc3339(r.updated_at),
            finished_at: r.finished_at.map(millis_to_rfc3339),
        }
    }
}

/// One step execution (FL-6).
#[derive(Serialize, ToSchema)]
pub struct StepView {
    pub step: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    /// The step's settings.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `next`, `yes`, `no`, `waiting`, `resumed`, `passed`, `event`,
    /// `timeout`, `goal`, `exit_step`, `exit_condition` or `failed`.
    pub outcome: String,
    /// Facts of the execution (the time waited for, the goal's name, the
    /// event that arrived…); `null` when the step has none to tell.
    #[schema(value_type = Option<Object>)]
    pub detail: Value,
    pub error: Option<String>,
}

impl From<crate::store::StepRecord> for StepView {
    fn from(s: crate::store::StepRecord) -> Self {
        Self {
            step: s.step,
            kind: s.kind,
            at: millis_to_rfc3339(s.at),
            input: s.input,
            outcome: s.outcome.as_str().to_owned(),
            detail: s.detail,
            error: s.error,
        }
    }
}

/// A run with its step history, oldest first.
#[derive(Serialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    pub history: Vec<StepView>,
}

page_type!(RunPage, RunView);

/// One call to a flow's inbound URL, as its inbound-call log keeps it.
#[derive(Serialize, ToSchema)]
pub struct InboundCallView {
    pub received_at: String,
    /// The HTTP status answered.
    pub status: u16,
    /// What the answer said: `run_started`, `already_entered` or
    /// `run_active` for a 202, else the error's code.
    pub code: String,
    /// The error's message (why the call was refused), or a note on a
    /// replayed answer.
    pub message: Option<String>,
    pub run_id: Option<String>,
    pub contact_id: Option<String>,
    /// The caller's address (the TCP peer).
    pub caller_ip: Option<String>,
    /// The body as received (bytes that are not UTF-8 shown as U+FFFD), cut
    /// at 64 KiB; null when the caller proved nothing (no valid key or
    /// signature: such refusals are logged a few times a second per flow at
    /// most) or the call was refused before its body was read (a rate
    /// limit, a body too large).
    pub body: Option<String>,
    /// The body's whole size in bytes.
    pub body_bytes: i64,
    /// Whether `body` was cut.
    pub body_truncated: bool,
}

impl From<crate::store::InboundCallRecord> for InboundCallView {
    fn from(r: crate::store::InboundCallRecord) -> Self {
        let body_truncated = r
            .body
            .as_ref()
            .is_some_and(|b| (b.len() as i64) < r.body_size);
        Self {
            received_at: millis_to_rfc3339(r.received_at),
            status: r.status,
            code: r.code,
            message: r.message,
            run_id: r.run_id,
            contact_id: r.contact_id,
            caller_ip: r.caller_ip,
            body: r.body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            body_bytes: r.body_size,
            body_truncated,
        }
    }
}

/// A flow's most recent inbound calls, newest first.
#[derive(Serialize, ToSchema)]
pub struct InboundCallList {
    pub data: Vec<InboundCallView>,
}

/// How many inbound calls to list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InboundCallsQuery {
    /// At most this many (default and maximum: the `inbound_log_per_flow`
    /// setting, 100 unless changed).
    #[param(minimum = 1)]
    pub limit: Option<u32>,
}
