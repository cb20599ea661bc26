//! How PostgreSQL's errors become [`StoreError`]s, and which are worth retrying.

use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// What the writer does after a failed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// Serialization failure or deadlock: run the same transaction again (SQLSTATE 40001,
    /// 40P01).
    Retry,
    /// The database is unreachable, shutting down or out of resources: give up, answer `503`.
    Unavailable,
    /// The database refused the data itself: write the rows one by one so only the bad one
    /// fails.
    Refused,
}

/// Classifies a driver error by its SQLSTATE (PostgreSQL manual, appendix A); an error without
/// one is a broken connection.
pub(super) fn classify(e: &tokio_postgres::Error) -> Failure {
    let Some(code) = e.code() else {
        return Failure::Unavailable;
    };
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return Failure::Retry;
    }
    match &code.code()[..2] {
        // Connection exception, insufficient resources, operator intervention (shutdown),
        // system error.
        "08" | "53" | "57" | "58" => Failure::Unavailable,
        _ => Failure::Refused,
    }
}

/// Whether `e` is a unique violation of the index named `index`.
pub(super) fn violates(e: &tokio_postgres::Error, index: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(index)
    })
}

/// A driver error as a [`StoreError`].
pub(super) fn from_pg(e: tokio_postgres::Error) -> StoreError {
    match classify(&e) {
        Failure::Unavailable => {
            StoreError::Unavailable(format!("database unavailable: {}", describe(&e)))
        }
        _ => StoreError::Internal(describe(&e)),
    }
}

/// The error with the database's own message and detail, which the driver's `Display` leaves
/// out.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_owned(),
        },
        // The driver's own text ("error connecting to server", "db error") names the step;
        // its source names the cause (connection refused, reset, ...).
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// A pool error (no connection within the acquire timeout, or none could be made).
pub(super) fn from_pool(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => from_pg(e),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}
