//! Project credentials: hashing, bootstrap, and checking the `openpanel-client-*` headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use backfill_protocol::ids::hex;
use backfill_protocol::limits::{CLIENT_ID_HEADER, CLIENT_SECRET_HEADER};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::ProjectCredential;
use crate::error::ApiError;
use crate::store::{ProjectRecord, ProjectSecret, Store, StoreError};

/// An authenticated project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The store's key.
    pub key: i64,
    /// The client id, lower-case hyphenated; used in the id derivations.
    pub client_id: String,
}

/// Hex SHA-256 of `salt || secret`.
pub fn hash_secret(salt: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(secret.as_bytes());
    hex(&h.finalize())
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A project created on first start, with its secret shown once.
#[derive(Debug, Clone)]
pub struct NewProject {
    /// The new client id.
    pub client_id: Uuid,
    /// The new secret; only its hash is stored.
    pub secret: String,
}

/// Saves the configured projects; with none configured and none stored, creates one and returns
/// it so that its secret can be printed once.
pub async fn bootstrap(
    store: &dyn Store,
    configured: &[ProjectCredential],
) -> Result<Option<NewProject>, StoreError> {
    for p in configured {
        let salt = Uuid::new_v4().simple().to_string();
        store
            .save_project(ProjectSecret {
                client_id: p.client_id.to_string(),
                secret_hash: hash_secret(&salt, &p.secret),
                secret_salt: salt,
            })
            .await?;
    }
    if !configured.is_empty() || !store.projects().await?.is_empty() {
        return Ok(None);
    }
    let client_id = Uuid::new_v4();
    let secret = format!("sec_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let salt = Uuid::new_v4().simple().to_string();
    store
        .save_project(ProjectSecret {
            client_id: client_id.to_string(),
            secret_hash: hash_secret(&salt, &secret),
            secret_salt: salt,
        })
        .await?;
    Ok(Some(NewProject { client_id, secret }))
}

/// The projects this server accepts, cached from the store.
pub struct ProjectRegistry {
    store: Arc<dyn Store>,
    /// When set, only these client ids are accepted (the `--project` flags).
    only: Option<Vec<Uuid>>,
    known: RwLock<HashMap<Uuid, ProjectRecord>>,
    last_refresh: Mutex<Option<Instant>>,
}

/// How often an unknown client id may trigger a re-read of the projects (another node may have
/// created it).
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

impl ProjectRegistry {
    /// Loads the projects from `store`. With `only`, other stored projects are not accepted.
    pub async fn load(store: Arc<dyn Store>, only: Option<Vec<Uuid>>) -> Result<Self, StoreError> {
        let registry = Self {
            store,
            only,
            known: RwLock::new(HashMap::new()),
            last_refresh: Mutex::new(None),
        };
        registry.refresh().await?;
        Ok(registry)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        let records = self.store.projects().await?;
        let map = records
            .into_iter()
            .filter_map(|r| Uuid::parse_str(&r.client_id).ok().map(|id| (id, r)))
            .filter(|(id, _)| self.only.as_ref().is_none_or(|only| only.contains(id)))
            .collect();
        if let Ok(mut known) = self.known.write() {
            *known = map;
        }
        Ok(())
    }

    fn lookup(&self, id: &Uuid) -> Option<ProjectRecord> {
        self.known
            .read()
            .ok()
            .and_then(|known| known.get(id).cloned())
    }

    /// Checks the credential headers; never reads the body.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Project, ApiError> {
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
        let record = match self.lookup(&id) {
            Some(r) => Some(r),
            None if self.may_refresh() => {
                self.refresh().await?;
                self.lookup(&id)
            }
            None => None,
        };
        let wrong = ApiError::Unauthorized("unknown client id or wrong client secret");
        let record = record.ok_or(wrong)?;
        let given = hash_secret(&record.secret_salt, secret);
        if !constant_time_eq(given.as_bytes(), record.secret_hash.as_bytes()) {
            return Err(ApiError::Unauthorized(
                "unknown client id or wrong client secret",
            ));
        }
        Ok(Project {
            key: record.key,
            client_id: record.client_id,
        })
    }

    fn may_refresh(&self) -> bool {
        let Ok(mut last) = self.last_refresh.lock() else {
            return false;
        };
        let due = last.is_none_or(|t| t.elapsed() >= REFRESH_INTERVAL);
        if due {
            *last = Some(Instant::now());
        }
        due
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
