//! The flow document: what a flow is made of, parsed into types, and the
//! checks run when a flow is saved (FL-7).
//!
//! A document is JSON: a trigger, a list of steps whose first one is the entry, `repeat`, and exit conditions.
//! Steps point at each other by id (`next`, `yes`/`no`, `on_event`/
//! `on_timeout`). [`validate`] reports every problem at once, each naming the
//! step id and the setting at fault, so an editor can underline them all.
//!
//! Pure: the lists and fields a flow refers to are looked up through the
//! [`Catalog`] trait, which the store implements.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{FieldDef, FlowId, ListId, WebhookId};

/// A setting of a flow document that parses into a `T` (an id, a
/// duration): read as its text and parsed as the document is deserialised,
/// written back as the same text. A value that does not parse keeps its
/// error, so that [`validate`] reports it beside every other problem of the
/// document, naming its step and setting (a JSON shape error would stop at
/// the first); everything after validation reads [`Setting::get`].
#[derive(Clone, Debug)]
pub struct Setting<T> {
    text: String,
    parsed: Result<T, String>,
}

/// What a [`Setting`] parses into.
pub trait SettingValue: Sized {
    /// The value, or a message naming what `raw` should have been.
    fn parse_setting(raw: &str) -> Result<Self, String>;
}

impl SettingValue for Duration {
    fn parse_setting(raw: &str) -> Result<Self, String> {
        parse_duration(raw)
    }
}

macro_rules! id_setting {
    ($($ty:ident),*) => {$(
        impl SettingValue for super::$ty {
            fn parse_setting(raw: &str) -> Result<Self, String> {
                super::$ty::parse(raw).map_err(|e| e.to_string())
            }
        }
    )*};
}
id_setting!(ListId, FlowId, WebhookId);

impl<T: SettingValue> Setting<T> {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let parsed = T::parse_setting(&text);
        Self { text, parsed }
    }

    /// The parsed value; a document that passed [`validate`] has one.
    pub fn get(&self) -> Result<&T, String> {
        self.parsed.as_ref().map_err(Clone::clone)
    }

    /// The setting as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A value written as its `Display` form (the ids).
impl<T: SettingValue + std::fmt::Display> From<T> for Setting<T> {
    fn from(value: T) -> Self {
        Self {
            text: value.to_string(),
            parsed: Ok(value),
        }
    }
}

impl<T> std::fmt::Display for Setting<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Two settings are equal when they are written alike.
impl<T> PartialEq for Setting<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Serialize for Setting<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, T: SettingValue> Deserialize<'de> for Setting<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// Mapping targets that are the contact's own values rather than list
/// fields: a body path mapped onto one of these sets the contact's email or
/// phone. (List fields may not take these names: see `FieldDef::new`.)
pub const BUILTIN_TARGETS: [&str; 2] = ["email", "phone"];

/// How a contact enters the flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A call to the flow's own inbound URL; the contact is put into `list_id`
    /// and body values at `mapping`'s JSON paths go to the named list fields.
    Inbound {
        #[schema(value_type = String)]
        list_id: Setting<ListId>,
        #[serde(default)]
        mapping: BTreeMap<String, String>,
        /// `standard_webhooks`: calls are authenticated by a Standard Webhooks
        /// signature made with the flow's `whsec_` secret instead of an API
        /// key (a key is then neither needed nor enough). The secret is
        /// generated when the flow is first saved with this setting (and anew
        /// on every token rotation) and shown only in that response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<SignatureScheme>,
        /// Addresses allowed to call the URL: CIDR ranges (`10.0.0.0/8`,
        /// `::1/128`) or single addresses; empty (default) allows any. Checked
        /// against the connection's own peer address, never against
        /// `X-Forwarded-For`, which any caller can write.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        allowed_ips: Vec<String>,
    },
    /// An event of this name (events API).
    Event { name: String },
    /// The contact is added to a list (by API, a flow or an inbound call).
    ListAdded {
        #[schema(value_type = String)]
        list_id: Setting<ListId>,
    },
    /// A contact field changes value (optionally: to this value).
    FieldChanged {
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        /// Any JSON value the field can hold (`"pro"`, `18`, `true`).
        #[schema(value_type = Option<serde_json::Value>)]
        to: Option<Value>,
    },
    /// Another flow's `start_flow` step.
    Flow,
}

/// Parses an `allowed_ips` entry: a CIDR range or a single address (a
/// range of one).
pub fn parse_ip_range(raw: &str) -> Result<IpNet, String> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "`{}` is not an IP range such as `10.0.0.0/8` or `2001:db8::/32`, nor an address",
                raw.chars().take(60).collect::<String>()
            )
        })
}

/// Whether `ip` may call an inbound URL with this `allowed_ips` setting (empty:
/// anyone). An IPv4 peer seen on a dual-stack socket (`::ffff:10.1.2.3`)
/// counts as its IPv4 address. Entries that do not parse (never saved: the
/// setting is validated) allow nothing.
pub fn ip_allowed(allowed: &[String], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    allowed.is_empty()
        || allowed
            .iter()
            .filter_map(|r| parse_ip_range(r).ok())
            .any(|net| net.contains(&ip))
}

/// How calls to an inbound URL prove where they come from, instead of an
/// API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    /// <https://www.standardwebhooks.com>: `webhook-id`, `webhook-timestamp`
    /// and `webhook-signature` (HMAC-SHA256) headers.
    StandardWebhooks,
}

/// One node of the flow graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    pub id: String,
    #[serde(flatten)]
    pub kind: StepKind,
}

/// What a step does, with its settings and where it goes next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepKind {
    /// Waits a duration (`3d`, `2h30m`), until a time, until a local time of
    /// day, or until an event arrives (with a timeout and a branch for each).
    Wait(Wait),
    /// Branches on contact fields, list membership or event data.
    Condition {
        conditions: Vec<Condition>,
        #[serde(default)]
        r#match: Match,
        yes: String,
        no: String,
    },
    AddToList {
        #[schema(value_type = String)]
        list_id: Setting<ListId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    RemoveFromList {
        #[schema(value_type = String)]
        list_id: Setting<ListId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    MoveToList {
        #[schema(value_type = String)]
        from_list_id: Setting<ListId>,
        #[schema(value_type = String)]
        to_list_id: Setting<ListId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    UpdateField {
        field: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Records a conversion; the run ends unless `next` is given.
    Goal {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    StartFlow {
        #[schema(value_type = String)]
        flow_id: Setting<FlowId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Sends the contact and the run's data to a webhook (`/v1/webhooks`):
    /// a delivery is queued in the transaction that moves the run, and the
    /// run goes on at once; the delivery's id is in the step's history.
    SendWebhook {
        /// A webhook of `/v1/webhooks`; beside `webhook`, the one a save
        /// made for this step's inline configuration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        webhook_id: Option<Setting<WebhookId>>,
        /// An inline webhook: the fields of `POST /v1/webhooks` (`name`
        /// optional), kept with their secrets in a webhook marked `inline`
        /// and shown here masked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        webhook: Option<serde_json::Map<String, serde_json::Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
        /// Wait for the delivery's final outcome, then go on at
        /// `on_success` or `on_failure` (instead of `next`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        wait_for_result: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_success: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_failure: Option<String>,
        /// The longest wait for the outcome (a duration, default `3d`); then
        /// `on_failure`, with outcome `timeout`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        timeout: Option<Setting<Duration>>,
        /// A path in the JSON answer → a contact field, set on success.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        response_mapping: std::collections::BTreeMap<String, String>,
    },
    Exit {},
}

/// The forms of `wait`; exactly one of `duration`, `until`, `time_of_day`
/// or `event` is given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub duration: Option<Setting<Duration>>,
    /// An RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// `HH:MM`, in `time_zone` (an IANA name) or else the contact's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_of_day: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// An event name to wait for, with `timeout`, `on_event` and `on_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<Setting<Duration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A wait's form, parsed: what the engine acts on. One parse, shared by
/// the save-time check (which reports its problems by setting) and the
/// engine (which never sees a wait that failed it).
#[derive(Clone, Debug, PartialEq)]
pub enum WaitFor {
    /// `duration`: this long after the step is reached.
    Duration(Duration),
    /// `until`: a fixed time, in ms (passed straight through once past).
    Until(i64),
    /// `time_of_day`: the next such local time, in `zone` (else the
    /// contact's `time_zone` field, else UTC).
    TimeOfDay {
        at: chrono::NaiveTime,
        zone: Option<chrono_tz::Tz>,
    },
    /// `event` (named by the wire setting), with its `timeout`.
    Event { timeout: Duration },
}

impl Wait {
    /// The parsed form, or every problem found: (setting, message).
    pub fn form(&self) -> Result<WaitFor, Vec<(&'static str, String)>> {
        let forms = [
            self.duration.is_some(),
            self.until.is_some(),
            self.time_of_day.is_some(),
            self.event.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() != 1 {
            return Err(vec![(
                "wait",
                "give exactly one of `duration`, `until`, `time_of_day` or `event`".into(),
            )]);
        }
        let mut problems = Vec::new();
        if self.time_zone.is_some() && self.time_of_day.is_none() {
            problems.push((
                "time_zone",
                "`time_zone` goes with `time_of_day` only".into(),
            ));
        }
        let zone = match &self.time_zone {
            None => None,
            Some(tz) => match tz.parse::<chrono_tz::Tz>() {
                Ok(z) => Some(z),
                Err(_) => {
                    problems.push((
                        "time_zone",
                        format!("`{tz}` is not an IANA time zone such as `Europe/Rome`"),
                    ));
                    None
                }
            },
        };
        let mut form = None;
        if let Some(d) = &self.duration {
            match d.get() {
                Ok(d) => form = Some(WaitFor::Duration(*d)),
                Err(m) => problems.push(("duration", m)),
            }
        }
        if let Some(u) = &self.until {
            match chrono::DateTime::parse_from_rfc3339(u) {
                Ok(t) => form = Some(WaitFor::Until(t.timestamp_millis())),
                Err(_) => problems.push(("until", format!("`{u}` is not an RFC 3339 time"))),
            }
        }
        if let Some(t) = &self.time_of_day {
            match chrono::NaiveTime::parse_from_str(t, "%H:%M") {
                Ok(at) => form = Some(WaitFor::TimeOfDay { at, zone }),
                Err(_) => problems.push((
                    "time_of_day",
                    format!("`{t}` is not a time of day such as `09:30`"),
                )),
            }
        }
        if self.event.is_some() {
            match &self.timeout {
                None => problems.push(("timeout", "waiting for an event needs a `timeout`".into())),
                Some(t) => match t.get() {
                    Ok(timeout) => form = Some(WaitFor::Event { timeout: *timeout }),
                    Err(m) => problems.push(("timeout", m)),
                },
            }
            for (setting, target) in [
                ("on_event", &self.on_event),
                ("on_timeout", &self.on_timeout),
            ] {
                if target.is_none() {
                    problems.push((setting, format!("waiting for an event needs `{setting}`")));
                }
            }
            if self.next.is_some() {
                problems.push((
                    "next",
                    "an event wait goes on with `on_event` or `on_timeout`, not `next`".into(),
                ));
            }
        } else if self.timeout.is_some() || self.on_event.is_some() || self.on_timeout.is_some() {
            problems.push((
                "timeout",
                "`timeout`, `on_event` and `on_timeout` belong to an event wait".into(),
            ));
        }
        match form {
            Some(f) if problems.is_empty() => Ok(f),
            None if problems.is_empty() => Err(vec![("wait", "the wait has no form".into())]),
            _ => Err(problems),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    #[default]
    All,
    Any,
}

/// `field` is `email`, `phone`, `status`, `fields.NAME`, `lists` (the ids
/// of the contact's lists) or `event.PATH` (the run's event data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub field: String,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    Contains,
    NotContains,
    Exists,
    NotExists,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
}

/// A whole flow document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowDoc {
    /// 1 to 200 characters.
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    pub trigger: Trigger,
    /// The first step is the entry.
    pub steps: Vec<Step>,
    #[serde(default)]
    pub repeat: bool,
    #[serde(default)]
    pub exit_conditions: Vec<Condition>,
}

impl FlowDoc {
    /// The trigger's type as stored in `flows.trigger_type`.
    pub fn trigger_type(&self) -> &'static str {
        match &self.trigger {
            Trigger::Inbound { .. } => "inbound",
            Trigger::Event { .. } => "event",
            Trigger::ListAdded { .. } => "list_added",
            Trigger::FieldChanged { .. } => "field_changed",
            Trigger::Flow => "flow",
        }
    }

    /// What the trigger is keyed by (`flows.trigger_key`): the list id,
    /// event name or field name; `""` for the others.
    pub fn trigger_key(&self) -> &str {
        match &self.trigger {
            // The id as lookups spell it (ids parse case-blind and are
            // kept lower case), not as the document wrote it.
            Trigger::Inbound { list_id, .. } | Trigger::ListAdded { list_id } => {
                list_id.get().map_or(list_id.as_str(), |id| id.as_str())
            }
            Trigger::Event { name } => name,
            Trigger::FieldChanged { field, .. } => field,
            Trigger::Flow => "",
        }
    }

    pub fn is_inbound(&self) -> bool {
        matches!(self.trigger, Trigger::Inbound { .. })
    }

    /// Whether inbound calls must be signed (the store then keeps a secret).
    pub fn signs_inbound(&self) -> bool {
        matches!(
            self.trigger,
            Trigger::Inbound {
                signature: Some(SignatureScheme::StandardWebhooks),
                ..
            }
        )
    }

    /// Whether a `field_changed` trigger fires for a change to `new` (any
    /// change when it names no value). False for other triggers.
    pub fn field_trigger_fires(&self, new: Option<&Value>) -> bool {
        match &self.trigger {
            Trigger::FieldChanged {
                to: None | Some(Value::Null),
                ..
            } => true,
            Trigger::FieldChanged { to: Some(want), .. } => {
                new.is_some_and(|v| super::condition::values_equal(v, want))
            }
            _ => false,
        }
    }
}

/// One problem found in a flow document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowError {
    /// The step at fault; `None` for the trigger or the flow as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The setting at fault, e.g. `duration`, `next`, `trigger.list_id`.
    pub setting: String,
    pub message: String,
}

/// What validation needs to know about the workspace.
pub trait Catalog {
    /// The field definitions of a list, or `None` if it does not exist.
    fn list_fields(&self, list: &ListId) -> Option<Vec<FieldDef>>;
    /// Every field defined by any list of the workspace: what a flow whose
    /// trigger names no list (event, field change, another flow) may use.
    fn workspace_fields(&self) -> Vec<FieldDef> {
        Vec::new()
    }
}

/// Longest wait or timeout accepted: beyond this, a flow is a calendar.
pub const MAX_WAIT: Duration = Duration::from_secs(5 * 366 * 24 * 3600);

/// Parses `3d`, `2h30m`, `90s`, `1w2d`: one or more `<number><unit>` with
/// units `w`, `d`, `h`, `m`, `s`, in that order, each at most once.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "`{}` is not a duration such as `3d` or `2h30m`",
            raw.chars().take(40).collect::<String>()
        )
    };
    if raw.is_empty() {
        return Err(err());
    }
    let units = [
        ('w', 7 * 86_400u64),
        ('d', 86_400),
        ('h', 3_600),
        ('m', 60),
        ('s', 1),
    ];
    let mut total: u64 = 0;
    let mut rest = raw;
    let mut last_unit = 0usize;
    let mut seen = false;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        let unit = rest[digits..].chars().next().ok_or_else(err)?;
        let pos = units.iter().position(|(u, _)| *u == unit).ok_or_else(err)?;
        if pos < last_unit || (seen && pos == last_unit) {
            return Err(err());
        }
        last_unit = pos;
        seen = true;
        total = total
            .checked_add(n.checked_mul(units[pos].1).ok_or_else(err)?)
            .ok_or_else(err)?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    if total == 0 {
        return Err(format!(
            "`{}` is zero; a wait must be positive",
            raw.chars().take(40).collect::<String>()
        ));
    }
    let d = Duration::from_secs(total);
    if d > MAX_WAIT {
        return Err(format!("`{raw}` is longer than five years"));
    }
    Ok(d)
}

impl StepKind {
    /// Every step id this step can go to, with the setting that names it.
    pub fn targets(&self) -> Vec<(&'static str, &str)> {
        fn opt<'a>(
            setting: &'static str,
            t: &'a Option<String>,
        ) -> Option<(&'static str, &'a str)> {
            t.as_deref().map(|t| (setting, t))
        }
        match self {
            StepKind::Wait(w) => [
                opt("next", &w.next),
                opt("on_event", &w.on_event),
                opt("on_timeout", &w.on_timeout),
            ]
            .into_iter()
            .flatten()
            .collect(),
            StepKind::Condition { yes, no, .. } => vec![("yes", yes.as_str()), ("no", no.as_str())],
            StepKind::AddToList { next, .. }
            | StepKind::RemoveFromList { next, .. }
            | StepKind::MoveToList { next, .. }
            | StepKind::UpdateField { next, .. }
            | StepKind::Goal { next, .. }
            | StepKind::StartFlow { next, .. } => opt("next", next).into_iter().collect(),
            StepKind::SendWebhook {
                next,
                on_success,
                on_failure,
                ..
            } => [
                opt("next", next),
                opt("on_success", on_success),
                opt("on_failure", on_failure),
            ]
            .into_iter()
            .flatten()
            .collect(),
            StepKind::Exit {} => vec![],
        }
    }

    fn is_wait(&self) -> bool {
        // A wait `until` a fixed time pauses only the first time round a
        // loop; after that time it passes straight through.
        matches!(self, StepKind::Wait(w) if w.until.is_none())
            || matches!(
                self,
                StepKind::SendWebhook {
                    wait_for_result: true,
                    ..
                }
            )
    }
}

/// Every problem of `doc`, in document order; empty when the flow is valid.
pub fn validate(doc: &FlowDoc, catalog: &dyn Catalog) -> Vec<FlowError> {
    let mut v = Validator {
        errors: Vec::new(),
        catalog,
        known_fields: HashMap::new(),
        trigger_fields: HashSet::new(),
    };
    v.check_flow(doc);
    v.errors
}

struct Validator<'a> {
    errors: Vec<FlowError>,
    catalog: &'a dyn Catalog,
    /// Fields defined by the lists this flow touches (trigger list and list
    /// steps): the fields `update_field` and conditions may name.
    known_fields: HashMap<String, Vec<FieldDef>>,
    /// Fields of the trigger's list: the only targets an inbound mapping may
    /// have, since a new contact is in no other list when the call arrives.
    trigger_fields: HashSet<String>,
}

impl Validator<'_> {
    fn err(&mut self, step: Option<&str>, setting: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FlowError {
            step: step.map(str::to_owned),
            setting: setting.into(),
            message: message.into(),
        });
    }

    /// Checks that `raw` is a list of the workspace; remembers its fields.
    fn list(
        &mut self,
        step: Option<&str>,
        setting: &str,
        raw: &Setting<ListId>,
    ) -> Option<Vec<FieldDef>> {
        let id = match raw.get() {
            Ok(id) => id,
            Err(e) => {
                self.err(step, setting, e);
                return None;
            }
        };
        match self.catalog.list_fields(id) {
            Some(fields) => {
                for f in &fields {
                    self.known_fields
                        .entry(f.name.to_string())
                        .or_default()
                        .push(f.clone());
                }
                Some(fields)
            }
            None => {
                self.err(step, setting, format!("list `{raw}` does not exist"));
                None
            }
        }
    }

    fn check_flow(&mut self, doc: &FlowDoc) {
        if doc.name.trim().is_empty() || doc.name.chars().count() > 200 {
            self.err(None, "name", "a flow name must be 1 to 200 characters");
        }
        self.check_trigger(&doc.trigger);
        if !matches!(
            doc.trigger,
            Trigger::Inbound { .. } | Trigger::ListAdded { .. }
        ) {
            for f in self.catalog.workspace_fields() {
                self.known_fields
                    .entry(f.name.to_string())
                    .or_default()
                    .push(f);
            }
        }
        // Lists first, so fields of every list the flow touches are known
        // before fields are checked.
        for s in &doc.steps {
            match &s.kind {
                StepKind::AddToList { list_id, .. } | StepKind::RemoveFromList { list_id, .. } => {
                    self.list(Some(&s.id), "list_id", list_id);
                }
                StepKind::MoveToList {
                    from_list_id,
                    to_list_id,
                    ..
                } => {
                    self.list(Some(&s.id), "from_list_id", from_list_id);
                    self.list(Some(&s.id), "to_list_id", to_list_id);
                }
                _ => {}
            }
        }
        if let Trigger::Inbound { mapping, .. } = &doc.trigger {
            for builtin in BUILTIN_TARGETS {
                let paths: Vec<&String> = mapping
                    .iter()
                    .filter(|(_, t)| *t == builtin)
                    .map(|(p, _)| p)
                    .collect();
                if paths.len() > 1 {
                    self.err(
                        None,
                        format!("trigger.mapping.{}", paths[1]),
                        format!(
                            "`{}` and `{}` both map onto `{builtin}`; a contact has one {builtin}",
                            paths[0], paths[1]
                        ),
                    );
                }
            }
            for target in mapping.values() {
                if !self.trigger_fields.contains(target)
                    && !BUILTIN_TARGETS.contains(&target.as_str())
                {
                    self.err(
                        None,
                        format!("trigger.mapping.{target}"),
                        format!("the trigger's list defines no field `{target}`"),
                    );
                }
            }
        }
        for (i, c) in doc.exit_conditions.iter().enumerate() {
            self.check_condition(None, &format!("exit_conditions[{i}]"), c);
        }
        self.check_steps(&doc.steps);
    }

    fn check_trigger(&mut self, t: &Trigger) {
        match t {
            Trigger::Inbound {
                list_id,
                mapping,
                allowed_ips,
                ..
            } => {
                for (i, raw) in allowed_ips.iter().enumerate() {
                    if let Err(m) = parse_ip_range(raw) {
                        self.err(None, format!("trigger.allowed_ips[{i}]"), m);
                    }
                }
                if let Some(fields) = self.list(None, "trigger.list_id", list_id) {
                    self.trigger_fields = fields.iter().map(|f| f.name.to_string()).collect();
                }
                for path in mapping.keys() {
                    if let Err(m) = super::jsonpath::JsonPath::parse(path) {
                        self.err(None, format!("trigger.mapping.{path}"), m);
                    }
                }
            }
            Trigger::ListAdded { list_id } => {
                self.list(None, "trigger.list_id", list_id);
            }
            Trigger::Event { name } if name.trim().is_empty() => {
                self.err(
                    None,
                    "trigger.name",
                    "an event trigger needs the event's name",
                );
            }
            Trigger::FieldChanged { field, .. } if field.trim().is_empty() => {
                self.err(
                    None,
                    "trigger.field",
                    "a field trigger needs the field's name",
                );
            }
            _ => {}
        }
    }

    fn check_steps(&mut self, steps: &[Step]) {
        if steps.is_empty() {
            self.err(None, "steps", "a flow needs at least one step");
            return;
        }
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            let valid_id = !s.id.is_empty()
                && s.id.len() <= 64
                && s.id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_id {
                self.err(
                    Some(&s.id),
                    "id",
                    "a step id is 1 to 64 letters, digits, `_` or `-`",
                );
            }
            if index.insert(s.id.as_str(), i).is_some() {
                self.err(
                    Some(&s.id),
                    "id",
                    format!("step id `{}` is used twice", s.id),
                );
            }
        }
        for s in steps {
            for (setting, target) in s.kind.targets() {
                if !index.contains_key(target) {
                    self.err(
                        Some(&s.id),
                        setting,
                        format!("no step has the id `{target}`"),
                    );
                }
            }
            self.check_step(s);
        }
        self.check_graph(steps, &index);
    }

    fn check_step(&mut self, s: &Step) {
        let id = Some(s.id.as_str());
        match &s.kind {
            StepKind::Wait(w) => self.check_wait(&s.id, w),
            StepKind::Condition { conditions, .. } => {
                if conditions.is_empty() {
                    self.err(
                        id,
                        "conditions",
                        "a condition step needs at least one condition",
                    );
                }
                for (i, c) in conditions.iter().enumerate() {
                    self.check_condition(id, &format!("conditions[{i}]"), c);
                }
            }
            StepKind::UpdateField { field, value, .. } => {
                if !self.known_fields.contains_key(field.as_str()) {
                    self.err(
                        id,
                        "field",
                        format!("the flow's lists define no field `{field}`"),
                    );
                } else if value.is_object() || value.is_array() {
                    self.err(
                        id,
                        "value",
                        "a field value is a string, number, boolean or null",
                    );
                } else {
                    // The value must fit the field as every list defines it.
                    let defs = self
                        .known_fields
                        .get(field.as_str())
                        .cloned()
                        .unwrap_or_default();
                    if let Some(m) = defs.iter().find_map(|d| d.coerce(value).err()) {
                        self.err(id, "value", m);
                    }
                }
            }
            StepKind::Goal { name, .. } if name.trim().is_empty() => {
                self.err(id, "name", "a goal needs a name");
            }
            StepKind::StartFlow { flow_id, .. } if flow_id.get().is_err() => {
                self.err(id, "flow_id", flow_id.get().unwrap_err());
            }
            StepKind::SendWebhook {
                webhook_id,
                webhook,
                next,
                wait_for_result,
                on_success,
                on_failure,
                timeout,
                response_mapping,
            } => {
                match (webhook_id, webhook) {
                    (Some(w), _) => {
                        if let Err(e) = w.get() {
                            self.err(id, "webhook_id", e);
                        }
                    }
                    (None, None) => self.err(
                        id,
                        "webhook_id",
                        "a send_webhook step needs `webhook_id` or an inline `webhook`",
                    ),
                    (None, Some(_)) => {}
                }
                if *wait_for_result {
                    if next.is_some() {
                        self.err(
                            id,
                            "next",
                            "a step that waits for the result goes on at `on_success` or `on_failure`, not `next`",
                        );
                    }
                    if on_success.is_none() || on_failure.is_none() {
                        self.err(
                            id,
                            "wait_for_result",
                            "waiting for the result needs both `on_success` and `on_failure`",
                        );
                    }
                    if let Some(t) = timeout
                        && let Err(e) = t.get()
                    {
                        self.err(id, "timeout", e);
                    }
                    for (path, field) in response_mapping {
                        if let Err(e) = crate::domain::jsonpath::JsonPath::parse(path) {
                            self.err(id, "response_mapping", e);
                        }
                        if !self.known_fields.contains_key(field.as_str()) {
                            self.err(
                                id,
                                "response_mapping",
                                format!("the flow's lists define no field `{field}`"),
                            );
                        }
                    }
                } else if on_success.is_some()
                    || on_failure.is_some()
                    || timeout.is_some()
                    || !response_mapping.is_empty()
                {
                    self.err(
                        id,
                        "wait_for_result",
                        "`on_success`, `on_failure`, `timeout` and `response_mapping` need `wait_for_result: true`",
                    );
                }
            }
            _ => {}
        }
    }

    fn check_wait(&mut self, id: &str, w: &Wait) {
        if let Err(problems) = w.form() {
            for (setting, message) in problems {
                self.err(Some(id), setting, message);
            }
        }
    }

    fn check_condition(&mut self, step: Option<&str>, setting: &str, c: &Condition) {
        let field_ok = match c.field.split_once('.') {
            None => matches!(c.field.as_str(), "email" | "phone" | "status" | "lists"),
            Some(("fields", name)) => {
                if !self.known_fields.contains_key(name) {
                    self.err(
                        step,
                        format!("{setting}.field"),
                        format!("the flow's lists define no field `{name}`"),
                    );
                }
                true
            }
            Some(("event", path)) => !path.is_empty(),
            _ => false,
        };
        if !field_ok {
            self.err(step, format!("{setting}.field"), format!(
                "`{}` is not `email`, `phone`, `status`, `lists`, `fields.NAME` or `event.PATH`",
                c.field
            ));
        }
        let needs_value = !matches!(c.op, Op::Exists | Op::NotExists);
        match (&c.value, needs_value) {
            (None, true) => self.err(
                step,
                format!("{setting}.value"),
                "this operator compares with a `value`",
            ),
            (Some(_), false) => self.err(
                step,
                format!("{setting}.value"),
                "`exists` and `not_exists` take no `value`",
            ),
            (Some(v), true) if c.op == Op::In && !v.is_array() => self.err(
                step,
                format!("{setting}.value"),
                "`in` compares with an array of values",
            ),
            (Some(v), true)
                if matches!(c.op, Op::Gt | Op::Gte | Op::Lt | Op::Lte)
                    && !(v.is_number() || v.is_string()) =>
            {
                self.err(
                    step,
                    format!("{setting}.value"),
                    "ordering operators compare with a number or a date",
                )
            }
            _ => {}
        }
    }

    /// Unreachable steps, and cycles that contain no wait (a run would spin).
    fn check_graph(&mut self, steps: &[Step], index: &HashMap<&str, usize>) {
        let edges: Vec<Vec<usize>> = steps
            .iter()
            .map(|s| {
                s.kind
                    .targets()
                    .iter()
                    .filter_map(|(_, t)| index.get(t).copied())
                    .collect()
            })
            .collect();
        let mut reached = vec![false; steps.len()];
        let mut stack = vec![0usize];
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut reached[n], true) {
                stack.extend(edges[n].iter().copied());
            }
        }
        for (i, s) in steps.iter().enumerate() {
            if !reached[i] {
                self.err(
                    Some(&s.id),
                    "id",
                    format!("step `{}` cannot be reached from the first step", s.id),
                );
            }
        }
        // A cycle without a wait is a cycle in the graph of non-wait steps.
        // Iterative three-colour DFS; report the step that closes the cycle.
        let is_wait: Vec<bool> = steps.iter().map(|s| s.kind.is_wait()).collect();
        let mut colour = vec![0u8; steps.len()]; // 0 new, 1 on stack, 2 done
        let mut reported = HashSet::new();
        for root in 0..steps.len() {
            if colour[root] != 0 || is_wait[root] {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            colour[root] = 1;
            while let Some((n, next_edge)) = stack.pop() {
                if let Some(&m) = edges[n].get(next_edge) {
                    stack.push((n, next_edge + 1));
                    if is_wait[m] {
                        continue;
                    }
                    match colour[m] {
                        0 => {
                            colour[m] = 1;
                            stack.push((m, 0));
                        }
                        1 if reported.insert(m) => {
                            self.err(Some(&steps[n].id), "next", format!(
                                "step `{}` loops back to `{}` with no wait in between; a run would never pause",
                                steps[n].id, steps[m].id
                            ));
                        }
                        _ => {}
                    }
                } else {
                    colour[n] = 2;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
