//! The real `backfill-server` binary against clients that misbehave, by mistake or on purpose:
//! answers given before a body is read, odd paths and parameters, stalled connections.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use backfill_server::clock::SystemClock;
use backfill_server::metrics::Metrics;
use backfill_server::store::sqlite::{SqliteOptions, SqliteStore};
use backfill_server::{AppState, Timeouts, app, auth, connections};
use serde_json::Value;

const ROOT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
const ROOT_SECRET: &str = "hostile-root-secret";
const READER: &str = "6a1f0c7e-2d3b-4e5f-8a9b-0c1d2e3f4a5b";
const READER_SECRET: &str = "hostile-read-secret";

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary on `data_dir` with a root and a read client given on the command line.
fn spawn(data_dir: &Path) -> Server {
    spawn_with(
        data_dir,
        &[
            "--project",
            &format!("{ROOT}:{ROOT_SECRET}:root"),
            "--project",
            &format!("{READER}:{READER_SECRET}:read"),
        ],
    )
}

fn spawn_with(data_dir: &Path, args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_backfill-server"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("BACKFILL_PROJECTS")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a first line on stdout");
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .expect("first line names the address")
        .to_owned();
    Server { child, addr }
}

/// An answer read off a raw connection.
struct Answer {
    status: u16,
    /// Header names lower-cased, values as sent.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the contract's error body (SPEC §2) with `status`.
    fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["status"], status, "{}", self.body);
        assert!(self.body["error"].is_string(), "{}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
    }
}

fn connect(server: &Server) -> TcpStream {
    connect_to(&server.addr)
}

fn connect_to(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
}

/// Reads one answer with a `content-length` body from `stream`.
fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read the answer's head");
        assert_eq!(n, 1, "the connection closed inside an answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read the body");
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// Whether the server closes `stream` (within the read timeout) rather than waiting for more.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Sends `head` (request line and headers, without the blank line) and the blank line.
fn send_head(stream: &mut TcpStream, head: &str) {
    stream
        .write_all(format!("{head}\r\nHost: test\r\n\r\n").as_bytes())
        .expect("send");
}

fn get(server: &Server, target: &str, id: &str, secret: &str) -> Answer {
    let mut stream = connect(server);
    send_head(
        &mut stream,
        &format!(
            "GET {target} HTTP/1.1\r\nopenpanel-client-id: {id}\r\nopenpanel-client-secret: {secret}"
        ),
    );
    read_answer(&mut stream)
}

#[test]
fn an_answer_given_before_the_body_is_read_closes_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn(dir.path());
    // Each request announces a body the server refuses before reading it: the answer must say
    // so with `Connection: close`, or a keep-alive client sends its next request on a
    // connection the server has given up on, and meets a broken pipe instead of an answer.
    let cases = [
        (
            "wrong secret",
            format!("openpanel-client-id: {ROOT}\r\nopenpanel-client-secret: wrong"),
            "",
            401,
        ),
        (
            "a read key",
            format!("openpanel-client-id: {READER}\r\nopenpanel-client-secret: {READER_SECRET}"),
            "",
            403,
        ),
        (
            "an unknown encoding",
            format!("openpanel-client-id: {ROOT}\r\nopenpanel-client-secret: {ROOT_SECRET}"),
            "\r\ncontent-encoding: br",
            415,
        ),
    ];
    for (what, credentials, extra, status) in cases {
        for path in ["/track/batch", "/track"] {
            let mut stream = connect(&server);
            send_head(
                &mut stream,
                &format!(
                    "POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n{credentials}{extra}"
                ),
            );
            let answer = read_answer(&mut stream);
            answer.assert_error(status);
            assert_eq!(
                answer.header("connection"),
                Some("close"),
                "{what} on {path}: {:?}",
                answer.headers
            );
            assert!(closed_by_server(&mut stream), "{what} on {path}");
        }
    }
    // Declared over the limit: 413, and the connection closes too.
    let mut stream = connect(&server);
    send_head(
        &mut stream,
        &format!(
            "POST /track/batch HTTP/1.1\r\ncontent-length: 20000000\r\nopenpanel-client-id: {ROOT}\r\nopenpanel-client-secret: {ROOT_SECRET}"
        ),
    );
    let answer = read_answer(&mut stream);
    answer.assert_error(413);
    assert_eq!(answer.header("connection"), Some("close"));
}

#[test]
fn a_profile_path_or_parameter_the_route_cannot_take_is_the_contracts_400() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn(dir.path());
    // `%FF` decodes to a byte that is not UTF-8.
    let answer = get(&server, "/api/profiles/%FF", READER, READER_SECRET);
    answer.assert_error(400);
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("UTF-8")),
        "{}",
        answer.body
    );
    // Credentials are checked first, as on every other route.
    get(&server, "/api/profiles/%FF", READER, "wrong").assert_error(401);
    // The route takes no parameter: a typo is not silently ignored.
    let answer = get(
        &server,
        "/api/profiles/u1?devce_id=x",
        READER,
        READER_SECRET,
    );
    answer.assert_error(400);
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("devce_id")),
        "{}",
        answer.body
    );
    get(&server, "/api/profiles/u1", READER, READER_SECRET).assert_error(404);
}

#[test]
fn a_time_with_an_unencoded_plus_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn(dir.path());
    // As typed in a shell: the `+` of the offset becomes a space in a query string.
    for route in ["/api/events", "/api/sessions"] {
        let answer = get(
            &server,
            &format!("{route}?from=2026-11-29T10:00:00+01:00"),
            READER,
            READER_SECRET,
        );
        answer.assert_error(400);
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("%2B")),
            "{}",
            answer.body
        );
        let encoded = get(
            &server,
            &format!("{route}?from=2026-11-29T10:00:00%2B01:00"),
            READER,
            READER_SECRET,
        );
        assert_eq!(encoded.status, 200, "{}", encoded.body);
    }
}

/// Serves a store in `dir` over a real socket with `timeouts`, as `backfill-server` does with
/// its defaults; returns the address and the sender that starts the shutdown.
async fn serve_with(
    dir: &Path,
    timeouts: Timeouts,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let options = SqliteOptions {
        clock: Arc::new(SystemClock),
        commit_latency: None,
    };
    let store: Arc<dyn backfill_server::store::Store> =
        Arc::new(SqliteStore::open(&dir.join("backfill.db"), options).expect("store"));
    let root = format!("{ROOT}:{ROOT_SECRET}:root")
        .parse()
        .expect("credential");
    auth::bootstrap(store.as_ref(), &[root], 0)
        .await
        .expect("bootstrap");
    let state = AppState::new(
        store,
        Arc::new(SystemClock),
        Arc::new(Metrics::default()),
        5,
        None,
    )
    .await
    .expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(connections::serve(
        app(state),
        listener,
        async {
            let _ = rx.await;
        },
        timeouts,
    ));
    (addr, tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_is_disconnected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let timeouts = Timeouts {
        header_read: Duration::from_millis(300),
        body_idle: Duration::from_millis(300),
        shutdown_grace: Duration::from_secs(5),
    };
    let (addr, stop, task) = serve_with(dir.path(), timeouts).await;
    let checks = tokio::task::spawn_blocking(move || {
        // A head that never ends (no credentials needed to hold a connection this way).
        let mut head = connect_to(&addr);
        head.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            .expect("send");
        assert!(closed_by_server(&mut head), "a stalled head is dropped");

        // A body that stops half way: 408 with the error body, and the connection closes.
        let mut body = connect_to(&addr);
        send_head(
            &mut body,
            &format!(
                "POST /track/batch HTTP/1.1\r\ncontent-length: 100\r\nopenpanel-client-id: {ROOT}\r\nopenpanel-client-secret: {ROOT_SECRET}"
            ),
        );
        body.write_all(b"{\"events\": [").expect("send");
        let answer = read_answer(&mut body);
        answer.assert_error(408);
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(closed_by_server(&mut body));

        // The server still answers others.
        let mut fine = connect_to(&addr);
        send_head(&mut fine, "GET /healthz HTTP/1.1");
        assert_eq!(read_answer(&mut fine).status, 200);
    });
    checks.await.expect("checks");
    let _ = stop.send(());
    task.await.expect("join").expect("served");
}

#[test]
fn sigterm_does_not_wait_on_connections_that_carry_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = spawn(dir.path());
    // One client connected and sent nothing; another sent half a request head. Neither has a
    // request in flight, so neither may hold the shutdown (it waited on them for ever).
    let _silent = connect(&server);
    let mut half = connect(&server);
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        .expect("send");
    // A request answered on the same server before the signal.
    let mut fine = connect(&server);
    send_head(&mut fine, "GET /healthz HTTP/1.1");
    assert_eq!(read_answer(&mut fine).status, 200);
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    // Polled rather than awaited, so that a server that hangs fails the test instead of
    // hanging it; the bound is far above a prompt exit and below the 20 s shutdown grace.
    let mut exit = None;
    for _ in 0..150 {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            exit = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = exit.expect("the server exits after SIGTERM without waiting on idle clients");
    assert!(exit.success(), "{exit:?}");
}

/// `backfill-server --data-dir <dir> project <args>`.
fn project(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backfill-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("project")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run")
}

/// The secret a `project create|rotate` printed.
fn printed_secret(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("client secret:"))
        .map(|s| s.trim().to_owned())
        .expect("a secret printed")
}

/// The status of one `POST /track` with `id` and `secret`.
fn track_status(server: &Server, id: &str, secret: &str) -> u16 {
    let mut stream = connect(server);
    let body = r#"{"type":"track","payload":{"name":"x"}}"#;
    stream
        .write_all(
            format!(
                "POST /track HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nopenpanel-client-id: {id}\r\nopenpanel-client-secret: {secret}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .expect("send");
    read_answer(&mut stream).status
}

#[test]
fn a_second_rotation_does_not_silently_refuse_the_secret_apps_still_ship() {
    let dir = tempfile::tempdir().expect("tempdir");
    let created = project(dir.path(), &["create", "--mode", "write"]);
    let original = printed_secret(&created);
    let id = String::from_utf8_lossy(&created.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("client id:"))
        .map(|s| s.trim().to_owned())
        .expect("an id printed");
    let first = printed_secret(&project(
        dir.path(),
        &["rotate", &id, "--grace-hours", "48"],
    ));
    // Run twice by mistake (or after losing the first output): the apps still ship the
    // original secret, which a second rotation would refuse at once, 48 hours early.
    let again = project(dir.path(), &["rotate", &id, "--grace-hours", "48"]);
    assert!(!again.status.success(), "a second rotation is refused");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("still rotating") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("client secret"),
        "no secret is printed for a refused rotation"
    );
    let server = spawn_with(dir.path(), &[]);
    let status = |secret: &str| track_status(&server, &id, secret);
    assert_eq!(status(&original), 200, "the original secret still works");
    assert_eq!(status(&first), 200);
    // Forced, the rotation goes ahead and says what it does: the original is refused.
    let forced = printed_secret(&project(
        dir.path(),
        &["rotate", &id, "--grace-hours", "48", "--force"],
    ));
    drop(server);
    let server = spawn_with(dir.path(), &[]);
    let status = |secret: &str| track_status(&server, &id, secret);
    assert_eq!(status(&original), 401);
    assert_eq!(status(&first), 200, "the secret this rotation replaced");
    assert_eq!(status(&forced), 200);
}

#[test]
fn a_closed_stdout_does_not_stop_a_first_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A pipe whose reader has already exited, as `backfill-server | head -1` leaves it: every
    // write to it fails. `true` reads nothing and exits.
    let mut reader = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn true");
    let closed = reader.stdin.take().expect("pipe");
    reader.wait().expect("true exits");
    let mut child = Command::new(env!("CARGO_BIN_EXE_backfill-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("BACKFILL_PROJECTS")
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(closed))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    // The server runs on, and says on stderr what it could not show (never the secret).
    let mut said = Vec::new();
    let addr = lines
        .find_map(|line| {
            let v: Value = serde_json::from_str(&line).ok()?;
            said.push(v.clone());
            (v["message"] == "serving").then(|| v["addr"].as_str().map(str::to_owned))?
        })
        .expect("a serving line with the address");
    let server = Server { child, addr };
    let mut stream = connect(&server);
    send_head(&mut stream, "GET /healthz HTTP/1.1");
    assert_eq!(read_answer(&mut stream).status, 200);
    let told = said.iter().any(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not be shown"))
    });
    assert!(told, "{said:?}");
    assert!(
        !said.iter().any(|v| v.to_string().contains("sec_")),
        "no secret on stderr"
    );
}

#[test]
fn a_browsers_preflight_is_counted_as_a_preflight_not_as_an_unknown_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn(dir.path());
    let mut stream = connect(&server);
    send_head(
        &mut stream,
        "OPTIONS /track/batch HTTP/1.1\r\norigin: https://app.example\r\naccess-control-request-method: POST\r\naccess-control-request-headers: openpanel-client-id, openpanel-client-secret, content-type",
    );
    let answer = read_answer(&mut stream);
    assert_eq!(answer.status, 200);
    assert!(answer.header("access-control-allow-origin").is_some());
    let mut stream = connect(&server);
    send_head(&mut stream, "GET /nope HTTP/1.1");
    read_answer(&mut stream).assert_error(404);
    let mut stream = connect(&server);
    send_head(&mut stream, "GET /metrics HTTP/1.1");
    let metrics = read_answer(&mut stream).body;
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains("backfill_http_requests_total{route=\"preflight\",status=\"200\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("backfill_http_requests_total{route=\"unmatched\",status=\"404\"} 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("route=\"unmatched\",status=\"200\""),
        "{metrics}"
    );
}
