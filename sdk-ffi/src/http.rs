//! Uploading through the host platform's HTTP stack (OkHttp or `HttpURLConnection` on Android,
//! `URLSession` on iOS, `urllib` in Python), as Glean does, so uploads follow the app's proxies,
//! certificates, VPN and background sessions.

use std::collections::HashMap;
use std::sync::Arc;

use backfill_core::upload::transport::{self, NetworkError};

use crate::error::HttpError;

/// An answer to a request: any status, 4xx and 5xx included.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HttpResponse {
    /// The HTTP status.
    pub status: u16,
    /// Response headers (names in any case). The SDK reads `retry-after` and
    /// `backfill-max-event-age`; passing all of them is fine.
    #[uniffi(default)]
    pub headers: HashMap<String, String>,
    /// The body.
    #[uniffi(default)]
    pub body: Vec<u8>,
}

/// An HTTP stack the host app provides. Implement both methods with the platform's client;
/// return the answer whatever its status, and raise (any exception, or [`HttpError`]) only
/// when no answer came. A drain calls `post` from up to six threads at once
/// (`PIPELINE_DEPTH`); calls block their thread until the answer is read.
#[uniffi::export(foreign)]
pub trait HttpClient: Send + Sync {
    /// `POST url` with these headers and body (already gzip-compressed when the headers say
    /// `content-encoding: gzip`: send it as is).
    fn post(
        &self,
        url: String,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpError>;

    /// `GET url` with these headers (the health probe that tells the server's age window).
    fn get(&self, url: String, headers: HashMap<String, String>)
    -> Result<HttpResponse, HttpError>;
}

/// A host's [`HttpClient`] seen as the core's.
pub(crate) struct Host(pub(crate) Arc<dyn HttpClient>);

fn to_core(
    answer: Result<HttpResponse, HttpError>,
) -> Result<transport::HttpResponse, NetworkError> {
    answer
        .map(|r| transport::HttpResponse {
            status: r.status,
            headers: r.headers.into_iter().collect(),
            body: r.body,
        })
        .map_err(|e| NetworkError(e.to_string()))
}

impl transport::HttpClient for Host {
    fn post(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<transport::HttpResponse, NetworkError> {
        to_core(
            self.0
                .post(url.to_owned(), headers.into_iter().collect(), body),
        )
    }

    fn get(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
    ) -> Result<transport::HttpResponse, NetworkError> {
        to_core(self.0.get(url.to_owned(), headers.into_iter().collect()))
    }
}
