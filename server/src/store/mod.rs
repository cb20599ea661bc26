//! The storage boundary: what ingestion and the read API need from a database.
//!
//! [`Store`] is implemented by the embedded [`sqlite::SqliteStore`] (one server) and by
//! [`postgres::PostgresStore`] (several stateless server nodes sharing one database). What a
//! row changes is decided by [`rules`], which both call; each holds only its own SQL.

pub mod fault;
pub mod postgres;
pub mod rules;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;

use backfill_protocol::number::Decimal;
use backfill_protocol::properties::RawMap;
use serde_json::{Map, Value};

/// A boxed future returned by [`Store`] methods.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A failure of the store as a whole; the request changed nothing and may be retried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or written (disk full, I/O error, shut down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database answered with something unexpected.
    #[error("store error: {0}")]
    Internal(String),
}

/// What a client may do (SPEC §1), as upstream's client modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientMode {
    /// Ingest only (`/track`, `/track/batch`): the key apps and gateways ship.
    Write,
    /// The read API only (`/api/...`): for dashboards and exports.
    Read,
    /// Both; what clients stored before modes existed become.
    Root,
}

impl ClientMode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [ClientMode; 3] = [ClientMode::Write, ClientMode::Read, ClientMode::Root];

    /// The name stored and given on the command line: `write`, `read` or `root`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientMode::Write => "write",
            ClientMode::Read => "read",
            ClientMode::Root => "root",
        }
    }

    /// Whether this mode may ingest events.
    pub fn can_write(self) -> bool {
        matches!(self, ClientMode::Write | ClientMode::Root)
    }

    /// Whether this mode may use the read API.
    pub fn can_read(self) -> bool {
        matches!(self, ClientMode::Read | ClientMode::Root)
    }
}

impl std::fmt::Display for ClientMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that a width (`{:<5}`, a table's column) applies.
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for ClientMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClientMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown client mode {s:?}; use write, read or root"))
    }
}

/// A salted secret hash: hex SHA-256 of `salt || secret`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash {
    /// Hex SHA-256 of `salt || secret`.
    pub hash: String,
    /// Hex salt.
    pub salt: String,
}

/// The secret a rotation replaced, still accepted until `valid_until_ms`.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// Its hash.
    pub secret: SecretHash,
    /// Epoch ms after which it is refused.
    pub valid_until_ms: i64,
}

/// A client (one credential) as stored. Each client reaches the data of one project: its own,
/// or, for a key issued for an existing project, that project's (`owner`).
#[derive(Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    /// The store's key for the client; also the data key of a client without an owner.
    pub key: i64,
    /// The client id (a UUID, lower-case hyphenated).
    pub client_id: String,
    /// A label for operators; may be empty.
    pub name: String,
    /// What the client may do.
    pub mode: ClientMode,
    /// The key of the client whose project's data this client reaches; `None`: its own.
    pub owner: Option<i64>,
    /// The current secret's hash.
    pub secret: SecretHash,
    /// The secret the last rotation replaced, while its grace period lasts.
    pub previous: Option<PreviousSecret>,
    /// When the client was revoked (epoch ms); a revoked client is refused.
    pub revoked_at: Option<i64>,
    /// When the client was created (epoch ms).
    pub created_at: i64,
}

impl ProjectRecord {
    /// The key of the project whose data this client reaches.
    pub fn data_key(&self) -> i64 {
        self.owner.unwrap_or(self.key)
    }
}

impl std::fmt::Debug for ProjectRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectRecord")
            .field("key", &self.key)
            .field("client_id", &self.client_id)
            .field("mode", &self.mode)
            .field("owner", &self.owner)
            .field("revoked_at", &self.revoked_at)
            .finish()
    }
}

/// The accepted rows of one request, ready to be written.
#[derive(Debug, Clone)]
pub struct IngestJob {
    /// The project's store key.
    pub project: i64,
    /// `openpanel-sdk-name` of the request.
    pub sdk_name: Option<String>,
    /// `openpanel-sdk-version` of the request.
    pub sdk_version: Option<String>,
    /// Rows in request order.
    pub rows: Vec<PreparedRow>,
}

/// One validated row with its event time, ids and properties resolved.
#[derive(Debug, Clone)]
pub struct PreparedRow {
    /// The idempotency key, if any.
    pub insert_id: Option<String>,
    /// Event time in epoch ms, after skew correction and clamping.
    pub time_ms: i64,
    /// What to store.
    pub action: RowAction,
}

/// What a row changes.
#[derive(Debug, Clone)]
pub enum RowAction {
    /// A `track` event.
    Event(NewEvent),
    /// Merge fields into a profile; later event time wins per field.
    Identify {
        /// Profile id.
        profile_id: String,
        /// `firstName`, `lastName`, `email`, `avatar` (wire names) with their values.
        fields: Vec<(&'static str, String)>,
        /// Properties to merge, special properties removed, each value's JSON text as sent.
        properties: RawMap,
    },
    /// Add `delta` to a numeric profile property.
    Increment {
        /// Profile id.
        profile_id: String,
        /// Property name.
        property: String,
        /// Signed amount, added exactly ([`backfill_protocol::number::add_exact`]).
        delta: Decimal,
    },
    /// Create or update a group.
    Group {
        /// Group id.
        id: String,
        /// Group type.
        group_type: String,
        /// Display name.
        name: String,
        /// Group properties, special properties removed, each value's JSON text as sent.
        properties: RawMap,
    },
    /// Add a profile to groups.
    AssignGroup {
        /// Profile id.
        profile_id: String,
        /// Group ids.
        group_ids: Vec<String>,
    },
}

/// A `track` event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Server-generated UUID (v7).
    pub id: uuid::Uuid,
    /// Event name.
    pub name: String,
    /// Device id; empty for server events.
    pub device_id: String,
    /// Session id; empty for server events.
    pub session_id: String,
    /// Profile id, if any.
    pub profile_id: Option<String>,
    /// Properties as JSON text (without `__timestamp`, with `__clientTimestamp` where set).
    pub properties: String,
    /// Group ids as a JSON array, if any.
    pub groups: Option<String>,
}

/// What happened to one row of an [`IngestJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Newly stored.
    Stored,
    /// Its `__insertId` was already stored; nothing changed.
    Duplicate,
    /// Refused by a rule that needs stored data (e.g. incrementing a non-numeric property).
    Invalid(String),
    /// The store failed on this row alone; nothing of it was stored and a retry is safe.
    Failed(String),
}

/// A stored event as the read API needs it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Server-generated id.
    pub id: String,
    /// Event name.
    pub name: String,
    /// Event type.
    pub kind: String,
    /// Device id.
    pub device_id: String,
    /// Session id.
    pub session_id: String,
    /// Profile id.
    pub profile_id: Option<String>,
    /// Event time, epoch ms.
    pub created_at: i64,
    /// Stored properties, each value's JSON text as sent.
    pub properties: RawMap,
    /// Commit time, epoch ms.
    pub synced_at: i64,
    /// Idempotency key.
    pub insert_id: Option<String>,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Session id.
    pub id: String,
    /// Device id.
    pub device_id: String,
    /// First non-empty profile id among its events.
    pub profile_id: Option<String>,
    /// Earliest event time, epoch ms.
    pub started_at: i64,
    /// Latest event time, epoch ms.
    pub ended_at: i64,
    /// Events in the session, `session_start` not counted.
    pub event_count: i64,
}

/// A profile with its groups.
#[derive(Debug, Clone)]
pub struct StoredProfile {
    /// Profile id.
    pub id: String,
    /// `firstName`, `lastName`, `email`, `avatar` by wire name.
    pub fields: Map<String, Value>,
    /// Merged properties, each value's JSON text as sent (or as an exact sum computed).
    pub properties: RawMap,
    /// Group ids.
    pub groups: Vec<String>,
    /// First write, epoch ms.
    pub created_at: i64,
    /// Last write, epoch ms.
    pub updated_at: i64,
}

/// Filters and position of a `GET /api/events` page.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Project key.
    pub project: i64,
    /// Most rows to return.
    pub limit: usize,
    /// Return rows strictly after this (created_at, id).
    pub after: Option<(i64, String)>,
    /// Only this device.
    pub device_id: Option<String>,
    /// Only this session.
    pub session_id: Option<String>,
    /// Only this name.
    pub name: Option<String>,
    /// Event time at or after (ms).
    pub from: Option<i64>,
    /// Event time at or before (ms).
    pub to: Option<i64>,
}

/// Filters and position of a `GET /api/sessions` page.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Project key.
    pub project: i64,
    /// Most rows to return.
    pub limit: usize,
    /// Return rows strictly after this (started_at, id).
    pub after: Option<(i64, String)>,
    /// Only this device.
    pub device_id: Option<String>,
    /// Sessions started at or after (ms).
    pub from: Option<i64>,
    /// Sessions started at or before (ms).
    pub to: Option<i64>,
}

/// What the server needs from a database.
///
/// Several server nodes may share one store and call any method at the same time, for the same
/// project, session, profile or insert id; no method may rely on a lock or cache inside one
/// process. Each method says what must be atomic. A method that fails because the database
/// cannot be reached returns [`StoreError::Unavailable`] within a bounded time (the server
/// answers `503` with `Retry-After`), and the store recovers by itself when it is back.
pub trait Store: Send + Sync + 'static {
    /// Writes the rows of one request by the rules of [`rules`] and returns one outcome per row,
    /// in order. Returns only after every `Stored` row is durably committed. An `Err` means
    /// nothing was written.
    ///
    /// Atomic: a row's claim of its insert id, its own change, and its part in its session's
    /// counts and `session_start` are committed together or not at all. Concurrent requests on
    /// any number of nodes, overlapping in insert ids and sessions, store each insert id once
    /// and give each session exactly one `session_start`, 100 ms before its earliest stored
    /// event (SPEC §5, §6); `identify` and `increment` on one profile never lose an update.
    fn ingest(&self, job: IngestJob) -> StoreFuture<Vec<RowOutcome>>;

    /// The device-id salt of a UTC day (`YYYY-MM-DD`), created on first use. Atomic: nodes
    /// asking for a new day at the same time all get the one salt that was stored first.
    fn daily_salt(&self, day: String) -> StoreFuture<String>;

    /// Every client, revoked ones included, by key. May run concurrently with
    /// [`Store::save_project`] on another node; it then sees each client either before or after
    /// the save, never half of it.
    fn projects(&self) -> StoreFuture<Vec<ProjectRecord>>;

    /// Creates the client `record.client_id` or replaces everything stored of it but its key
    /// and creation time (`record.key` and `record.created_at` are ignored); returns its key.
    /// Atomic per client: nodes saving one client id at the same time end with one client.
    fn save_project(&self, record: ProjectRecord) -> StoreFuture<i64>;

    /// A page of events; sees only committed rows.
    fn events(&self, query: EventQuery) -> StoreFuture<Vec<StoredEvent>>;

    /// A page of sessions; sees only committed rows.
    fn sessions(&self, query: SessionQuery) -> StoreFuture<Vec<StoredSession>>;

    /// One profile, if it exists; sees only committed rows.
    fn profile(&self, project: i64, profile_id: String) -> StoreFuture<Option<StoredProfile>>;

    /// Succeeds when the store answers.
    fn health(&self) -> StoreFuture<()>;

    /// Finishes the writes already handed to the store, then releases its connections and
    /// threads. Calls made afterwards fail with [`StoreError::Unavailable`].
    fn close(&self) -> StoreFuture<()>;
}
