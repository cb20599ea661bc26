//! The wrappers as a host app uses them, in Rust: a host HTTP stack that answers, fails or
//! panics; errors as the host sees them; closing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backfill_core::upload::transport::{self, ReqwestClient};
use backfill_e2e::{PROJECT, SECRET, TestServer, now_ms};
use backfill_ffi::{
    BackfillClient, BackfillConfig, BackfillError, DrainEnd, HttpClient, HttpError, HttpResponse,
};

fn config(server: &TestServer, db: &std::path::Path) -> BackfillConfig {
    BackfillConfig {
        endpoint: server.url(),
        client_id: PROJECT.to_owned(),
        client_secret: SECRET.to_owned(),
        database_path: db.to_string_lossy().into_owned(),
        device_id: None,
        flush_threshold: None,
        flush_interval_ms: None,
        max_batch_events: None,
        max_batch_bytes: None,
        max_buffer_events: None,
        max_buffer_bytes: None,
        max_database_bytes: None,
        compress: None,
        session_timeout_ms: None,
        retry_base_ms: None,
        retry_cap_ms: None,
        request_timeout_ms: None,
        background_upload: Some(false),
    }
}

/// A host HTTP stack built on the core's reqwest client, counting its calls.
struct Host {
    http: ReqwestClient,
    posts: AtomicUsize,
}

impl Host {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            http: ReqwestClient::new(Duration::from_secs(10)).expect("client"),
            posts: AtomicUsize::new(0),
        })
    }
}

fn answer(
    r: Result<transport::HttpResponse, transport::NetworkError>,
) -> Result<HttpResponse, HttpError> {
    r.map(|r| HttpResponse {
        status: r.status,
        headers: r.headers.into_iter().collect(),
        body: r.body,
    })
    .map_err(|e| HttpError::Failed { reason: e.0 })
}

impl HttpClient for Host {
    fn post(
        &self,
        url: String,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpError> {
        use transport::HttpClient as _;
        self.posts.fetch_add(1, Ordering::Relaxed);
        answer(self.http.post(&url, headers.into_iter().collect(), body))
    }

    fn get(
        &self,
        url: String,
        headers: HashMap<String, String>,
    ) -> Result<HttpResponse, HttpError> {
        use transport::HttpClient as _;
        answer(self.http.get(&url, headers.into_iter().collect()))
    }
}

/// A host HTTP stack that never gets an answer: it raises, or it panics.
struct Broken {
    panics: bool,
}

impl HttpClient for Broken {
    fn post(
        &self,
        _: String,
        _: HashMap<String, String>,
        _: Vec<u8>,
    ) -> Result<HttpResponse, HttpError> {
        if self.panics {
            panic!("the host's stack panicked");
        }
        // What uniffi makes of an exception the host's code raises.
        Err(uniffi::UnexpectedUniFFICallbackError::new("java.net.ConnectException: refused").into())
    }

    fn get(
        &self,
        url: String,
        headers: HashMap<String, String>,
    ) -> Result<HttpResponse, HttpError> {
        self.post(url, headers, Vec::new())
    }
}

#[test]
fn events_upload_through_the_hosts_http_stack() {
    let server = TestServer::start(5, None);
    let host = Host::new();
    let client = BackfillClient::new(
        config(&server, &server.dir.path().join("sdk.db")),
        Some(host.clone()),
    )
    .expect("open");
    let at = now_ms() - 60_000;
    let id = client
        .track(
            "reading".into(),
            r#"{"temp": 21.5}"#.into(),
            Some(at),
            Some("sensor-7".into()),
            None,
        )
        .expect("track");
    client
        .track("tap".into(), String::new(), None, None, None)
        .expect("no properties");
    let report = client.flush().expect("flush");
    assert_eq!((report.sent, report.end), (2, DrainEnd::Empty));
    assert!(
        host.posts.load(Ordering::Relaxed) >= 1,
        "the host's stack sent it"
    );
    let stored = server.events("name=reading");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["insert_id"], serde_json::json!(id));
    assert_eq!(stored[0]["device_id"], serde_json::json!("sensor-7"));
    assert_eq!(stored[0]["properties"]["temp"], serde_json::json!(21.5));
}

#[test]
fn track_utf8_records_what_track_records_and_names_bytes_that_are_not_utf8() {
    let server = TestServer::start(5, None);
    let host = Host::new();
    let client = BackfillClient::new(
        config(&server, &server.dir.path().join("sdk.db")),
        Some(host),
    )
    .expect("open");
    let id = client
        .track_utf8(
            "réading".as_bytes(),
            r#"{"temp": 21.5, "place": "Zürich"}"#.as_bytes(),
        )
        .expect("track_utf8");
    client.track_utf8(b"tap", b"").expect("no properties");
    for (name, props, says) in [
        (&b"r\xff"[..], &b"{}"[..], "event name is not UTF-8"),
        (
            b"r",
            b"{\"k\": \"\xc3\"}",
            "properties' JSON text is not UTF-8",
        ),
        (b"r", b"[1]", "JSON object"),
        (b"", b"{}", "name"),
        (b"  ", b"{}", "whitespace"),
    ] {
        match client.track_utf8(name, props) {
            Err(BackfillError::InvalidArgument(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("{name:?} {props:?}: {other:?}"),
        }
    }
    assert_eq!(client.flush().expect("flush").sent, 2, "only the valid two");
    let stored = server.events("name=r%C3%A9ading");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["insert_id"], serde_json::json!(id));
    assert_eq!(
        stored[0]["device_id"],
        serde_json::json!(client.device_id())
    );
    assert_eq!(stored[0]["properties"]["temp"], serde_json::json!(21.5));
    assert_eq!(
        stored[0]["properties"]["place"],
        serde_json::json!("Zürich")
    );
    assert_eq!(server.events("name=tap").len(), 1);
    client.close();
    assert_eq!(
        client.track_utf8(b"late", b"{}"),
        Err(BackfillError::Closed)
    );
}

#[test]
fn a_raising_or_panicking_http_stack_is_a_network_failure_that_keeps_the_events() {
    for panics in [false, true] {
        let server = TestServer::start(5, None);
        let db = server.dir.path().join("sdk.db");
        let client = BackfillClient::new(config(&server, &db), Some(Arc::new(Broken { panics })))
            .expect("open");
        client
            .track("kept".into(), "{}".into(), None, None, None)
            .expect("track");
        let report = client
            .flush()
            .expect("a failed upload is not an error of flush");
        assert!(
            matches!(report.end, DrainEnd::RetryLater { .. }),
            "{report:?}"
        );
        let stats = client.stats().expect("stats");
        assert_eq!(stats.buffered, 1, "the event stays");
        let said = stats.last_error.unwrap_or_default();
        assert!(said.contains("deferred"), "{said}");
        client.close();
        let again = BackfillClient::new(config(&server, &db), Some(Host::new())).expect("open");
        assert_eq!(again.flush().expect("flush").sent, 1, "panics: {panics}");
    }
}

#[test]
fn a_callback_exception_reads_as_a_network_error() {
    let e: HttpError = uniffi::UnexpectedUniFFICallbackError::new("IOException: timeout").into();
    assert_eq!(
        e,
        HttpError::Failed {
            reason: "the HTTP client raised: IOException: timeout".into()
        }
    );
}

#[test]
fn errors_say_what_to_fix_in_the_variant_a_host_acts_on() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("sdk.db");
    let client = BackfillClient::new(config(&server, &db), Some(Host::new())).expect("open");
    for (props, says) in [("[1]", "JSON object"), ("{", "not valid JSON")] {
        match client.track("x".into(), props.into(), None, None, None) {
            Err(BackfillError::InvalidArgument(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("{props}: {other:?}"),
        }
    }
    assert!(matches!(
        client.track("a\nb".into(), "{}".into(), None, None, None),
        Err(BackfillError::InvalidArgument(_))
    ));
    let bad = BackfillConfig {
        endpoint: "ftp://x".into(),
        ..config(&server, &db)
    };
    match BackfillClient::new(bad, Some(Host::new())) {
        Err(BackfillError::InvalidArgument(m)) => assert!(m.contains("endpoint"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    client.close();
    assert_eq!(
        client.track("after".into(), "{}".into(), None, None, None),
        Err(BackfillError::Closed)
    );
    assert_eq!(client.flush().err(), Some(BackfillError::Closed));
}

#[cfg(not(feature = "http"))]
#[test]
fn a_build_without_http_asks_for_the_hosts_stack() {
    let server = TestServer::start(5, None);
    match BackfillClient::new(config(&server, &server.dir.path().join("sdk.db")), None) {
        Err(BackfillError::InvalidArgument(m)) => assert!(m.contains("http_client"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
}
