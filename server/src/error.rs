//! The server's one error type and its single mapping to HTTP.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backfill_protocol::wire::ErrorBody;

use crate::store::StoreError;

/// Seconds a client should wait before retrying after a `503`.
pub const STORE_RETRY_AFTER_SECS: u32 = 5;

/// Everything a request can fail with, grouped by what the client should do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    // --- Do not retry as is: fix the request.
    /// Missing or bad credentials (`401`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The client's mode does not allow this route (`403`, SPEC §1).
    #[error("{0}")]
    Forbidden(String),
    /// A malformed envelope or query (`400`).
    #[error("{0}")]
    BadRequest(String),
    /// Nothing at this path or with this id (`404`).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method (`405`).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The body, decoded, is over the limit (`413`).
    #[error("request body larger than {limit} bytes after decoding; split the batch")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A `Content-Encoding` the server cannot decode (`415`).
    #[error("unsupported Content-Encoding {0:?}; send identity, gzip or zstd")]
    UnsupportedEncoding(String),

    // --- Retry later.
    /// The request body stopped arriving for longer than `idle` (`408`).
    #[error("no byte of the request body arrived for {} s; resend the request", idle.as_secs())]
    BodyTimeout {
        /// The longest pause allowed.
        idle: std::time::Duration,
    },
    /// Too many requests (`429`).
    #[error("rate limited; retry after {retry_after} s")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u32,
    },
    /// The store cannot commit now (`503`); the request changed nothing.
    #[error("storage unavailable; retry later")]
    Unavailable,
    /// The store failed (`503`); the cause is logged, the client sees [`ApiError::Unavailable`]'s
    /// message.
    #[error("storage unavailable; retry later")]
    StoreFailed(String),

    // --- Either, and the connection closes.
    /// The inner error, answered before the request body was read to its end. The answer says
    /// `Connection: close` and the connection is closed after it (RFC 9112 §9.6): the unread
    /// rest of the body cannot be told from a next request, so a client must not reuse it.
    #[error(transparent)]
    BodyUnread(Box<ApiError>),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The client only learns that it may retry; the cause goes to the log (see
        // `api::observe`), never to the client.
        ApiError::StoreFailed(e.to_string())
    }
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::StoreFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyUnread(inner) => inner.status(),
        }
    }

    fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            ApiError::Unavailable | ApiError::StoreFailed(_) => Some(STORE_RETRY_AFTER_SECS),
            ApiError::BodyUnread(inner) => inner.retry_after(),
            _ => None,
        }
    }
}

/// The cause of a store failure, attached to the response for the logging middleware.
#[derive(Debug, Clone)]
pub struct StoreFailure(pub String);

/// Why a request failed, as told to the client, attached to the response for the logging
/// middleware.
#[derive(Debug, Clone)]
pub struct FailureReason(pub String);

/// The JSON error body for `status` with `message`.
pub fn error_body(status: StatusCode, message: String) -> ErrorBody {
    ErrorBody {
        status: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error").to_owned(),
        message,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::BodyUnread(inner) = self {
            let mut response = inner.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        let status = self.status();
        let retry_after = self.retry_after();
        let message = self.to_string();
        let mut response = (status, Json(error_body(status, message.clone()))).into_response();
        response.extensions_mut().insert(FailureReason(message));
        if let ApiError::StoreFailed(cause) = self {
            // Carried to the logging middleware, which removes it before the answer leaves.
            response.extensions_mut().insert(StoreFailure(cause));
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
