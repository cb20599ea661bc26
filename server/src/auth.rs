//! Client credentials: hashing, bootstrap, and checking the `openpanel-client-*` headers and
//! the client's mode (SPEC §1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use backfill_protocol::ids::hex;
use backfill_protocol::limits::{CLIENT_ID_HEADER, CLIENT_SECRET_HEADER};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::ProjectCredential;
use crate::error::ApiError;
use crate::store::{ClientMode, ProjectRecord, SecretHash, Store, StoreError};

/// An authenticated client and the project whose data it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The store's key of the project's data.
    pub key: i64,
    /// The project's client id, lower-case hyphenated; used in the id derivations (SPEC §6).
    /// For a key issued for an existing project, that project's client id, so that every key of
    /// one project derives the same device and session ids.
    pub client_id: String,
    /// The client id that authenticated.
    pub client: Uuid,
    /// What that client may do.
    pub mode: ClientMode,
}

/// What a route needs of a client (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Ingestion: `write` or `root` clients.
    Write,
    /// The read API: `read` or `root` clients.
    Read,
}

/// Hex SHA-256 of `salt || secret`.
pub fn hash_secret(salt: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(secret.as_bytes());
    hex(&h.finalize())
}

/// A fresh salt and the hash of `secret` under it.
pub fn salted_hash(secret: &str) -> SecretHash {
    let salt = Uuid::new_v4().simple().to_string();
    SecretHash {
        hash: hash_secret(&salt, secret),
        salt,
    }
}

/// A new random secret: `sec_` and 64 hex digits (244 random bits from two UUIDv4s).
pub fn generate_secret() -> String {
    format!("sec_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// Whether `secret` hashes to `stored`, compared in constant time.
fn matches(stored: &SecretHash, secret: &str) -> bool {
    constant_time_eq(
        hash_secret(&stored.salt, secret).as_bytes(),
        stored.hash.as_bytes(),
    )
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A client created or rotated, with its secret shown once.
#[derive(Clone)]
pub struct NewProject {
    /// The client id.
    pub client_id: Uuid,
    /// The new secret; only its hash is stored, so it cannot be shown again.
    pub secret: String,
    /// What the client may do.
    pub mode: ClientMode,
}

impl std::fmt::Debug for NewProject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewProject")
            .field("client_id", &self.client_id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Saves the configured clients; with none configured and none stored, creates a `root` client
/// and returns it so that its secret can be printed once. A configured client stored with the
/// same secret and mode is left as stored (a rotation's grace period included); one given with
/// another secret or mode is saved with it, and a warning says that every server on the store
/// now takes it. A restart with a stale `--project` list must not undo `backfill-server
/// project` commands, on this node or on any other sharing the store: a configured client that
/// was revoked stays revoked, and one given with the secret a rotation replaced keeps the new
/// secret; both are left as stored and named in a warning.
pub async fn bootstrap(
    store: &dyn Store,
    configured: &[ProjectCredential],
    now_ms: i64,
) -> Result<Option<NewProject>, StoreError> {
    let stored = store.projects().await?;
    for p in configured {
        let client_id = p.client_id.to_string();
        let known = stored.iter().find(|r| r.client_id == client_id);
        if known.is_some_and(|r| r.revoked_at.is_some()) {
            tracing::warn!(
                client = %client_id,
                "this --project client is revoked in the store and stays revoked; remove it \
                 from --project (BACKFILL_PROJECTS)"
            );
            continue;
        }
        if let Some(r) = known {
            if matches(&r.secret, &p.secret) && r.mode == p.mode {
                continue;
            }
            if r.previous
                .as_ref()
                .is_some_and(|old| matches(&old.secret, &p.secret))
            {
                tracing::warn!(
                    client = %client_id,
                    "this --project client's secret was rotated in the store; the new secret \
                     stays: update or remove it in --project (BACKFILL_PROJECTS)"
                );
                continue;
            }
            tracing::warn!(
                client = %client_id,
                mode = %p.mode,
                "--project gives this stored client another secret or mode; every server on \
                 this store now takes it"
            );
        }
        store
            .save_project(ProjectRecord {
                key: 0,
                name: known.map(|r| r.name.clone()).unwrap_or_default(),
                owner: known.and_then(|r| r.owner),
                client_id,
                mode: p.mode,
                secret: salted_hash(&p.secret),
                previous: None,
                revoked_at: None,
                created_at: now_ms,
            })
            .await?;
    }
    if !configured.is_empty() || !stored.is_empty() {
        return Ok(None);
    }
    let created = crate::admin::create(
        store,
        crate::admin::CreateOptions {
            name: "default".to_owned(),
            mode: ClientMode::Root,
            for_client: None,
        },
        now_ms,
    )
    .await
    .map_err(|e| match e {
        crate::admin::AdminError::Store(e) => e,
        other => StoreError::Internal(other.to_string()),
    })?;
    Ok(Some(created))
}

/// The clients this server accepts, cached from the store.
pub struct ProjectRegistry {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// When set, only these client ids are accepted (the `--project` flags).
    only: Option<Vec<Uuid>>,
    known: RwLock<HashMap<Uuid, Known>>,
    /// When the cache was last re-read, for [`CACHE_TTL`].
    last_refresh: Mutex<Option<Instant>>,
    /// When an unknown id or a wrong secret last made it re-read, for [`REFRESH_INTERVAL`].
    last_miss: Mutex<Option<Instant>>,
    /// When the last re-read that finished began.
    refreshed: Mutex<Option<Instant>>,
}

/// A cached client with the client id its derivations use.
#[derive(Clone)]
struct Known {
    record: ProjectRecord,
    project_client_id: String,
}

/// How often an unknown client id or a wrong secret may trigger a re-read of the clients
/// (another node, or `backfill-server project`, may have created or rotated it).
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How long the cache is trusted: a client revoked by `backfill-server project revoke` is
/// refused by running servers within this time.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

impl ProjectRegistry {
    /// Loads the clients from `store`. With `only`, other stored clients are not accepted.
    /// `clock` decides when a rotated-out secret stops being accepted.
    pub async fn load(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        only: Option<Vec<Uuid>>,
    ) -> Result<Self, StoreError> {
        let registry = Self {
            store,
            clock,
            only,
            known: RwLock::new(HashMap::new()),
            last_refresh: Mutex::new(Some(Instant::now())),
            last_miss: Mutex::new(None),
            refreshed: Mutex::new(None),
        };
        registry.refresh().await?;
        Ok(registry)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let records = self.store.projects().await?;
        let by_key: HashMap<i64, String> = records
            .iter()
            .map(|r| (r.key, r.client_id.clone()))
            .collect();
        let map = records
            .iter()
            .filter(|r| r.revoked_at.is_none())
            .filter_map(|r| Uuid::parse_str(&r.client_id).ok().map(|id| (id, r)))
            .filter(|(id, _)| self.only.as_ref().is_none_or(|only| only.contains(id)))
            .map(|(id, r)| {
                let project_client_id = by_key
                    .get(&r.data_key())
                    .cloned()
                    .unwrap_or_else(|| r.client_id.clone());
                (
                    id,
                    Known {
                        record: r.clone(),
                        project_client_id,
                    },
                )
            })
            .collect();
        if let Ok(mut known) = self.known.write() {
            *known = map;
        }
        if let Ok(mut refreshed) = self.refreshed.lock() {
            *refreshed = Some(started);
        }
        Ok(())
    }

    /// Re-reads the clients for a request that found no match, at most once per
    /// [`REFRESH_INTERVAL`] whatever arrives (unknown ids must not flood the store). A miss
    /// inside that interval waits for the next re-read rather than answering from a cache that
    /// may predate its key: a `401` stops an SDK's uploads until its app acts (SPEC §9), so a
    /// key created a moment ago (by another node, or just after another key's refusal) must not
    /// get one.
    async fn refresh_after_miss(&self) -> Result<(), StoreError> {
        let asked = Instant::now();
        for _ in 0..3 {
            let wait = claim_or_wait(&self.last_miss, REFRESH_INTERVAL);
            if wait.is_zero() {
                return self.refresh().await;
            }
            if wait > REFRESH_INTERVAL {
                return Ok(());
            }
            tokio::time::sleep(wait).await;
            // Another request's re-read that began after this one asked serves it as well.
            let served = self
                .refreshed
                .lock()
                .ok()
                .and_then(|r| *r)
                .is_some_and(|t| t > asked);
            if served {
                return Ok(());
            }
        }
        Ok(())
    }

    fn lookup(&self, id: &Uuid) -> Option<Known> {
        self.known
            .read()
            .ok()
            .and_then(|known| known.get(id).cloned())
    }

    /// The project (its client id) that `client` reaches, from the cache, without checking any
    /// secret: for log lines.
    pub fn project_of(&self, client: &Uuid) -> Option<String> {
        self.lookup(client).map(|k| k.project_client_id)
    }

    /// Whether `secret` is the client's current secret, or the previous one inside its grace
    /// period.
    fn accepts(&self, known: &Known, secret: &str) -> bool {
        let current = matches(&known.record.secret, secret);
        let previous = known.record.previous.as_ref().is_some_and(|p| {
            let fresh = self.clock.now_ms() <= p.valid_until_ms;
            // Both are compared whatever the first gave, so timing tells nothing.
            matches(&p.secret, secret) & fresh
        });
        current | previous
    }

    /// Checks the credential headers and that the client's mode allows `access`; never reads
    /// the body. Unknown ids and wrong secrets are `401`, a client outside its mode `403`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        access: Access,
    ) -> Result<Project, ApiError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let id = header(CLIENT_ID_HEADER)
            .ok_or(ApiError::Unauthorized("missing openpanel-client-id header"))?;
        let id = Uuid::parse_str(id)
            .map_err(|_| ApiError::Unauthorized("openpanel-client-id must be a UUID"))?;
        let secret = header(CLIENT_SECRET_HEADER).ok_or(ApiError::Unauthorized(
            "missing openpanel-client-secret header",
        ))?;
        if claim_or_wait(&self.last_refresh, CACHE_TTL).is_zero() {
            self.refresh().await?;
        }
        let mut known = self.lookup(&id).filter(|k| self.accepts(k, secret));
        if known.is_none() {
            self.refresh_after_miss().await?;
            known = self.lookup(&id).filter(|k| self.accepts(k, secret));
        }
        let known = known.ok_or(ApiError::Unauthorized(
            "unknown client id or wrong client secret",
        ))?;
        let mode = known.record.mode;
        let allowed = match access {
            Access::Write => mode.can_write(),
            Access::Read => mode.can_read(),
        };
        if !allowed {
            return Err(ApiError::Forbidden(match access {
                Access::Write => format!(
                    "client {id} is a {mode} key and cannot send events; use a write or root key"
                ),
                Access::Read => format!(
                    "client {id} is a {mode} key and cannot use the read API; use a read or root key"
                ),
            }));
        }
        Ok(Project {
            key: known.record.data_key(),
            client_id: known.project_client_id,
            client: id,
            mode,
        })
    }
}

/// Claims a re-read when the one `last` records is at least `interval` old, and returns zero;
/// otherwise returns how long until one may be claimed. Of requests arriving together, one
/// re-reads and the others use the cache (or wait).
fn claim_or_wait(last: &Mutex<Option<Instant>>, interval: Duration) -> Duration {
    let Ok(mut last) = last.lock() else {
        // A poisoned lock: no re-read is claimed and none is waited for.
        return Duration::MAX;
    };
    match last.map(|t| t.elapsed()) {
        Some(elapsed) if elapsed < interval => interval - elapsed,
        _ => {
            *last = Some(Instant::now());
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_and_compared_exactly() {
        let a = hash_secret("s1", "secret");
        assert_ne!(a, hash_secret("s2", "secret"));
        assert!(constant_time_eq(
            a.as_bytes(),
            hash_secret("s1", "secret").as_bytes()
        ));
        assert!(!constant_time_eq(
            a.as_bytes(),
            hash_secret("s1", "secreT").as_bytes()
        ));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
