//! The request path: the small trait a drain sends through ([`Transport`]); the contract's two
//! requests over any HTTP stack ([`ContractTransport`] over an [`HttpClient`]), so that an app
//! can upload through its platform's own stack (proxies, certificates, VPN, background
//! sessions); and the built-in stack, reqwest with rustls (cargo feature `http`).

use std::panic::{AssertUnwindSafe, catch_unwind};
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

/// The most of an answer's body that is read: the contract's largest answer (a `202` refusing
/// each of 2000 events with a message) is well under 1 MiB, so a longer body is not one of its
/// answers. Reading stops there, so a proxy's endless page cannot exhaust a gateway's memory;
/// what was read is kept, and a `202` cut short is not the contract's (nothing is deleted).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A failure before any answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("network error: {0}")]
pub struct NetworkError(pub String);

/// Sends request bodies to the server.
///
/// A drain keeps up to [`PIPELINE_DEPTH`](super::drain::PIPELINE_DEPTH) requests in flight,
/// so `post_batch` is called from up to that many threads at once; an implementation must
/// allow it (or serialise inside).
pub trait Transport: Send + Sync {
    /// `POST /track/batch` with `body` (gzip-compressed when `gzip`).
    fn post_batch(&self, body: Vec<u8>, gzip: bool) -> Result<Reply, NetworkError>;
    /// A request without credentials whose answer carries the server's age window
    /// (`GET /healthz`).
    fn probe(&self) -> Result<Reply, NetworkError>;
}

/// A transport that never sends: for a buffer opened only to be looked at.
pub(crate) struct NoUploads;

impl Transport for NoUploads {
    fn post_batch(&self, _body: Vec<u8>, _gzip: bool) -> Result<Reply, NetworkError> {
        Err(NetworkError("this buffer is open read-only".to_owned()))
    }

    fn probe(&self) -> Result<Reply, NetworkError> {
        self.post_batch(Vec::new(), false)
    }
}

/// An answer as any HTTP stack gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers; names in any case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// An HTTP stack: the platform's own (through a language binding) or the built-in one.
///
/// Called from up to [`PIPELINE_DEPTH`](super::drain::PIPELINE_DEPTH) threads at once. Any
/// failure before an answer (no route, DNS, TLS, timeout) is a [`NetworkError`]; an answer of
/// any status, 4xx and 5xx included, is an `Ok` [`HttpResponse`]. A panic inside is caught and
/// read as a network error.
pub trait HttpClient: Send + Sync {
    /// `POST url` with these headers and body.
    fn post(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<HttpResponse, NetworkError>;
    /// `GET url` with these headers.
    fn get(&self, url: &str, headers: Vec<(String, String)>) -> Result<HttpResponse, NetworkError>;
}

/// The contract's requests (SPEC §1, §2) over an [`HttpClient`]: the URL, the credentials and
/// SDK headers, and the reading of `Retry-After` and `backfill-max-event-age`.
pub struct ContractTransport<H> {
    http: H,
    endpoint: String,
    client_id: String,
    client_secret: String,
    sdk_name: String,
}

impl<H: HttpClient> ContractTransport<H> {
    /// Requests to `endpoint` with the project's credentials, through `http`. `sdk_name` goes
    /// in the SDK name header (e.g. `backfill-python`).
    pub fn over(
        http: H,
        endpoint: &str,
        client_id: &str,
        client_secret: &str,
        sdk_name: &str,
    ) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            sdk_name: sdk_name.to_owned(),
        }
    }

    fn caught(
        exchange: impl FnOnce() -> Result<HttpResponse, NetworkError>,
    ) -> Result<Reply, NetworkError> {
        match catch_unwind(AssertUnwindSafe(exchange)) {
            Ok(response) => response.map(Reply::from),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(NetworkError(format!("the HTTP client panicked: {what}")))
            }
        }
    }
}

impl<H: HttpClient> Transport for ContractTransport<H> {
    fn post_batch(&self, body: Vec<u8>, gzip: bool) -> Result<Reply, NetworkError> {
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            (CLIENT_ID_HEADER.to_owned(), self.client_id.clone()),
            (CLIENT_SECRET_HEADER.to_owned(), self.client_secret.clone()),
            (SDK_NAME_HEADER.to_owned(), self.sdk_name.clone()),
            (
                SDK_VERSION_HEADER.to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
        ];
        if gzip {
            headers.push(("content-encoding".to_owned(), "gzip".to_owned()));
        }
        let url = format!("{}/track/batch", self.endpoint);
        Self::caught(|| self.http.post(&url, headers, body))
    }

    fn probe(&self) -> Result<Reply, NetworkError> {
        let url = format!("{}/healthz", self.endpoint);
        Self::caught(|| self.http.get(&url, Vec::new()))
    }
}

impl From<HttpResponse> for Reply {
    fn from(response: HttpResponse) -> Self {
        let header_secs = |name: &str| {
            response
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
        };
        Reply {
            status: response.status,
            retry_after: header_secs("retry-after"),
            max_event_age: header_secs(MAX_EVENT_AGE_HEADER),
            body: response.body,
        }
    }
}

#[cfg(feature = "http")]
pub use builtin::{HttpTransport, ReqwestClient};

#[cfg(feature = "http")]
mod builtin {
    use super::*;

    /// The built-in HTTP transport: the contract's requests over [`ReqwestClient`].
    pub type HttpTransport = ContractTransport<ReqwestClient>;

    impl HttpTransport {
        /// A transport for `endpoint` with the project's credentials.
        pub fn new(
            endpoint: &str,
            client_id: &str,
            client_secret: &str,
            timeout: Duration,
        ) -> Result<Self, NetworkError> {
            Ok(ContractTransport::over(
                ReqwestClient::new(timeout)?,
                endpoint,
                client_id,
                client_secret,
                "backfill-core",
            ))
        }
    }

    /// reqwest with rustls. Holds its own small runtime, so it can be called from any plain
    /// thread, from several at once.
    pub struct ReqwestClient {
        runtime: tokio::runtime::Runtime,
        client: reqwest::Client,
    }

    impl ReqwestClient {
        /// A client whose requests time out after `timeout`.
        pub fn new(timeout: Duration) -> Result<Self, NetworkError> {
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
                // A redirect is answered, not followed: following one would send the client
                // secret to whatever host it names (a captive portal, a parked domain), and turn
                // the POST into a GET. The drain reports it as a wrong endpoint (SPEC §9).
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| NetworkError(format!("cannot build the HTTP client: {e}")))?;
            Ok(Self { runtime, client })
        }

        fn run(&self, request: reqwest::RequestBuilder) -> Result<HttpResponse, NetworkError> {
            // Called from inside an async runtime (an app calling `flush` from a task), blocking
            // on another runtime would panic: do it on a scoped thread instead.
            if tokio::runtime::Handle::try_current().is_ok() {
                return std::thread::scope(|s| s.spawn(|| self.exchange(request)).join())
                    .unwrap_or_else(|_| {
                        Err(NetworkError("the request thread panicked".to_owned()))
                    });
            }
            self.exchange(request)
        }

        fn exchange(&self, request: reqwest::RequestBuilder) -> Result<HttpResponse, NetworkError> {
            self.runtime.block_on(async {
                let response = request.send().await.map_err(|e| cause(&e))?;
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                let mut response = response;
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| cause(&e))? {
                    let room = MAX_ANSWER_BYTES - body.len();
                    if chunk.len() >= room {
                        body.extend_from_slice(&chunk[..room]);
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(HttpResponse {
                    status,
                    headers,
                    body,
                })
            })
        }

        fn with_headers(
            mut request: reqwest::RequestBuilder,
            headers: Vec<(String, String)>,
        ) -> reqwest::RequestBuilder {
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request
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
        } else if io_kind == Some(std::io::ErrorKind::ConnectionRefused)
            || lower.contains("refused")
        {
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

    impl HttpClient for ReqwestClient {
        fn post(
            &self,
            url: &str,
            headers: Vec<(String, String)>,
            body: Vec<u8>,
        ) -> Result<HttpResponse, NetworkError> {
            self.run(Self::with_headers(self.client.post(url), headers).body(body))
        }

        fn get(
            &self,
            url: &str,
            headers: Vec<(String, String)>,
        ) -> Result<HttpResponse, NetworkError> {
            self.run(Self::with_headers(self.client.get(url), headers))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A request as asked: the URL and the headers.
    type Asked = (String, Vec<(String, String)>);

    /// Records what it was asked and answers as told.
    struct Scripted {
        asked: Mutex<Vec<Asked>>,
        answer: fn() -> Result<HttpResponse, NetworkError>,
    }

    impl HttpClient for Scripted {
        fn post(
            &self,
            url: &str,
            headers: Vec<(String, String)>,
            _body: Vec<u8>,
        ) -> Result<HttpResponse, NetworkError> {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push((url.to_owned(), headers));
            }
            (self.answer)()
        }

        fn get(
            &self,
            url: &str,
            headers: Vec<(String, String)>,
        ) -> Result<HttpResponse, NetworkError> {
            self.post(url, headers, Vec::new())
        }
    }

    fn over(answer: fn() -> Result<HttpResponse, NetworkError>) -> ContractTransport<Scripted> {
        let http = Scripted {
            asked: Mutex::new(Vec::new()),
            answer,
        };
        ContractTransport::over(http, "http://h.example/", "id", "secret", "backfill-test")
    }

    #[test]
    fn requests_carry_the_contract_headers_and_answers_are_read() {
        let t = over(|| {
            Ok(HttpResponse {
                status: 503,
                headers: vec![
                    ("Retry-After".into(), "7".into()),
                    ("Backfill-Max-Event-Age".into(), "604800".into()),
                ],
                body: b"{}".to_vec(),
            })
        });
        let reply = t.post_batch(b"{}".to_vec(), true).expect("answer");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(reply.max_event_age, Some(Duration::from_secs(604_800)));
        t.probe().expect("probe");
        let asked = t.http.asked.lock().expect("lock").clone();
        assert_eq!(asked[0].0, "http://h.example/track/batch");
        let header = |name: &str| {
            asked[0]
                .1
                .iter()
                .find(|(n, _)| n == name)
                .map(|h| h.1.clone())
        };
        assert_eq!(header(CLIENT_ID_HEADER).as_deref(), Some("id"));
        assert_eq!(header(CLIENT_SECRET_HEADER).as_deref(), Some("secret"));
        assert_eq!(header("content-encoding").as_deref(), Some("gzip"));
        assert_eq!(header(SDK_NAME_HEADER).as_deref(), Some("backfill-test"));
        assert_eq!(
            asked[1],
            ("http://h.example/healthz".to_owned(), Vec::new())
        );
    }

    #[test]
    fn a_panicking_http_client_is_a_network_error() {
        let t = over(|| panic!("socket gone"));
        let e = t.post_batch(Vec::new(), false).expect_err("no answer");
        assert!(
            e.0.contains("panicked") && e.0.contains("socket gone"),
            "{e}"
        );
    }
}
