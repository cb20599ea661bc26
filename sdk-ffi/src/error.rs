//! The errors a host app sees, grouped by what it can do about them.

use backfill_core::Error as CoreError;

/// An SDK call failed. Nothing is lost by an error: an event either was committed to the
/// buffer (the call returned) or was not (it raised one of these).
///
/// Kotlin `BackfillException`, Swift `BackfillError`, Python `backfill.BackfillError`; each
/// variant carries the message naming what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum BackfillError {
    /// A bad argument: an event the server would refuse (name, properties, timestamp, size),
    /// properties that are not a JSON object, a setting out of range, or credentials the
    /// server refused, an endpoint that is not a Backfill server. Fix the call or the config;
    /// retrying as is fails the same way.
    #[error("{0}")]
    InvalidArgument(String),
    /// The on-device buffer could not be written or read (disk full, damaged file). Recording
    /// works again once space is freed.
    #[error("{0}")]
    Storage(String),
    /// The client was closed; open a new one.
    #[error("the client is closed")]
    Closed,
    /// The network or the platform's HTTP stack failed (only where a call itself sends).
    #[error("{0}")]
    Network(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl From<CoreError> for BackfillError {
    fn from(e: CoreError) -> Self {
        let message = e.to_string();
        match e {
            CoreError::InvalidConfig(_) | CoreError::InvalidEvent(_) => {
                Self::InvalidArgument(message)
            }
            CoreError::Unauthorized(_) | CoreError::Misconfigured(_) => {
                Self::InvalidArgument(message)
            }
            CoreError::Busy(_) => Self::Other(message),
            CoreError::StorageFull(_) | CoreError::Storage(_) => Self::Storage(message),
            CoreError::Closed => Self::Closed,
        }
    }
}

/// What an [`HttpClient`](crate::HttpClient) raises when no answer came (no route, DNS, TLS,
/// timeout). Any other exception a host's implementation raises is read the same way: the
/// drain backs off and retries; the events stay buffered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum HttpError {
    /// The request got no answer.
    #[error("{reason}")]
    Failed {
        /// What went wrong, for the SDK's `last_error`.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for HttpError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Failed {
            reason: format!("the HTTP client raised: {}", e.reason),
        }
    }
}
