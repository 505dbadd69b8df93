//! First-start set-up and key issuance, shared by `serve` and the CLI.

use crate::domain::{ApiKeyId, ApiKeySecret, Scope};
use crate::store::{ApiKeyRecord, NewApiKey, Store, StoreError};

/// Name of the workspace created on first start.
pub const DEFAULT_WORKSPACE: &str = "default";

/// A key as just created: the record plus the secret, which exists only here.
pub struct IssuedKey {
    pub record: ApiKeyRecord,
    pub secret: String,
}

fn new_key(scope: Scope, name: Option<String>) -> (NewApiKey, ApiKeySecret) {
    let secret = ApiKeySecret::generate();
    let key = NewApiKey {
        id: ApiKeyId::generate(),
        name,
        scope,
        prefix: secret.display_prefix(),
        hash: secret.hash(),
    };
    (key, secret)
}

/// Creates the `default` workspace and an admin key if no workspace exists.
/// Returns the key when it did, `None` otherwise.
pub async fn ensure_default_workspace(store: &dyn Store) -> Result<Option<IssuedKey>, StoreError> {
    let (key, secret) = new_key(Scope::Admin, Some("bootstrap".into()));
    Ok(store
        .bootstrap(DEFAULT_WORKSPACE, key)
        .await?
        .map(|(_, record)| IssuedKey {
            record,
            secret: secret.expose().to_owned(),
        }))
}

/// Issues a key for the workspace named `workspace`.
pub async fn issue_key(
    store: &dyn Store,
    workspace: &str,
    scope: Scope,
    name: Option<String>,
) -> Result<IssuedKey, StoreError> {
    let ws = store.workspace_by_name(workspace).await?;
    let (key, secret) = new_key(scope, name);
    let record = store.create_api_key(&ws.id, key).await?;
    Ok(IssuedKey {
        record,
        secret: secret.expose().to_owned(),
    })
}
