//! Checking a flow document against its workspace and saving it.

use std::collections::HashMap;

use serde_json::Value;

use crate::domain::flow::{Catalog, FlowDoc, FlowError, StepKind, Trigger, validate};
use crate::domain::{FieldDef, ListId, WebhookId, WorkspaceId};
use crate::outbound::config::{self, WebhookConfig, WebhookSpec};
use crate::outbound::guard::TargetPolicy;
use crate::store::{FlowRecord, Store, StoreError};

/// Why a document was not saved.
#[derive(Debug)]
pub enum SaveError {
    /// The document breaks these rules (FL-7).
    Invalid(Vec<FlowError>),
    /// Text at this JSON path holds a NUL character, which PostgreSQL cannot
    /// store (SQLite would): refused for both, from the API and the CLI.
    Nul(String),
    Store(StoreError),
}

impl From<StoreError> for SaveError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The lists a document names, loaded once for validation, and (for flows
/// whose trigger names no list) every field of the workspace.
struct Lists(HashMap<ListId, Vec<FieldDef>>, Vec<FieldDef>);

impl Catalog for Lists {
    fn list_fields(&self, list: &ListId) -> Option<Vec<FieldDef>> {
        self.0.get(list).cloned()
    }

    fn workspace_fields(&self) -> Vec<FieldDef> {
        self.1.clone()
    }
}

/// Every field of every list of the workspace.
async fn all_fields(store: &dyn Store, ws: &WorkspaceId) -> Result<Vec<FieldDef>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_lists(
                ws,
                &crate::domain::PageRequest::new(after, Some(500)).map_err(StoreError::Internal)?,
            )
            .await?;
        out.extend(page.items.into_iter().flat_map(|l| l.fields));
        match page.next {
            Some(c) => after = Some(c),
            None => return Ok(out),
        }
    }
}

/// `start_flow` steps must name a flow of the workspace that other flows
/// may start (trigger `flow`); `send_webhook` steps a webhook of the
/// workspace.
async fn check_targets(
    store: &dyn Store,
    ws: &WorkspaceId,
    doc: &FlowDoc,
) -> Result<Vec<FlowError>, StoreError> {
    let mut errors = Vec::new();
    for s in &doc.steps {
        if let StepKind::SendWebhook {
            webhook_id: Some(webhook_id),
            webhook: None,
            ..
        } = &s.kind
            && let Ok(id) = webhook_id.get()
        {
            match crate::store::outbound::get_webhook(store, ws, id).await {
                Ok(_) => {}
                Err(StoreError::NotFound { .. }) => errors.push(FlowError {
                    step: Some(s.id.clone()),
                    setting: "webhook_id".into(),
                    message: format!("webhook `{webhook_id}` does not exist"),
                }),
                Err(e) => return Err(e),
            }
        }
        let StepKind::StartFlow { flow_id, .. } = &s.kind else {
            continue;
        };
        let Ok(id) = flow_id.get() else {
            continue;
        };
        let problem = match store.get_flow(ws, id).await {
            Ok(f) if matches!(f.document.trigger, Trigger::Flow) => None,
            Ok(f) => Some(format!(
                "flow `{flow_id}` is not started by other flows (its trigger is `{}`, not `flow`)",
                f.document.trigger_type()
            )),
            Err(StoreError::NotFound { .. }) => Some(format!("flow `{flow_id}` does not exist")),
            Err(e) => return Err(e),
        };
        if let Some(message) = problem {
            errors.push(FlowError {
                step: Some(s.id.clone()),
                setting: "flow_id".into(),
                message,
            });
        }
    }
    Ok(errors)
}

/// The lists the document names (those that are ids at all).
fn named_lists(doc: &FlowDoc) -> Vec<&ListId> {
    let mut ids: Vec<&crate::domain::flow::Setting<ListId>> = Vec::new();
    if let Trigger::Inbound { list_id, .. } | Trigger::ListAdded { list_id } = &doc.trigger {
        ids.push(list_id);
    }
    for s in &doc.steps {
        match &s.kind {
            StepKind::AddToList { list_id, .. } | StepKind::RemoveFromList { list_id, .. } => {
                ids.push(list_id)
            }
            StepKind::MoveToList {
                from_list_id,
                to_list_id,
                ..
            } => {
                ids.push(from_list_id);
                ids.push(to_list_id);
            }
            _ => {}
        }
    }
    ids.into_iter().filter_map(|l| l.get().ok()).collect()
}

/// A step's inline webhook, checked, to keep before the flow is saved.
struct InlineHook {
    step: usize,
    /// The inline webhook a previous save made for the step.
    existing: Option<WebhookId>,
    /// The configuration with its secrets (unmasked from `existing`).
    spec: Value,
    config: WebhookConfig,
    /// `existing`'s stored configuration: the same as `spec`, no write.
    stored: Option<Value>,
}

/// The flow a saved document replaces: `check` reads its current document
/// (only when a step's inline webhook has no `webhook_id`, so a flow file
/// kept in git keeps the webhooks an earlier apply made).
#[derive(Clone, Copy)]
pub enum Replaces<'a> {
    Nothing,
    Id(&'a crate::domain::FlowId),
    Name(&'a str),
}

impl Replaces<'_> {
    async fn document(
        self,
        store: &dyn Store,
        ws: &WorkspaceId,
    ) -> Result<Option<std::sync::Arc<FlowDoc>>, StoreError> {
        let found = match self {
            Replaces::Nothing => return Ok(None),
            Replaces::Id(id) => store.get_flow(ws, id).await,
            Replaces::Name(name) => store.flow_by_name(ws, name).await,
        };
        match found {
            Ok(f) => Ok(Some(f.document)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A document that passed [`check`]; [`Checked::keep_inline`] stores its
/// steps' inline webhooks and gives the document to save.
pub struct Checked {
    doc: FlowDoc,
    /// `doc` as JSON, the stored form when it has no inline webhook.
    value: Value,
    inline: Vec<InlineHook>,
    /// The flow `doc` replaces by id, which must exist before any inline
    /// webhook is written for it, and whether it did when `check` read it.
    replaces_id: Option<(crate::domain::FlowId, Option<bool>)>,
}

/// The name an inline webhook gets when its configuration has none: the
/// step id's letters and digits (webhook names allow nothing else).
fn inline_name(step: &str) -> String {
    let mut name: String = "step"
        .chars()
        .chain(step.chars().filter(char::is_ascii_alphanumeric))
        .collect();
    name.truncate(100);
    name
}

/// The inline webhook that step `step` of `previous` has.
fn previous_inline<'a>(previous: Option<&'a FlowDoc>, step: &str) -> Option<&'a WebhookId> {
    previous?.steps.iter().find_map(|s| match &s.kind {
        StepKind::SendWebhook {
            webhook_id: Some(id),
            webhook: Some(_),
            ..
        } if s.id == step => id.get().ok(),
        _ => None,
    })
}

/// Checks each inline `webhook` as `POST /v1/webhooks` would (problems
/// point at `webhook.FIELD` of the step), with the secrets of the inline
/// webhook a previous save made put back where the document shows masks.
async fn check_inline(
    store: &dyn Store,
    ws: &WorkspaceId,
    doc: &FlowDoc,
    policy: &TargetPolicy,
    replaces: Replaces<'_>,
    previous: &mut Option<Option<std::sync::Arc<FlowDoc>>>,
) -> Result<(Vec<InlineHook>, Vec<FlowError>), StoreError> {
    let mut hooks = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in doc.steps.iter().enumerate() {
        let StepKind::SendWebhook {
            webhook_id,
            webhook: Some(inline),
            ..
        } = &s.kind
        else {
            continue;
        };
        let mut err = |setting: String, message: String| {
            errors.push(FlowError {
                step: Some(s.id.clone()),
                setting,
                message,
            })
        };
        let mut spec = Value::Object(inline.clone());
        if spec.get("name").is_none_or(Value::is_null) {
            spec["name"] = inline_name(&s.id).into();
        }
        let (mut existing, mut stored) = (None, None);
        // A document without the id (a flow file kept in git) keeps the
        // inline webhook the flow's current version has for this step.
        if webhook_id.is_none() && previous.is_none() {
            *previous = Some(replaces.document(store, ws).await?);
        }
        let given = webhook_id
            .as_ref()
            .and_then(|w| w.get().ok())
            .or_else(|| previous_inline(previous.as_ref().and_then(|p| p.as_deref()), &s.id));
        if let Some(id) = given.cloned() {
            match crate::store::outbound::get_webhook(store, ws, &id).await {
                Ok(w) if w.inline => {
                    config::unmask(&mut spec, &w.spec);
                    existing = Some(id);
                    stored = Some(w.spec);
                }
                Ok(_) => {
                    err(
                        "webhook_id".into(),
                        format!(
                            "`{id}` is a webhook of /v1/webhooks: name it with `webhook_id` alone, or give an inline `webhook` without `webhook_id`"
                        ),
                    );
                    continue;
                }
                // Deleted since: the save makes a new one.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(field) = config::masked_field(&spec) {
            err(
                format!("webhook.{field}"),
                format!(
                    "is masked (`{}`) and there is no stored value to keep: give the value",
                    config::MASK
                ),
            );
            continue;
        }
        let parsed: WebhookSpec = match serde_json::from_value(spec.clone()) {
            Ok(p) => p,
            Err(e) => {
                err("webhook".into(), e.to_string());
                continue;
            }
        };
        match parsed.check(policy) {
            Ok(config) => hooks.push(InlineHook {
                step: i,
                existing,
                spec,
                config,
                stored,
            }),
            Err(problems) => {
                for p in problems {
                    let at = if p.field.is_empty() {
                        "webhook".to_owned()
                    } else {
                        format!("webhook.{}", p.field)
                    };
                    err(at, p.message);
                }
            }
        }
    }
    Ok((hooks, errors))
}

impl Checked {
    /// Creates or updates the inline webhook of each step that has one
    /// (`verification`: whether new ones start under the verification
    /// throttle), and gives the document to save: those steps name their
    /// webhook in `webhook_id` and show its configuration masked.
    ///
    /// Webhooks are kept before the flow is saved: a save that then fails
    /// leaves at most an unused inline webhook, never a step without one.
    pub async fn keep_inline(
        self,
        store: &dyn Store,
        ws: &WorkspaceId,
        verification: bool,
        now: crate::domain::Millis,
    ) -> Result<(FlowDoc, Value), SaveError> {
        use crate::store::outbound as out;
        let Checked {
            mut doc,
            value,
            inline,
            replaces_id,
        } = self;
        if inline.is_empty() {
            return Ok((doc, value));
        }
        // A save that will fail for a missing flow writes no webhook.
        if let Some((id, known)) = replaces_id {
            let exists = match known {
                Some(k) => k,
                None => match store.get_flow(ws, &id).await {
                    Ok(_) => true,
                    Err(StoreError::NotFound { .. }) => false,
                    Err(e) => return Err(e.into()),
                },
            };
            if !exists {
                return Err(StoreError::not_found("flow", &id).into());
            }
        }
        for h in inline {
            let id = match &h.existing {
                // Unchanged: nothing to write (a re-applied flow file).
                Some(id) if h.stored.as_ref() == Some(&h.spec) => id.clone(),
                Some(id) => {
                    out::update_webhook(
                        store,
                        ws,
                        id,
                        out::WebhookUpdate {
                            name: &h.config.name,
                            spec: &h.spec,
                            max_concurrency: h.config.max_concurrency,
                            event_types: None,
                        },
                        now,
                    )
                    .await?
                    .id
                }
                None => {
                    out::create_webhook(
                        store,
                        ws,
                        out::NewWebhook {
                            name: &h.config.name,
                            max_concurrency: h.config.max_concurrency,
                            spec: &h.spec,

                            verified: !verification,
                            event_types: None,
                            inline: true,
                        },
                        now,
                    )
                    .await?
                    .id
                }
            };
            if let StepKind::SendWebhook {
                webhook_id,
                webhook,
                ..
            } = &mut doc.steps[h.step].kind
            {
                *webhook_id = Some(id.clone().into());
                *webhook = config::mask(&h.spec).as_object().cloned();
            }
        }
        let value = serde_json::to_value(&doc)
            .map_err(|e| SaveError::Store(StoreError::Internal(e.to_string())))?;
        Ok((doc, value))
    }
}

/// Validates `doc` against the workspace's lists and webhooks (`policy`
/// checks inline webhooks' targets); nothing is written. The inline
/// webhooks of the flow `doc` replaces are kept when `doc` does not name
/// them.
pub async fn check(
    store: &dyn Store,
    ws: &WorkspaceId,
    doc: &FlowDoc,
    policy: &TargetPolicy,
    replaces: Replaces<'_>,
) -> Result<Checked, SaveError> {
    let value = serde_json::to_value(doc)
        .map_err(|e| SaveError::Store(StoreError::Internal(e.to_string())))?;
    if let Some(path) = crate::domain::jsonpath::find_nul(&value) {
        return Err(SaveError::Nul(path));
    }
    let mut lists = HashMap::new();
    for id in named_lists(doc) {
        if lists.contains_key(id) {
            continue;
        }
        match store.get_list(ws, id).await {
            Ok(l) => {
                lists.insert(id.clone(), l.fields);
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let everywhere = if matches!(
        doc.trigger,
        Trigger::Inbound { .. } | Trigger::ListAdded { .. }
    ) {
        Vec::new()
    } else {
        all_fields(store, ws).await?
    };
    let mut errors = validate(doc, &Lists(lists, everywhere));
    errors.extend(check_targets(store, ws, doc).await?);
    // The replaced document: read once, and only if a step needs it.
    let mut previous = None;
    let (inline, problems) = check_inline(store, ws, doc, policy, replaces, &mut previous).await?;
    errors.extend(problems);
    if !errors.is_empty() {
        return Err(SaveError::Invalid(errors));
    }
    let replaces_id = match replaces {
        Replaces::Id(id) => Some((id.clone(), previous.map(|p| p.is_some()))),
        _ => None,
    };
    Ok(Checked {
        doc: doc.clone(),
        value,
        inline,
        replaces_id,
    })
}

/// What `apply` did with a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    /// The stored document is the same: no new version.
    Unchanged,
}

/// Saves an already checked document (`value`, from [`check`]): creates the
/// flow of that name, or saves a new version if the document changed.
pub async fn apply(
    store: &dyn Store,
    ws: &WorkspaceId,
    doc: &FlowDoc,
    value: Value,
) -> Result<(FlowRecord, Applied), StoreError> {
    let name = doc.name.trim();
    match store.flow_by_name(ws, name).await {
        Ok(existing) if *existing.document == *doc => Ok((existing, Applied::Unchanged)),
        Ok(existing) => Ok((
            store.update_flow(ws, &existing.id, name, value).await?,
            Applied::Updated,
        )),
        Err(StoreError::NotFound { .. }) => {
            Ok((store.create_flow(ws, name, value).await?, Applied::Created))
        }
        Err(e) => Err(e),
    }
}

/// A new inbound token: 256 random bits, URL-safe.
pub fn new_token() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Activates a flow; an `inbound` flow gets its URL (and a signing secret,
/// shown only in the record returned, if it asks for signed calls and has
/// none). Shared by `POST /v1/flows/{id}/activate` and `hookflow flows
/// activate`.
pub async fn activate(
    store: &dyn Store,
    ws: &WorkspaceId,
    id: &crate::domain::FlowId,
) -> Result<FlowRecord, StoreError> {
    let flow = store.get_flow(ws, id).await?;
    let token = flow.is_inbound().then(new_token);
    store
        .set_flow_status(ws, id, crate::store::FlowStatus::Active, token)
        .await
}

/// Pauses a flow: no new entries, and its runs wait where they are.
pub async fn pause(
    store: &dyn Store,
    ws: &WorkspaceId,
    id: &crate::domain::FlowId,
) -> Result<FlowRecord, StoreError> {
    store
        .set_flow_status(ws, id, crate::store::FlowStatus::Paused, None)
        .await
}

/// After a save: an active flow saved with an inbound trigger needs its URL
/// now, not at the next activation. Returns the record to show.
pub async fn ensure_inbound_url(
    store: &dyn Store,
    ws: &WorkspaceId,
    saved: FlowRecord,
) -> Result<FlowRecord, StoreError> {
    use crate::store::FlowStatus;
    if saved.status == FlowStatus::Active && saved.inbound_token.is_none() && saved.is_inbound() {
        let mut with_url = store
            .set_flow_status(ws, &saved.id, FlowStatus::Active, Some(new_token()))
            .await?;
        // A secret this save generated is still this answer's to show.
        with_url.inbound_secret_new |= saved.inbound_secret_new;
        return Ok(with_url);
    }
    Ok(saved)
}
