//! The request path: a small trait, and the HTTP implementation (reqwest with rustls).

use std::time::Duration;

use backfill_protocol::limits::{
    CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, MAX_EVENT_AGE_HEADER, SDK_NAME_HEADER,
    SDK_VERSION_HEADER,
};

/// What came back from the server.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
    /// `backfill-max-event-age`: the server's age window.
    pub max_event_age: Option<Duration>,
    /// The body.
    pub body: Vec<u8>,
}

/// A failure before any answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("network error: {0}")]
pub struct NetworkError(pub String);

/// Sends request bodies to the server. Called from one thread at a time.
pub trait Transport: Send + Sync {
    /// `POST /track/batch` with `body` (gzip-compressed when `gzip`).
    fn post_batch(&self, body: Vec<u8>, gzip: bool) -> Result<Reply, NetworkError>;
    /// A cheap authenticated-free request whose answer carries the server's age window.
    fn probe(&self) -> Result<Reply, NetworkError>;
}

/// The HTTP transport. Holds its own small runtime, so it can be called from any plain thread,
/// from several at once.
pub struct HttpTransport {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    endpoint: String,
    client_id: String,
    client_secret: String,
}

impl HttpTransport {
    /// A transport for `endpoint` with the project's credentials.
    pub fn new(
        endpoint: &str,
        client_id: &str,
        client_secret: &str,
        timeout: Duration,
    ) -> Result<Self, NetworkError> {
        // One worker drives the connections; several drain threads may wait on it at once.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("backfill-net")
            .enable_all()
            .build()
            .map_err(|e| NetworkError(format!("cannot start the network runtime: {e}")))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(15).min(timeout))
            .user_agent(concat!("backfill-core/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NetworkError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            runtime,
            client,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
        })
    }

    fn run(&self, request: reqwest::RequestBuilder) -> Result<Reply, NetworkError> {
        // Called from inside an async runtime (an app calling `flush` from a task), blocking on
        // another runtime would panic: do it on a scoped thread instead.
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|s| s.spawn(|| self.exchange(request)).join())
                .unwrap_or_else(|_| Err(NetworkError("the request thread panicked".to_owned())));
        }
        self.exchange(request)
    }

    fn exchange(&self, request: reqwest::RequestBuilder) -> Result<Reply, NetworkError> {
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| cause(&e))?;
            let header_secs = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
            };
            let status = response.status().as_u16();
            let retry_after = header_secs("retry-after");
            let max_event_age = header_secs(MAX_EVENT_AGE_HEADER);
            let body = response.bytes().await.map_err(|e| cause(&e))?.to_vec();
            Ok(Reply {
                status,
                retry_after,
                max_event_age,
                body,
            })
        })
    }
}

/// Names why a request got no answer: DNS, refused, reset, TLS, timeout, with the host.
fn cause(e: &reqwest::Error) -> NetworkError {
    let host = e
        .url()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        })
        .unwrap_or_else(|| "the server".to_owned());
    let mut chain = Vec::new();
    let mut io_kind = None;
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    let lower = text.to_ascii_lowercase();
    let named = if e.is_timeout() {
        format!("no answer from {host} in time (timed out)")
    } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused) || lower.contains("refused") {
        format!("connection refused by {host} (is the server running, on this port?)")
    } else if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") {
        format!("DNS lookup failed for {host} (is the host name right?)")
    } else if lower.contains("tls")
        || lower.contains("certificate")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
    {
        format!("TLS failed with {host} (is it an https server? for a plain one use http://)")
    } else if io_kind == Some(std::io::ErrorKind::ConnectionReset) || lower.contains("reset") {
        format!("the connection to {host} was reset")
    } else {
        format!("no answer from {host}")
    };
    NetworkError(format!("{named}: {text}"))
}

impl Transport for HttpTransport {
    fn post_batch(&self, body: Vec<u8>, gzip: bool) -> Result<Reply, NetworkError> {
        let mut request = self
            .client
            .post(format!("{}/track/batch", self.endpoint))
            .header("content-type", "application/json")
            .header(CLIENT_ID_HEADER, &self.client_id)
            .header(CLIENT_SECRET_HEADER, &self.client_secret)
            .header(SDK_NAME_HEADER, "backfill-core")
            .header(SDK_VERSION_HEADER, env!("CARGO_PKG_VERSION"));
        if gzip {
            request = request.header("content-encoding", "gzip");
        }
        self.run(request.body(body))
    }

    fn probe(&self) -> Result<Reply, NetworkError> {
        self.run(self.client.get(format!("{}/healthz", self.endpoint)))
    }
}
