//! The store: the only module with SQL.
//!
//! [`Store`] is the contract; [`sqlite`] (embedded default) and [`postgres`]
//! (several processes sharing one database) implement it, and the same
//! contract tests run against both. Every method that touches tenant data
//! takes the [`WorkspaceId`] and puts it in the `WHERE` clause: a row of
//! another workspace is indistinguishable from a row that does not exist.
//!
//! Rules that decide *what* to write (field coercion, upsert merging) live in
//! [`plan`], shared by both implementations, so the two stores differ only in
//! *how* they read and write.

pub mod contacts;
pub mod entry;
pub mod flows;
pub mod inbound_log;
pub mod key_cache;
pub mod lists;
pub mod logic;
pub mod outbound;
pub mod plan;
pub mod postgres;
pub mod queue;
pub mod run;
pub mod sql;
pub mod sqlite;
pub mod workspaces;

use std::sync::Arc;

use async_trait::async_trait;

pub use run::{
    AdvanceOutcome, ClaimLimit, ClaimedRun, ContactChange, Effect, EntryPlan, EventIn,
    EventRecorded, RunAdvance, RunEnd, RunFilter, RunRecord, RunStatus, StepRecord,
};
use serde_json::{Map, Value};

use crate::domain::signature::SigningSecret;
use crate::domain::{
    ApiKeyId, ContactId, ContactStatus, Email, FieldDef, FlowId, ListId, MembershipStatus, Millis,
    Page, PageRequest, Phone, RunId, Scope, WorkspaceId,
};

/// What can go wrong in the store, in terms the API can answer with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist in this workspace (or at all).
    #[error("{kind} `{id}` does not exist")]
    NotFound { kind: &'static str, id: String },
    /// A uniqueness rule would be broken.
    #[error("{message}")]
    Conflict {
        code: crate::domain::ErrorCode,
        message: String,
    },
    /// The input breaks a rule that needs the stored state to check (a field
    /// value that does not fit its list's definition).
    #[error("{message}")]
    Invalid {
        code: crate::domain::ErrorCode,
        field: String,
        message: String,
    },
    /// The database aborted the transaction to resolve contention (a
    /// deadlock or serialization failure); retrying the request is safe.
    #[error("the database is busy: {0}")]
    Busy(String),
    /// The database failed or is unreachable; details are logged, not shown.
    #[error("store failure: {0}")]
    Internal(String),
    /// Opened with `create: false`, and there is no hookflow database there
    /// (no file, or no hookflow tables); says what was found.
    #[error("{0}")]
    NoDatabase(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl From<crate::domain::UnknownValue> for StoreError {
    fn from(e: crate::domain::UnknownValue) -> Self {
        StoreError::Internal(e.to_string())
    }
}

impl StoreError {
    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub created_at: Millis,
}

/// A new key's stored part: everything but the secret.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub name: Option<String>,
    pub scope: Scope,
    pub prefix: String,
    pub hash: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub workspace_id: WorkspaceId,
    pub workspace_name: String,
    pub name: Option<String>,
    pub scope: Scope,
    pub prefix: String,
    pub hash: Vec<u8>,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListRecord {
    pub id: ListId,
    pub name: String,
    pub fields: Vec<FieldDef>,
    pub member_count: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ContactRecord {
    pub id: ContactId,
    pub email: Email,
    pub phone: Option<Phone>,
    pub status: ContactStatus,
    pub fields: Map<String, Value>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub list_id: ListId,
    pub contact_id: ContactId,
    pub status: MembershipStatus,
    pub since: Millis,
}

/// A list member as listed from the list's side.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub contact: ContactRecord,
    pub status: MembershipStatus,
    pub since: Millis,
}

/// Create-or-update of a contact keyed by email. `None` means "leave as is".
#[derive(Clone, Debug, Default)]
pub struct ContactUpsert {
    pub email: Option<Email>,
    /// `Some(None)` clears the phone.
    pub phone: Option<Option<Phone>>,
    pub status: Option<ContactStatus>,
    /// Values to merge; `null` removes one.
    pub fields: Map<String, Value>,
    /// Lists to add the contact to (in the same transaction).
    pub lists: Vec<ListId>,
}

/// Partial update of a contact found by id.
#[derive(Clone, Debug, Default)]
pub struct ContactPatch {
    pub email: Option<Email>,
    pub phone: Option<Option<Phone>>,
    pub status: Option<ContactStatus>,
    pub fields: Map<String, Value>,
}

#[derive(Clone, Debug)]
pub struct Upserted {
    pub contact: ContactRecord,
    pub created: bool,
    /// False when the upsert repeated what was stored: nothing was written
    /// and `updated_at` kept its value (CRM syncs resend unchanged contacts).
    pub changed: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ContactFilter {
    pub list_id: Option<ListId>,
    pub status: Option<ContactStatus>,
}

/// Whether a flow takes new entries.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FlowStatus {
    Draft,
    Active,
    Paused,
}

crate::stored_enum!(FlowStatus, "flow status", {
    Draft => "draft",
    Active => "active",
    Paused => "paused",
});

/// A flow with its current document. Every save adds a version; older
/// versions stay for the runs that started on them.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    pub id: FlowId,
    pub name: String,
    pub status: FlowStatus,
    pub version: i64,
    /// The validated flow document, parsed once when read.
    pub document: std::sync::Arc<crate::domain::flow::FlowDoc>,
    /// The secret of the flow's inbound URL, once it has been activated with
    /// an inbound trigger.
    pub inbound_token: Option<String>,
    /// The key inbound calls are signed with, once the document has asked
    /// for signed calls (`trigger.signature`); kept if it stops asking.
    pub inbound_secret: Option<SigningSecret>,
    /// True only in the record returned by the write that generated
    /// `inbound_secret`: that answer is the one place the secret is shown.
    pub inbound_secret_new: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl FlowRecord {
    /// Whether the current document's trigger is an inbound call (the flow
    /// then has, or gets on activation, an inbound URL).
    pub fn is_inbound(&self) -> bool {
        self.document.is_inbound()
    }
}

/// A contact entering a flow (an inbound call today; events later), to be
/// recorded atomically: contact, membership, run and idempotency answer.
#[derive(Clone, Debug)]
pub struct EntryRequest {
    pub flow_id: FlowId,
    /// The flow version the run will follow.
    pub flow_version: i64,
    pub first_step: String,
    pub repeat: bool,
    /// The version has exit conditions (contact changes must wake the run).
    pub has_exits: bool,
    /// The contact to upsert; `lists` holds the trigger's list.
    pub contact: ContactUpsert,
    /// Kept on the run for conditions and templates.
    pub event_data: Value,
    /// The inbound token the call came through: the entry is refused (as an
    /// unknown URL) if the flow's token is no longer this one.
    pub inbound_token: Option<String>,
    /// `Idempotency-Key` and a hash of the request body; scoped to the flow.
    pub idempotency: Option<(String, Vec<u8>)>,
}

/// What an entry did; stored for idempotent replays.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EntryResult {
    pub contact_id: String,
    pub run_id: Option<String>,
    /// Why no run started: `already_entered` (repeat is off) or `run_active`.
    pub not_started: Option<String>,
}

/// One call to a flow's inbound URL, as its inbound-call log keeps it (see
/// `flows::inbound_log`). Never holds a header: no key or signature.
#[derive(Clone, Debug, PartialEq)]
pub struct InboundCallRecord {
    pub workspace_id: WorkspaceId,
    pub flow_id: FlowId,
    pub received_at: Millis,
    /// The HTTP status answered.
    pub status: u16,
    /// What the answer said: `run_started`, `already_entered`, `run_active`,
    /// or the error's code.
    pub code: String,
    /// The error's message, for a refused call.
    pub message: Option<String>,
    pub run_id: Option<String>,
    pub contact_id: Option<String>,
    /// The TCP peer's address.
    pub caller_ip: Option<String>,
    /// The body as received, cut at `flows::inbound_log::MAX_BODY`; `None`
    /// when the call was refused before its body was read.
    pub body: Option<bytes::Bytes>,
    /// The body's whole size in bytes (larger than `body` when it was cut).
    pub body_size: i64,
}

#[derive(Clone, Debug)]
pub struct EntryOutcome {
    pub result: EntryResult,
    /// True when this is the stored answer to an earlier call with the key.
    pub replayed: bool,
}

/// The store contract. Implementations must make every write atomic (all of
/// it or none of it) and durable before returning `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which implementation this is, for logs and `/readyz`.
    fn kind(&self) -> &'static str;
    /// Succeeds when the database answers a trivial query.
    async fn ping(&self) -> Result<()>;
    /// Finishes queued writes and closes connections.
    async fn close(&self);

    /// The store's cache of keys by hash (`api_key_by_hash`).
    fn key_cache(&self) -> &key_cache::KeyCache;
    /// A statement that holds `key` exclusively until the transaction ends,
    /// where the database needs one: PostgreSQL's advisory lock; SQLite
    /// writes on one connection, so nothing.
    fn exclusive(&self, _key: &str) -> Option<sql::Stmt> {
        None
    }

    async fn create_workspace(&self, name: &str) -> Result<Workspace> {
        let ws = workspaces::new_workspace(name, now_millis());
        self.run_sql(vec![workspaces::insert_workspace(&ws)])
            .await?;
        Ok(ws)
    }
    async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        let done = self.read_sql(vec![workspaces::list_workspaces()]).await?;
        workspaces::workspaces(&done[0])
    }
    async fn workspace_by_name(&self, name: &str) -> Result<Workspace> {
        let done = self
            .read_sql(vec![workspaces::workspace_by_name(name)])
            .await?;
        workspaces::workspace(done[0].row("workspace")?)
    }
    /// Creates workspace `name` with `key` only if there is no workspace at
    /// all; `None` if there already was one. Atomic across processes.
    async fn bootstrap(
        &self,
        name: &str,
        key: NewApiKey,
    ) -> Result<Option<(Workspace, ApiKeyRecord)>> {
        let now = now_millis();
        let ws = workspaces::new_workspace(name, now);
        let mut script: Vec<sql::Stmt> = self.exclusive("bootstrap").into_iter().collect();
        let first = script.len();
        // One transaction: the key goes in only beside its new workspace
        // (with a workspace there already, all three find nothing).
        script.extend([
            workspaces::insert_first_workspace(&ws),
            workspaces::insert_key(&ws.id, &key, now),
            workspaces::key_by_id(&key.id),
        ]);
        let done = self.run_sql(script).await?;
        if done[first].changed == 0 {
            return Ok(None);
        }
        let key = workspaces::key(done[first + 2].row("API key")?)?;
        Ok(Some((ws, key)))
    }

    async fn create_api_key(
        &self,
        workspace: &WorkspaceId,
        key: NewApiKey,
    ) -> Result<ApiKeyRecord> {
        let done = self
            .run_sql(vec![
                workspaces::insert_key(workspace, &key, now_millis())
                    .or_not_found("workspace", workspace),
                workspaces::key_by_id(&key.id),
            ])
            .await?;
        workspaces::key(done[1].row("API key")?)
    }
    async fn list_api_keys(&self, workspace: Option<&WorkspaceId>) -> Result<Vec<ApiKeyRecord>> {
        let done = self
            .read_sql(vec![workspaces::list_keys(workspace)])
            .await?;
        workspaces::keys(&done[0])
    }
    async fn revoke_api_key(&self, id: &ApiKeyId) -> Result<ApiKeyRecord> {
        let done = self
            .run_sql(vec![
                workspaces::revoke_key(id, now_millis()),
                workspaces::key_by_id(id),
            ])
            .await;
        self.key_cache().evict(id);
        workspaces::key(done?[1].row("API key")?)
    }
    /// The key whose hash is `hash`, revoked or not.
    async fn api_key_by_hash(&self, hash: &[u8]) -> Result<Option<ApiKeyRecord>> {
        if let Some(rec) = self.key_cache().get(hash) {
            return Ok(Some(rec));
        }
        let ticket = self.key_cache().ticket();
        let done = self.read_sql(vec![workspaces::key_by_hash(hash)]).await?;
        let rec = workspaces::found_key(&done[0])?;
        if let Some(r) = &rec {
            self.key_cache().put(ticket, r);
        }
        Ok(rec)
    }

    async fn create_list(
        &self,
        ws: &WorkspaceId,
        name: &str,
        fields: Vec<FieldDef>,
    ) -> Result<ListRecord> {
        let done = self
            .run_sql(lists::create(ws, name, &fields, now_millis()))
            .await?;
        lists::last(&done)
    }
    async fn get_list(&self, ws: &WorkspaceId, id: &ListId) -> Result<ListRecord> {
        lists::last(&self.read_sql(lists::read(ws, id).into()).await?)
    }
    async fn list_lists(&self, ws: &WorkspaceId, page: &PageRequest) -> Result<Page<ListRecord>> {
        lists::to_page(&self.read_sql(lists::page(ws, page).into()).await?, page)
    }
    async fn rename_list(&self, ws: &WorkspaceId, id: &ListId, name: &str) -> Result<ListRecord> {
        let done = self
            .run_sql(lists::rename(ws, id, name, now_millis()))
            .await?;
        lists::last(&done)
    }
    /// Deletes the list and its memberships; contacts stay.
    async fn delete_list(&self, ws: &WorkspaceId, id: &ListId) -> Result<()> {
        self.run_sql(vec![lists::delete(ws, id)]).await.map(drop)
    }
    async fn add_list_field(
        &self,
        ws: &WorkspaceId,
        id: &ListId,
        field: FieldDef,
    ) -> Result<ListRecord> {
        let done = self
            .run_sql(lists::add_field(ws, id, &field, now_millis()))
            .await?;
        lists::last(&done)
    }
    async fn remove_list_field(
        &self,
        ws: &WorkspaceId,
        id: &ListId,
        name: &str,
    ) -> Result<ListRecord> {
        let done = self
            .run_sql(lists::remove_field(ws, id, name, now_millis()))
            .await?;
        lists::last(&done)
    }

    /// Runs one write whose orchestration is `store::logic`'s in one
    /// transaction, durable before it answers (the methods below are built
    /// on it).
    async fn logic_write(&self, op: logic::Op) -> Result<logic::OpDone>;

    async fn upsert_contact(&self, ws: &WorkspaceId, input: ContactUpsert) -> Result<Upserted> {
        self.logic_write(logic::Op::Upsert(ws.clone(), input))
            .await?
            .take(|d| match d {
                logic::OpDone::Upserted(u) => Some(u),
                _ => None,
            })
    }
    async fn get_contact(&self, ws: &WorkspaceId, id: &ContactId) -> Result<ContactRecord> {
        contacts::one(&self.read_sql(vec![contacts::by_id(ws, id, false)]).await?[0])
    }
    async fn contact_by_email(&self, ws: &WorkspaceId, email: &Email) -> Result<ContactRecord> {
        let stmt = contacts::by_email(ws, email, false).or_not_found("contact", email);
        contacts::one(&self.read_sql(vec![stmt]).await?[0])
    }
    async fn list_contacts(
        &self,
        ws: &WorkspaceId,
        filter: &ContactFilter,
        page: &PageRequest,
    ) -> Result<Page<ContactRecord>> {
        contacts::to_page(
            &self
                .read_sql(vec![contacts::page(ws, filter, page)])
                .await?[0],
            page,
        )
    }
    async fn update_contact(
        &self,
        ws: &WorkspaceId,
        id: &ContactId,
        patch: ContactPatch,
    ) -> Result<ContactRecord> {
        self.logic_write(logic::Op::Patch(ws.clone(), id.clone(), patch))
            .await?
            .take(|d| match d {
                logic::OpDone::Contact(c) => Some(c),
                _ => None,
            })
    }
    /// Deletes the contact and its memberships.
    async fn delete_contact(&self, ws: &WorkspaceId, id: &ContactId) -> Result<()> {
        self.run_sql(vec![contacts::delete(ws, id)]).await.map(drop)
    }

    /// Adds (or re-subscribes) a contact to a list; idempotent.
    async fn add_membership(
        &self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<Membership> {
        let op = logic::Op::AddMember(ws.clone(), list.clone(), contact.clone());
        self.logic_write(op).await?.take(|d| match d {
            logic::OpDone::Member(m) => Some(m),
            _ => None,
        })
    }
    async fn remove_membership(
        &self,
        ws: &WorkspaceId,
        list: &ListId,
        contact: &ContactId,
    ) -> Result<()> {
        let op = logic::Op::RemoveMember(ws.clone(), list.clone(), contact.clone());
        self.logic_write(op).await?.take(|d| match d {
            logic::OpDone::Removed => Some(()),
            _ => None,
        })
    }
    async fn list_members(
        &self,
        ws: &WorkspaceId,
        list: &ListId,
        page: &PageRequest,
    ) -> Result<Page<Member>> {
        let done = self
            .read_sql(contacts::members(ws, list, page).into())
            .await?;
        contacts::members_page(&done[1], page)
    }
    async fn contact_lists(
        &self,
        ws: &WorkspaceId,
        contact: &ContactId,
    ) -> Result<Vec<Membership>> {
        let done = self
            .read_sql(contacts::lists_of(ws, contact).into())
            .await?;
        contacts::memberships(&done[1])
    }

    /// Creates a draft flow at version 1.
    async fn create_flow(
        &self,
        ws: &WorkspaceId,
        name: &str,
        document: Value,
    ) -> Result<FlowRecord> {
        flows::create(ws, name, &document, now_millis())?
            .run(self)
            .await
    }
    async fn get_flow(&self, ws: &WorkspaceId, id: &FlowId) -> Result<FlowRecord> {
        flows::one(&self.read_sql(vec![flows::get(ws, id)]).await?[0])
    }
    async fn flow_by_name(&self, ws: &WorkspaceId, name: &str) -> Result<FlowRecord> {
        flows::one(&self.read_sql(vec![flows::by_name(ws, name)]).await?[0])
    }
    async fn list_flows(&self, ws: &WorkspaceId, page: &PageRequest) -> Result<Page<FlowRecord>> {
        flows::to_page(&self.read_sql(vec![flows::page(ws, page)]).await?[0], page)
    }
    /// Saves a new version of the document (and the name).
    async fn update_flow(
        &self,
        ws: &WorkspaceId,
        id: &FlowId,
        name: &str,
        document: Value,
    ) -> Result<FlowRecord> {
        flows::update(ws, id, name, &document, now_millis())?
            .run(self)
            .await
    }
    /// Sets the status; `token` becomes the inbound token if the flow has none.
    /// Like saves (`create_flow`, `update_flow`), activation generates the
    /// signing secret when the document asks for signed calls and there is
    /// none yet (the returned record says so, once).
    async fn set_flow_status(
        &self,
        ws: &WorkspaceId,
        id: &FlowId,
        status: FlowStatus,
        token: Option<String>,
    ) -> Result<FlowRecord> {
        // Activation reads the document first to know whether it needs a
        // secret; a save in between stores its own secret if it signs.
        let current = match status {
            FlowStatus::Active => Some(self.get_flow(ws, id).await?),
            _ => None,
        };
        let signs = current.as_ref().map(|f| &*f.document);
        flows::set_status(ws, id, status, token.as_deref(), signs, now_millis())
            .run(self)
            .await
    }
    /// Replaces the inbound token (the old URL stops working at once), and
    /// the signing secret if the document asks for signed calls.
    async fn rotate_inbound_token(
        &self,
        ws: &WorkspaceId,
        id: &FlowId,
        token: String,
    ) -> Result<FlowRecord> {
        let current = self.get_flow(ws, id).await?;
        flows::rotate_token(&current, ws, &token, now_millis())
            .run(self)
            .await
    }
    async fn delete_flow(&self, ws: &WorkspaceId, id: &FlowId) -> Result<()> {
        self.run_sql(vec![flows::delete(ws, id)]).await.map(drop)
    }
    /// The flow whose inbound token is `token`, in any workspace.
    async fn flow_by_token(&self, token: &str) -> Result<(WorkspaceId, FlowRecord)> {
        flows::with_workspace(&self.read_sql(vec![flows::by_token(token)]).await?[0])
    }
    /// Records a contact entering a flow, all or nothing (IN-6, FL-3, IN-7).
    async fn enter_flow(&self, ws: &WorkspaceId, req: EntryRequest) -> Result<EntryOutcome> {
        self.logic_write(logic::Op::Enter(ws.clone(), req))
            .await?
            .take(|d| match d {
                logic::OpDone::Entered(e) => Some(e),
                _ => None,
            })
    }
    /// The stored answer for an idempotency key in `scope`, if any; a
    /// Conflict if the key came with another request (`hash`).
    async fn idempotent_answer(
        &self,
        ws: &WorkspaceId,
        scope: &str,
        key: &str,
        hash: &[u8],
    ) -> Result<Option<EntryResult>> {
        let done = self
            .read_sql(vec![entry::answer_stmt(ws, scope, key)])
            .await?;
        entry::stored_answer(&done[0], hash)
    }

    // ---- the engine ----------------------------------------------------------------

    /// Leases the runs that are due at `now` (unfinished, of an active flow,
    /// lease free or expired) to `owner` until `lease_until`, oldest due
    /// first, as many as `limit` allows, with the contact and lists their
    /// steps read.
    async fn claim_runs(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        limit: ClaimLimit,
    ) -> Result<Vec<ClaimedRun>>;
    /// Stores each advance atomically with its effects, only where `owner`
    /// still holds the lease at `now`; one outcome per advance, in order.
    async fn complete_runs(
        &self,
        owner: &str,
        now: Millis,
        advances: Vec<RunAdvance>,
    ) -> Result<Vec<AdvanceOutcome>>;
    /// When the next unfinished run of an active flow not leased at `now`
    /// is due (for the engine's sleep), if it is due by `until`.
    async fn next_due(&self, now: Millis, until: Millis) -> Result<Option<Millis>> {
        use sql::RowExt;
        let done = self.read_sql(vec![run::next_due(now, until)]).await?;
        done[0].rows.first().map(|r| r.int(0)).transpose()
    }

    // ---- the leased job queue (see `queue`) --------------------------------------

    /// Stores jobs; their ids in order.
    async fn enqueue_jobs(&self, jobs: Vec<queue::NewJob>) -> Result<Vec<crate::domain::JobId>> {
        let (ids, script) = queue::enqueue_script(&jobs, now_millis());
        self.run_sql(script).await?;
        Ok(ids)
    }
    /// Leases due jobs of one kind, oldest due first, within the claim's
    /// limits; each claim counts an attempt.
    async fn claim_jobs(&self, claim: queue::JobClaim) -> Result<Vec<queue::Job>>;
    /// Records a claimed job's outcome if `owner` still holds its lease at
    /// `now`; false (and nothing written) if it does not.
    async fn finish_job(
        &self,
        id: &crate::domain::JobId,
        owner: &str,
        now: Millis,
        outcome: queue::JobOutcome,
    ) -> Result<bool> {
        let done = self
            .run_sql(vec![queue::finish_stmt(id, owner, now, &outcome)])
            .await?;
        Ok(done.first().is_some_and(|d| d.changed == 1))
    }
    /// A job as stored.
    async fn get_job(&self, id: &crate::domain::JobId) -> Result<queue::JobRecord> {
        let done = self.read_sql(vec![queue::get_stmt(id)]).await?;
        queue::job_record(done[0].row("job")?)
    }
    /// Runs shared statements (`store::sql`) in order in one transaction:
    /// all of them or none (a statement's `or_else` rolls it back). The
    /// answer has one `Done` per statement, in order, or is an error: the
    /// callers index it by position.
    async fn run_sql(&self, script: Vec<sql::Stmt>) -> Result<Vec<sql::Done>>;
    /// Runs `script` as [`Store::run_sql`] does and, where the store gains
    /// by it, `claim` as [`Store::claim_jobs`] does in the same transaction:
    /// a worker's finishing writes carry its next claim, so the key slots
    /// they free are taken again with one durable commit instead of two.
    /// The claim never costs the script: one that fails is dropped (logged)
    /// and the script commits. SQLite claims (the claim joins the same group
    /// commit); PostgreSQL does not, the default here: its claim holds the
    /// kind's advisory lock to the commit, so every record would queue
    /// behind every claim (measured: 2,740-2,868 deliveries/s alone,
    /// 686-694 combined).
    async fn run_sql_then_claim(
        &self,
        script: Vec<sql::Stmt>,
        _claim: queue::JobClaim,
    ) -> Result<(Vec<sql::Done>, Vec<queue::Job>)> {
        Ok((self.run_sql(script).await?, Vec::new()))
    }
    /// Runs read-only shared statements (a reader connection on SQLite);
    /// one `Done` per statement, as [`Store::run_sql`].
    async fn read_sql(&self, script: Vec<sql::Stmt>) -> Result<Vec<sql::Done>>;
    /// One version's document of a flow (runs follow the version they
    /// started on).
    async fn flow_version(&self, ws: &WorkspaceId, flow: &FlowId, version: i64) -> Result<Value> {
        use sql::RowExt;
        let done = self
            .read_sql(vec![flows::version(ws, flow, version)])
            .await?;
        done[0].row("flow version")?.json(0)
    }

    async fn list_runs(
        &self,
        ws: &WorkspaceId,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> Result<Page<RunRecord>> {
        let done = self.read_sql(vec![run::page(ws, filter, page)]).await?;
        run::to_page(&done[0], page)
    }
    /// A run with its step history, oldest first.
    async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> Result<(RunRecord, Vec<StepRecord>)> {
        run::with_history(&self.read_sql(run::get(ws, id).into()).await?)
    }
    /// Ends an unfinished run as `cancelled`; a Conflict if it had ended.
    async fn cancel_run(&self, ws: &WorkspaceId, id: &RunId, now: Millis) -> Result<RunRecord> {
        run::cancelled(&self.run_sql(run::cancel(ws, id, now).into()).await?)
    }

    /// Records events (IN-8), each on its own: creates the contact if new,
    /// starts runs of flows triggered by the event's name and resumes runs
    /// waiting for it. One result per event, in order; a bad event does not
    /// undo the others.
    async fn record_events(
        &self,
        ws: &WorkspaceId,
        events: Vec<EventIn>,
        now: Millis,
    ) -> Result<Vec<Result<EventRecorded>>> {
        self.logic_write(logic::Op::Events(ws.clone(), events, now))
            .await?
            .take(|d| match d {
                logic::OpDone::Events(out) => Some(out),
                _ => None,
            })
    }
    /// Most events one `record_events` call should carry, so that one bulk
    /// upload does not hold other writes up behind one long transaction
    /// (the store knows how long its transactions may be).
    fn events_per_write(&self) -> usize {
        500
    }

    /// Appends calls to their flows' inbound-call logs (calls of flows
    /// deleted since are skipped), then trims each flow's log to its newest
    /// `keep` calls.
    async fn record_inbound_calls(&self, calls: Vec<InboundCallRecord>, keep: usize) -> Result<()> {
        self.run_sql(inbound_log::record_script(&calls, keep))
            .await
            .map(drop)
    }
    /// A flow's logged inbound calls, newest first (the flow must be checked
    /// to belong to `ws` by the caller; rows of other workspaces are never
    /// returned).
    async fn list_inbound_calls(
        &self,
        ws: &WorkspaceId,
        flow: &FlowId,
        limit: usize,
    ) -> Result<Vec<InboundCallRecord>> {
        let done = self
            .read_sql(vec![inbound_log::list_stmt(ws, flow, limit)])
            .await?;
        inbound_log::calls(&done[0], ws, flow)
    }
}

/// Opens the store a database URL names: `sqlite://PATH` (created if
/// missing) or `postgres://…`. Migrations are applied before it returns.
pub async fn connect(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(sqlite::SqliteStore::open(path, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url, options).await?))
    } else {
        Err(StoreError::Internal(format!(
            "unsupported database URL (expected sqlite://PATH or postgres://…): {}",
            redact_url(url)
        )))
    }
}

/// How long a server may go on accepting an API key revoked by another
/// process (the CLI, another server): its key cache's lifetime. Short enough
/// that `hookflow keys revoke` can wait it out before it returns, so that
/// "revoked" means refused everywhere; long enough that a busy key costs one
/// database read per 100 ms, not one per request.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_millis(100);

/// Tuning shared by both stores.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Most writes committed in one SQLite transaction (group commit).
    pub max_batch: usize,
    /// Pooled connections (PostgreSQL) or read connections (SQLite).
    pub pool_size: u32,
    /// How long an API key lookup is cached (0 disables the cache).
    pub key_cache_ttl: std::time::Duration,
    /// Whether opening may create the database (a new SQLite file, the
    /// tables of an empty PostgreSQL database). `serve` and `migrate` may;
    /// the other commands must find an existing one, so that running one in
    /// the wrong folder says so instead of making an empty database.
    pub create: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_batch: 512,
            pool_size: 8,
            key_cache_ttl: KEY_CACHE_TTL,
            create: true,
        }
    }
}

/// A URL fit for logs: the password, if any, replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
