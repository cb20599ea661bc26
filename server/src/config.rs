//! Typed server configuration, parsed once at the edge (`main`) and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use backfill_protocol::limits::{
    DEFAULT_MAX_EVENT_AGE_DAYS, MAX_MAX_EVENT_AGE_DAYS, MIN_MAX_EVENT_AGE_DAYS,
};
use uuid::Uuid;

pub use crate::store::ClientMode;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Age window in days (1 to 90).
    pub max_event_age_days: u32,
    /// Projects to accept; when empty, the store's projects (one is created on first start).
    pub projects: Vec<ProjectCredential>,
    /// A PostgreSQL database shared by every node, instead of the embedded store in
    /// `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// Most connections to the PostgreSQL database this node opens.
    pub database_pool_size: usize,
}

/// The default of [`Config::database_pool_size`]: enough for the requests a node writes at once
/// on a few cores, well under PostgreSQL's default `max_connections` (100) for three nodes.
pub const DEFAULT_DATABASE_POOL_SIZE: usize = 16;

/// A PostgreSQL connection string (`postgres://user:password@host:port/db`); its `Debug` shows
/// no password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = match self.0.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://<credentials>@{host}"),
                None => self.0.clone(),
            },
            None => "<connection string>".to_owned(),
        };
        f.write_str(&shown)
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") || s.contains('=') {
            Ok(Self(s.to_owned()))
        } else {
            Err("the database URL must start with postgres:// (or be a key=value connection string)".to_owned())
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./backfill-data"),
            max_event_age_days: DEFAULT_MAX_EVENT_AGE_DAYS,
            projects: Vec::new(),
            database_url: None,
            database_pool_size: DEFAULT_DATABASE_POOL_SIZE,
        }
    }
}

/// Checks an age window given in days.
pub fn parse_max_event_age_days(days: u32) -> Result<u32, String> {
    if (MIN_MAX_EVENT_AGE_DAYS..=MAX_MAX_EVENT_AGE_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(format!(
            "the age window must be a whole number of days from {MIN_MAX_EVENT_AGE_DAYS} to {MAX_MAX_EVENT_AGE_DAYS}, not {days}"
        ))
    }
}

/// A client's id, secret and mode, as given by `--project <client-id>:<secret>[:<mode>]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProjectCredential {
    /// The client id, a UUID.
    pub client_id: Uuid,
    /// The secret, in clear; only its hash is stored.
    pub secret: String,
    /// What the client may do; `root` when not given, as before modes existed.
    pub mode: ClientMode,
}

impl std::fmt::Debug for ProjectCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectCredential")
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .field("mode", &self.mode)
            .finish()
    }
}

impl FromStr for ProjectCredential {
    type Err = String;

    /// Parses `<client-id>:<secret>[:<mode>]`. The secret may itself hold colons; a last part
    /// that names a mode (`write`, `read`, `root`) is taken as the mode. A last part of letters
    /// alone that names no mode (`:admin`, `:wirte`, `:Write`) is refused: taken as part of the
    /// secret, a misspelt mode would make a `root` client with a secret nobody meant.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (id, rest) = s.split_once(':').ok_or_else(|| {
            "a project is given as <client-id>:<secret>[:write|read|root]".to_owned()
        })?;
        // The part before the first ':' is not echoed: given in the wrong order, it is a secret.
        let client_id = Uuid::parse_str(id).map_err(|_| {
            "the client id (before the first ':') is not a UUID; client ids are UUIDs such as \
             3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f (`backfill-server project create` makes one, \
             with its secret)"
                .to_owned()
        })?;
        let (secret, mode) = match rest.rsplit_once(':') {
            Some((secret, mode)) if mode.parse::<ClientMode>().is_ok() => {
                (secret, mode.parse::<ClientMode>()?)
            }
            // The word is not echoed: it may be the end of a real secret.
            Some((_, last))
                if last.trim().is_empty()
                    || last.trim().parse::<ClientMode>().is_ok()
                    || (last.len() <= 16 && last.bytes().all(|b| b.is_ascii_alphabetic())) =>
            {
                return Err(format!(
                    "project {client_id}: the text after the last ':' is not a mode; give \
                     write, read or root, in lower case and without spaces, or leave the mode \
                     out for root (a secret holding ':' cannot end in ':', nor in a word of \
                     letters alone)"
                ));
            }
            _ => (rest, ClientMode::Root),
        };
        if secret.is_empty() {
            return Err(format!("project {client_id} has an empty secret"));
        }
        Ok(Self {
            client_id,
            secret: secret.to_owned(),
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_project_credentials() {
        let p: ProjectCredential = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f:s3cr:3t"
            .parse()
            .expect("valid");
        assert_eq!(p.secret, "s3cr:3t");
        assert_eq!(p.mode, ClientMode::Root, "no mode is root, as before modes");
        let w: ProjectCredential = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f:s3cr:et:write"
            .parse()
            .expect("valid");
        assert_eq!((w.secret.as_str(), w.mode), ("s3cr:et", ClientMode::Write));
        let r: ProjectCredential = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f:x:read"
            .parse()
            .expect("valid");
        assert_eq!((r.secret.as_str(), r.mode), ("x", ClientMode::Read));
        for typo in ["admin", "wirte", "Write", "READ", "rw", "", " write", " "] {
            let e = format!("3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f:sec:{typo}")
                .parse::<ProjectCredential>()
                .expect_err("a misspelt mode is not part of the secret");
            assert!(e.contains("is not a mode"), "{typo:?}: {e}");
            assert!(!e.contains("  "), "{e}");
            for part in ["sec:", "admin", "wirte", "Write", "READ"] {
                assert!(!e.contains(part), "nothing of the secret: {e}");
            }
        }
        let e = "gw1:s3cret"
            .parse::<ProjectCredential>()
            .expect_err("not a UUID");
        assert!(e.contains("is not a UUID"), "{e}");
        assert!(
            "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f::write"
                .parse::<ProjectCredential>()
                .is_err(),
            "a mode without a secret"
        );
        assert!(
            !format!("{p:?}").contains("s3cr"),
            "secrets never reach logs"
        );
        assert!("nope:secret".parse::<ProjectCredential>().is_err());
        assert!(
            "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f:"
                .parse::<ProjectCredential>()
                .is_err()
        );
        assert!(
            "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f"
                .parse::<ProjectCredential>()
                .is_err()
        );
    }

    #[test]
    fn database_urls_are_postgres_and_keep_their_password_out_of_logs() {
        let url: DatabaseUrl = "postgres://backfill:pa55@db.internal:5432/backfill"
            .parse()
            .expect("valid");
        let shown = format!("{url:?}");
        assert!(!shown.contains("pa55"), "{shown}");
        assert!(shown.contains("db.internal:5432/backfill"), "{shown}");
        assert!("mysql://x@y/z".parse::<DatabaseUrl>().is_err());
        assert!("host=/tmp dbname=backfill".parse::<DatabaseUrl>().is_ok());
        assert!(!format!("{:?}", DatabaseUrl("host=/tmp password=pa55".into())).contains("pa55"));
    }

    #[test]
    fn age_window_is_one_to_ninety_days() {
        assert_eq!(parse_max_event_age_days(7), Ok(7));
        assert!(parse_max_event_age_days(0).is_err());
        assert!(parse_max_event_age_days(91).is_err());
    }
}
