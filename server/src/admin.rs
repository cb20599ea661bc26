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
    /// The secret the client's last rotation replaced is still accepted; rotating again would
    /// refuse it at once, since one old secret is kept.
    #[error(
        "client {client} is still rotating: the secret it had before its last rotation is accepted \
         until {until}, and rotating again would refuse that secret at once (one old secret is \
         kept: the one this rotation replaces). Wait until then, or pass --force"
    )]
    StillRotating {
        /// The client.
        client: Uuid,
        /// When the older secret stops being accepted (ISO-8601).
        until: String,
    },
}

/// What `project rotate` does.
#[derive(Debug, Clone, Copy)]
pub struct RotateOptions {
    /// How long the replaced secret stays valid, in ms (0: refused at once).
    pub grace_ms: i64,
    /// Rotate even while the secret an earlier rotation replaced is still in its grace period
    /// (it is then refused at once).
    pub force: bool,
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

/// Gives `client` a new secret, returned once. The old secret stays valid for
/// `options.grace_ms` (0: refused at once), so that apps can move to the new one. One old secret
/// is kept: while the one an earlier rotation replaced is still valid, a rotation with a grace
/// period is refused ([`AdminError::StillRotating`]) unless `options.force`, since apps may still
/// ship that secret.
pub async fn rotate(
    store: &dyn Store,
    client: Uuid,
    options: RotateOptions,
    now_ms: i64,
) -> Result<NewProject, AdminError> {
    let RotateOptions { grace_ms, force } = options;
    let records = store.projects().await?;
    let mut record = find(&records, client)?.clone();
    if record.revoked_at.is_some() {
        return Err(AdminError::Revoked(client));
    }
    if let Some(previous) = &record.previous
        && previous.valid_until_ms > now_ms
        && grace_ms > 0
        && !force
    {
        return Err(AdminError::StillRotating {
            client,
            until: backfill_protocol::time::format_iso_ms(previous.valid_until_ms),
        });
    }
    let secret = generate_secret();
    // Kept without a grace period too, already expired: a server restarted with a stale
    // `--project` list then tells the replaced secret from a new one (see `auth::bootstrap`).
    record.previous = Some(PreviousSecret {
        secret: record.secret.clone(),
        valid_until_ms: if grace_ms > 0 {
            now_ms.saturating_add(grace_ms)
        } else {
            now_ms.saturating_sub(1)
        },
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
