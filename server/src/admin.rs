//! Client administration on a store (`backfill-server project create|list|rotate|revoke`).
//!
//! A secret is shown once, when it is made: only its salted hash is stored, so neither `list`
//! nor anything else can show it again.

use uuid::Uuid;

use crate::auth::{NewProject, generate_secret, salted_hash};
use crate::store::{ClientMode, PreviousSecret, ProjectRecord, Store, StoreError};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No stored client has this id.
    #[error("no client {0} in this store; `backfill-server project list` shows the stored ones")]
    UnknownClient(Uuid),
    /// The client is revoked; a revoked client stays revoked.
    #[error("client {0} is revoked; create a new key instead")]
    Revoked(Uuid),
}

/// What `project create` makes.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// A label for operators.
    pub name: String,
    /// What the new client may do.
    pub mode: ClientMode,
    /// Issue the key for the project of this existing client (same data, same derived ids);
    /// `None` makes a new project.
    pub for_client: Option<Uuid>,
}

fn find(records: &[ProjectRecord], client: Uuid) -> Result<&ProjectRecord, AdminError> {
    let id = client.to_string();
    records
        .iter()
        .find(|r| r.client_id == id)
        .ok_or(AdminError::UnknownClient(client))
}

/// Creates a client with a new id and secret; the secret is returned once.
pub async fn create(
    store: &dyn Store,
    options: CreateOptions,
    now_ms: i64,
) -> Result<NewProject, AdminError> {
    let owner = match options.for_client {
        Some(id) => {
            let records = store.projects().await?;
            Some(find(&records, id)?.data_key())
        }
        None => None,
    };
    let client_id = Uuid::new_v4();
    let secret = generate_secret();
    store
        .save_project(ProjectRecord {
            key: 0,
            client_id: client_id.to_string(),
            name: options.name,
            mode: options.mode,
            owner,
            secret: salted_hash(&secret),
            previous: None,
            revoked_at: None,
            created_at: now_ms,
        })
        .await?;
    Ok(NewProject {
        client_id,
        secret,
        mode: options.mode,
    })
}

/// Every stored client, revoked ones included; never their secrets.
pub async fn list(store: &dyn Store) -> Result<Vec<ProjectRecord>, AdminError> {
    Ok(store.projects().await?)
}

/// Gives `client` a new secret, returned once. The old secret stays valid for `grace_ms`
/// (0: refused at once), so that apps can move to the new one; an older secret still in its
/// grace period is dropped.
pub async fn rotate(
    store: &dyn Store,
    client: Uuid,
    grace_ms: i64,
    now_ms: i64,
) -> Result<NewProject, AdminError> {
    let records = store.projects().await?;
    let mut record = find(&records, client)?.clone();
    if record.revoked_at.is_some() {
        return Err(AdminError::Revoked(client));
    }
    let secret = generate_secret();
    record.previous = (grace_ms > 0).then(|| PreviousSecret {
        secret: record.secret.clone(),
        valid_until_ms: now_ms.saturating_add(grace_ms),
    });
    record.secret = salted_hash(&secret);
    let mode = record.mode;
    store.save_project(record).await?;
    Ok(NewProject {
        client_id: client,
        secret,
        mode,
    })
}

/// Revokes `client`: its secrets are refused from then on (by running servers within
/// [`crate::auth::CACHE_TTL`]). Its project's data stays, reachable by its other keys.
pub async fn revoke(store: &dyn Store, client: Uuid, now_ms: i64) -> Result<(), AdminError> {
    let records = store.projects().await?;
    let mut record = find(&records, client)?.clone();
    if record.revoked_at.is_some() {
        return Ok(());
    }
    record.revoked_at = Some(now_ms);
    record.previous = None;
    store.save_project(record).await?;
    Ok(())
}
