//! What the SDK's calls can fail with.

/// An SDK error. Nothing is lost by an error: an event either was committed to the buffer
/// (the call returned `Ok`) or was not (the call returned one of these).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The event breaks a rule of the contract; the server would refuse it.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The device's storage is full; the event was not recorded. Recording works again once
    /// space is freed.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// The buffer could not be read or written.
    #[error("storage error: {0}")]
    Storage(String),
    /// The server refused the credentials; uploads are paused and the data is kept.
    #[error("the server refused the credentials (HTTP {0})")]
    Unauthorized(u16),
    /// The answers say the endpoint is wrong (`404`, `405`, `410`, an answer that is not the
    /// contract's, or every event refused alike: SPEC §9); uploads are paused and the data is
    /// kept. The text says what the server answered.
    #[error("the endpoint is misconfigured: {0}")]
    Misconfigured(String),
    /// Another drain holds the buffer (one drain per buffer, across processes), or another
    /// process held the buffer's write lock past the busy timeout (5 s); nothing was changed:
    /// try again once it ends.
    #[error("busy: {0}")]
    Busy(String),
    /// [`Backfill::close`](crate::Backfill::close) was called; this handle records and drains
    /// no more (open the buffer again to go on).
    #[error("the SDK is closed")]
    Closed,
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Error::StorageFull(e.to_string()),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Error::Busy(format!(
                    "another process is writing to the buffer ({e}); nothing was changed"
                ))
            }
            _ => Error::Storage(e.to_string()),
        }
    }
}
