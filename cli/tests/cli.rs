//! The `backfill` binary as scripts use it: exit codes, output, and what reaches the server.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use backfill_server::clock::SystemClock;
use backfill_server::read_client::ReadClient;
use serde_json::Value;

const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
const SECRET: &str = "cli-test-secret";

fn backfill(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    backfill_as(None, args, stdin, env)
}

/// The `backfill` binary `bin` run as the user and group `uid` (without supplementary groups)
/// through util-linux's `setpriv`; or the test's binary as this process's user when `None`.
fn backfill_as(
    user: Option<(u32, &Path)>,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = match user {
        None => Command::new(env!("CARGO_BIN_EXE_backfill")),
        Some((uid, bin)) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(bin);
            cmd
        }
    };
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "BACKFILL_ENDPOINT",
        "BACKFILL_CLIENT_ID",
        "BACKFILL_CLIENT_SECRET",
        "BACKFILL_DB",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run backfill");
    if let Some(mut input) = child.stdin.take() {
        // A command that refuses its arguments may end before it reads its input.
        if let Err(e) = input.write_all(stdin.unwrap_or("").as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "stdin: {e}");
        }
    }
    child.wait_with_output().expect("wait")
}

fn status_json(db: &Path) -> Value {
    let out = backfill(
        &["status", "--db", db.to_str().expect("path"), "--json"],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

struct Server {
    runtime: tokio::runtime::Runtime,
    server: Option<backfill_server::RunningServer>,
}

impl Server {
    fn start(data: &Path, project: &str, secret: &str) -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let config = backfill_server::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data.to_owned(),
            max_event_age_days: 5,
            projects: vec![format!("{project}:{secret}").parse().expect("project")],
            ..Default::default()
        };
        let server = runtime
            .block_on(backfill_server::start(&config, Arc::new(SystemClock), None))
            .expect("start");
        Self {
            runtime,
            server: Some(server),
        }
    }

    /// A server whose store refuses (reason `validation`) every event named `refused`.
    fn start_refusing(data: &Path, refused: &'static str) -> Self {
        use backfill_server::store::fault::FaultInjector;
        use backfill_server::store::sqlite::{SqliteOptions, SqliteStore};
        use backfill_server::store::{RowAction, RowOutcome, Store};
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let options = SqliteOptions {
            clock: Arc::new(SystemClock),
            commit_latency: None,
        };
        std::fs::create_dir_all(data).expect("data dir");
        let inner: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&data.join("refusing.db"), options).expect("store"));
        let store = FaultInjector::new(inner, move |row| match &row.action {
            RowAction::Event(e) if e.name == refused => {
                Some(RowOutcome::Invalid("refused by the test's rule".into()))
            }
            _ => None,
        });
        let config = backfill_server::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data.to_owned(),
            max_event_age_days: 5,
            projects: vec![format!("{PROJECT}:{SECRET}").parse().expect("project")],
            ..Default::default()
        };
        let server = runtime
            .block_on(backfill_server::start(
                &config,
                Arc::new(SystemClock),
                Some(Arc::new(store)),
            ))
            .expect("start");
        Self {
            runtime,
            server: Some(server),
        }
    }

    fn url(&self) -> String {
        self.server.as_ref().map(|s| s.url()).unwrap_or_default()
    }

    fn count(&self, project: &str, secret: &str, name: &str) -> usize {
        let reader = ReadClient::new(&self.url(), project, secret);
        self.runtime
            .block_on(reader.events(&format!("name={name}")))
            .expect("read API")
            .len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = self.runtime.block_on(s.stop());
        }
    }
}

fn readings(n: usize) -> String {
    let now = backfill_protocol::clock::Clock::now_ms(&SystemClock);
    (0..n)
        .map(|i| format!("{{\"name\":\"reading\",\"properties\":{{\"temp\":{i}}},\"timestamp\":{},\"device_id\":\"s{}\"}}\n", now - 60_000 * i as i64, i % 3))
        .collect()
}

#[test]
fn demo_exits_0_and_its_numbers_match_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("path");
    let out = backfill(
        &[
            "demo",
            "--data-dir",
            data,
            "--days",
            "2",
            "--sensors",
            "3",
            "--json",
        ],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["recorded"], 3 * 2 * 1440);
    assert_eq!(summary["stored_events"], 3 * 2 * 1440);
    assert_eq!(summary["exact"], true);
    assert_eq!(summary["refused_at_record"], 3);
    // The demo's server kept its store: start it again and count for ourselves.
    let server = Server::start(
        &dir.path().join("server"),
        "0d3a9d8e-5f7c-4a1b-9e2d-6c4b8a7f1e30",
        "demo-secret-not-for-production",
    );
    assert_eq!(
        server.count(
            "0d3a9d8e-5f7c-4a1b-9e2d-6c4b8a7f1e30",
            "demo-secret-not-for-production",
            "reading"
        ),
        3 * 2 * 1440
    );
}

#[test]
fn enqueue_refuses_a_malformed_line_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let out = backfill(&["enqueue", "--db", db_arg, "-"], Some(&readings(3)), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status_json(&db)["buffered_events"], 3);

    let mut bad = readings(2);
    bad.push_str("{\"name\":\"reading\",\"timestamp\":\"not a time\"}\n");
    bad.push_str(&readings(1));
    let out = backfill(&["enqueue", "--db", db_arg], Some(&bad), &[]);
    assert_eq!(out.status.code(), Some(65), "bad data");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(
        status_json(&db)["buffered_events"],
        3,
        "nothing half-written"
    );

    let csv = "name,timestamp,device_id,temp\nreading,,s1,20.5\nsession_start,,s1,1\n";
    let out = backfill(&["enqueue", "--db", db_arg], Some(csv), &[]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    assert_eq!(status_json(&db)["buffered_events"], 3);
}

#[test]
fn drain_empties_the_buffer_into_a_real_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let file = dir.path().join("readings.csv");
    std::fs::write(
        &file,
        "name,device_id,temp\nreading,s1,20.5\nreading,s2,21\nreading,s3,19.75\n",
    )
    .expect("write");
    let out = backfill(
        &["enqueue", "--db", db_arg, file.to_str().expect("path")],
        None,
        &[],
    );
    assert!(out.status.success());
    let url = server.url();
    let env = [
        ("BACKFILL_ENDPOINT", url.as_str()),
        ("BACKFILL_CLIENT_ID", PROJECT),
        ("BACKFILL_CLIENT_SECRET", "wrong"),
    ];
    let out = backfill(&["drain", "--db", db_arg], None, &env);
    assert_eq!(out.status.code(), Some(77), "refused credentials");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wrong client secret") && err.contains("BACKFILL_CLIENT_SECRET"),
        "the server's reason and what to check: {err}"
    );
    assert_eq!(status_json(&db)["buffered_events"], 3, "data kept");
    assert!(
        status_json(&db)["stats"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("wrong client secret")),
        "status says it too"
    );

    let env = [
        ("BACKFILL_ENDPOINT", url.as_str()),
        ("BACKFILL_CLIENT_ID", PROJECT),
        ("BACKFILL_CLIENT_SECRET", SECRET),
    ];
    let out = backfill(&["drain", "--db", db_arg], None, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sent 3 events"), "{stdout}");
    assert!(
        !stdout.contains(SECRET) && !String::from_utf8_lossy(&out.stderr).contains(SECRET),
        "secrets never printed"
    );
    let status = status_json(&db);
    assert_eq!(status["buffered_events"], 0);
    assert_eq!(status["stats"]["sent"], 3);
    assert_eq!(server.count(PROJECT, SECRET, "reading"), 3);

    let out = backfill(&["enqueue", "--db", db_arg], Some(&readings(2)), &[]);
    assert!(out.status.success());
    let unreachable = [
        ("BACKFILL_ENDPOINT", "http://127.0.0.1:9"),
        ("BACKFILL_CLIENT_ID", PROJECT),
        ("BACKFILL_CLIENT_SECRET", SECRET),
    ];
    let out = backfill(&["drain", "--db", db_arg], None, &unreachable);
    assert_eq!(out.status.code(), Some(69), "unreachable: try again later");
    assert_eq!(status_json(&db)["buffered_events"], 2);
}

#[test]
fn status_reports_a_missing_buffer_and_a_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("none.db");
    let out = backfill(&["status", "--db", db.to_str().expect("path")], None, &[]);
    assert_eq!(out.status.code(), Some(66));
    assert!(!db.exists(), "status creates nothing");
    let out = backfill(
        &["drain", "--db", db.to_str().expect("path")],
        None,
        &creds("http://127.0.0.1:9"),
    );
    assert_eq!(
        out.status.code(),
        Some(66),
        "a mistyped --db is not a new buffer"
    );
    assert!(!db.exists(), "drain creates nothing either");
    let out = backfill(
        &["enqueue", "--db", db.to_str().expect("path")],
        Some(&readings(2)),
        &[],
    );
    assert!(out.status.success());
    let files = listing(dir.path());
    let out = backfill(&["status", "--db", db.to_str().expect("path")], None, &[]);
    assert!(out.status.success());
    assert_eq!(listing(dir.path()), files, "status leaves no file behind");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("buffered        2 events"), "{text}");
    let json = status_json(&db);
    assert!(
        json["oldest_event"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
}

fn creds(url: &str) -> [(&str, &str); 3] {
    [
        ("BACKFILL_ENDPOINT", url),
        ("BACKFILL_CLIENT_ID", PROJECT),
        ("BACKFILL_CLIENT_SECRET", SECRET),
    ]
}

fn enqueue(db: &Path, input: &str) {
    let out = backfill(
        &["enqueue", "--db", db.to_str().expect("path")],
        Some(input),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_wrong_endpoint_keeps_every_reading_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(2500));
    for wrong in [
        format!("{}/v1", server.url()),
        format!("{}/track/batch", server.url()),
    ] {
        let out = backfill(
            &["drain", "--db", db_arg, "--until-empty"],
            None,
            &creds(&wrong),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{wrong}: {err}");
        assert!(err.contains("base URL"), "{err}");
        let status = status_json(&db);
        assert_eq!(status["buffered_events"], 2500, "{wrong}: {status}");
        assert!(
            status["stats"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("404")),
            "status says why uploads stopped: {status}"
        );
        assert_eq!(status["stats"]["dead_lettered"], 0, "{wrong}: {status}");
    }
    let out = backfill(&["drain", "--db", db_arg], None, &creds(&server.url()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.count(PROJECT, SECRET, "reading"), 2500);
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

#[test]
fn a_file_that_is_not_a_buffer_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let log = work.join("readings.ndjson");
    let text = readings(3);
    std::fs::write(&log, &text).expect("write");
    let log_arg = log.to_str().expect("path");
    let url = server.url();
    let runs: [(&[&str], Option<&str>); 4] = [
        (&["status", "--db", log_arg], None),
        (&["status", "--db", log_arg, "--json"], None),
        (&["enqueue", "--db", log_arg], Some(text.as_str())),
        (&["drain", "--db", log_arg], None),
    ];
    for (args, stdin) in runs {
        let out = backfill(args, stdin, &creds(&url));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{args:?}: {err}");
        assert!(err.contains("not a Backfill buffer"), "{args:?}: {err}");
        assert_eq!(
            std::fs::read_to_string(&log).expect("read"),
            text,
            "{args:?}: the file is untouched"
        );
        assert_eq!(
            listing(&work),
            ["readings.ndjson"],
            "{args:?}: nothing created"
        );
    }

    // Another program's SQLite database is not a buffer either.
    let other = work.join("app.sqlite");
    {
        let conn = rusqlite::Connection::open(&other).expect("sqlite");
        conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);")
            .expect("table");
    }
    let before = std::fs::read(&other).expect("read");
    let out = backfill(
        &["enqueue", "--db", other.to_str().expect("path")],
        Some(&text),
        &[],
    );
    assert_eq!(out.status.code(), Some(74));
    assert!(std::fs::read(&other).expect("read") == before, "unchanged");

    // A damaged buffer: status reports it and moves nothing.
    let damaged = work.join("damaged.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend(std::iter::repeat_n(0xA5u8, 8192));
    std::fs::write(&damaged, &bytes).expect("write");
    let out = backfill(
        &["status", "--db", damaged.to_str().expect("path")],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(74));
    assert!(
        std::fs::read(&damaged).expect("read") == bytes,
        "status moves nothing"
    );
    assert_eq!(
        listing(&work),
        ["app.sqlite", "damaged.db", "readings.ndjson"]
    );
}

/// Waits for `done` to hold, checking every 50 ms, for at most `limit`.
fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

/// What a watcher started by [`spawn_watch`] said on stderr, for a failing test's message.
fn watch_log(db: &Path) -> String {
    std::fs::read_to_string(db.with_extension("watch.log")).unwrap_or_default()
}

fn spawn_watch(db: &Path, url: &str) -> std::process::Child {
    let log = std::fs::File::create(db.with_extension("watch.log")).expect("watch log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backfill"));
    cmd.args([
        "drain",
        "--db",
        db.to_str().expect("path"),
        "--watch",
        "--interval",
        "1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    for (k, v) in creds(url) {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn drain --watch")
}

#[test]
fn one_drain_per_buffer_and_a_killed_one_leaves_no_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(10));
    let mut watcher = spawn_watch(&db, &server.url());
    assert!(
        wait_until(std::time::Duration::from_secs(60), || server
            .count(PROJECT, SECRET, "reading")
            == 10),
        "the watcher drains: {}",
        watch_log(&db)
    );
    enqueue(&db, &readings(5));
    let out = backfill(&["drain", "--db", db_arg], None, &creds(&server.url()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains(&format!("another drain (process {})", watcher.id())),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "the refused drain sent nothing");
    watcher.kill().expect("kill");
    watcher.wait().expect("reaped");
    let out = backfill(
        &["drain", "--db", db_arg, "--until-empty"],
        None,
        &creds(&server.url()),
    );
    assert!(
        out.status.success(),
        "the lock died with its holder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.count(PROJECT, SECRET, "reading"), 15);
    assert_eq!(status_json(&db)["buffered_events"], 0);
}

#[test]
fn drain_watch_sends_readings_another_process_enqueues() {
    watch_drains_after(
        |_, db| enqueue(db, &readings(3)),
        4,
        "readings enqueued by another process are drained",
    );
}

/// Starts `drain --watch` on a buffer holding one reading, waits until the server has it, runs
/// `then` (given the test's directory and the buffer's path), and expects the server to reach
/// `total` readings (`what` says what that shows) and the buffer to end empty.
fn watch_drains_after(then: impl FnOnce(&Path, &Path), total: usize, what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    enqueue(&db, &readings(1));
    let mut watcher = spawn_watch(&db, &server.url());
    let drained = |n| {
        wait_until(std::time::Duration::from_secs(60), || {
            server.count(PROJECT, SECRET, "reading") == n
        })
    };
    assert!(
        drained(1),
        "the first reading is drained: {}",
        watch_log(&db)
    );
    then(dir.path(), &db);
    let seen = drained(total);
    // The server stores before the watcher settles its buffer: it is stopped once it has.
    wait_until(std::time::Duration::from_secs(60), || {
        status_json(&db)["buffered_events"] == 0
    });
    watcher.kill().expect("kill");
    watcher.wait().expect("reaped");
    assert!(seen, "{what}: {}", watch_log(&db));
    assert_eq!(status_json(&db)["buffered_events"], 0);
}

#[test]
fn expiry_is_loud_and_has_its_exit_code_and_epoch_seconds_are_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    let now_s = backfill_protocol::clock::Clock::now_ms(&SystemClock) / 1000;
    // A week of hourly readings in epoch seconds, as many loggers write them.
    let week: String = (0..7 * 24)
        .map(|h| {
            format!(
                "{{\"name\":\"reading\",\"timestamp\":{},\"device_id\":\"s1\"}}\n",
                now_s - 3600 * h - 60
            )
        })
        .collect();
    let out = backfill(
        &["enqueue", "--db", db.to_str().expect("path")],
        Some(&week),
        &[],
    );
    assert!(out.status.success());
    let warned = text(&out).1;
    assert!(
        warned.contains("48 readings") && warned.contains("5-day age window"),
        "said at once: {warned}"
    );
    let out = backfill(
        &["drain", "--db", db.to_str().expect("path"), "--until-empty"],
        None,
        &creds(&server.url()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    // Readings older than 5 days (120 hours) expire: hours 120 to 167.
    assert!(err.contains("48 events were older"), "{err}");
    assert!(err.contains("5-day age window"), "{err}");
    assert!(err.contains("--max-event-age-days"), "{err}");
    assert_eq!(
        server.count(PROJECT, SECRET, "reading"),
        120,
        "seconds were read as seconds, not as milliseconds of 1970"
    );
    let status = status_json(&db);
    assert_eq!(status["stats"]["expired"], 48);
    assert_eq!(status["buffered_events"], 0);
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dead_letters_past_the_bound_are_counted_exported_and_requeued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_refusing(&dir.path().join("server"), "poison");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let now = backfill_protocol::clock::Clock::now_ms(&SystemClock);
    let input: String = (0..10)
        .map(|i| {
            let name = if i < 7 { "poison" } else { "reading" };
            format!(
                "{{\"name\":\"{name}\",\"properties\":{{\"i\":{i}}},\"timestamp\":{},\"device_id\":\"s1\"}}\n",
                now - 60_000 * (10 - i)
            )
        })
        .collect();
    enqueue(&db, &input);
    let out = backfill(
        &["drain", "--db", db_arg, "--max-dead-letters", "5"],
        None,
        &creds(&server.url()),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("7 dead-lettered"), "{stdout}");
    let status = status_json(&db);
    assert_eq!(status["stats"]["dead_lettered"], 7);
    assert_eq!(status["stats"]["dead_letters_evicted"], 2, "{status}");
    let out = backfill(&["status", "--db", db_arg], None, &[]);
    let (table, _) = text(&out);
    assert!(table.contains("2 of them evicted"), "{table}");

    let out = backfill(&["dead-letters", "export", "--db", db_arg], None, &[]);
    let (exported, reasons) = text(&out);
    assert!(out.status.success(), "{reasons}");
    let lines: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), 5, "{exported}");
    let is: Vec<i64> = lines
        .iter()
        .map(|l| l["properties"]["i"].as_i64().expect("i"))
        .collect();
    assert_eq!(is, [2, 3, 4, 5, 6], "the newest 5, oldest first");
    assert!(
        lines
            .iter()
            .all(|l| l["insert_id"].is_string() && l["name"] == "poison")
    );
    assert!(reasons.contains("refused by the test's rule"), "{reasons}");
    assert!(
        reasons.contains("2 older dead letters were evicted"),
        "{reasons}"
    );
    // What is exported is enqueue's format.
    let out = backfill(
        &["enqueue", "--db", db_arg, "--dry-run"],
        Some(&exported),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out).1);

    let out = backfill(&["dead-letters", "requeue", "--db", db_arg], None, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("requeued 5"));
    let status = status_json(&db);
    assert_eq!(status["buffered_events"], 5);
    assert_eq!(status["dead_letters"].as_array().map(Vec::len), Some(0));
}

#[test]
fn replaying_a_log_is_harmless_with_insert_ids_or_a_dedup_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let now_s = backfill_protocol::clock::Clock::now_ms(&SystemClock) / 1000;
    let log: String = (0..20)
        .map(|i| {
            format!(
                "{{\"name\":\"reading\",\"properties\":{{\"temp\":{i}}},\"timestamp\":{},\"device_id\":\"s{}\"}}\n",
                now_s - 60 * i,
                i % 3
            )
        })
        .collect();
    let with_ids = "name,timestamp,insert_id,temp\nlabelled,2026-11-29T10:00:00Z,log-0001,1\nlabelled,2026-11-29T10:01:00Z,log-0002,2\n";
    for _ in 0..2 {
        let out = backfill(
            &["enqueue", "--db", db_arg, "--dedup-key", "content"],
            Some(&log),
            &[],
        );
        assert!(out.status.success(), "{}", text(&out).1);
        enqueue(&db, with_ids);
        let out = backfill(&["drain", "--db", db_arg], None, &creds(&server.url()));
        assert!(out.status.success(), "{}", text(&out).1);
    }
    assert_eq!(server.count(PROJECT, SECRET, "reading"), 20, "stored once");
    let status = status_json(&db);
    assert_eq!(status["stats"]["sent"], 44);
    assert_eq!(
        status["stats"]["duplicates"], 22,
        "the replay came back as duplicates"
    );
    // A reading without a timestamp has no stable identity.
    let out = backfill(
        &["enqueue", "--db", db_arg, "--dedup-key", "content"],
        Some("{\"name\":\"reading\"}\n"),
        &[],
    );
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out).1.contains("needs a timestamp"));
}

#[test]
fn input_quirks_are_read_as_a_user_means_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let out = backfill(
        &["enqueue", "--db", db_arg],
        Some("\u{feff}{\"name\":\"reading\"}\n"),
        &[],
    );
    assert!(
        out.status.success(),
        "a BOM before NDJSON: {}",
        text(&out).1
    );
    let csv = "name,iccid,code,note\nreading,89014103211118510720,007,\"two\nlines\"\nreading,1,2,3\nsession_start,1,2,3\n";
    let out = backfill(&["enqueue", "--db", db_arg], Some(csv), &[]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        text(&out).1.contains("line 5"),
        "the physical line: {}",
        text(&out).1
    );
    let csv = "name,iccid,code\nreading,89014103211118510720,007\n";
    enqueue(&db, csv);
    let out = backfill(&["inspect", "--db", db_arg, "--json"], None, &[]);
    let last = text(&out)
        .0
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .find(|r| r["properties"]["iccid"].is_string());
    let last = last.expect("the CSV reading");
    assert_eq!(last["properties"]["iccid"], "89014103211118510720");
    assert_eq!(last["properties"]["code"], "007");
    for empty in ["", "name,temp\n"] {
        let out = backfill(&["enqueue", "--db", db_arg], Some(empty), &[]);
        assert!(out.status.success());
        assert!(text(&out).1.contains("empty"), "{}", text(&out).1);
    }
    let out = backfill(
        &[
            "enqueue",
            "--db",
            db_arg,
            &dir.path().join("nope.csv").to_string_lossy(),
        ],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(66), "a missing input file");
    assert_eq!(status_json(&db)["buffered_events"], 2);
}

#[test]
fn causes_are_named_and_bad_endpoints_refused_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    let url = server.url();
    for (endpoint, says) in [
        (format!("{url} "), "spaces"),
        (url.trim_start_matches("http://").to_owned(), "http"),
        (format!("{url}/track/batch"), "base URL"),
    ] {
        let out = backfill(&["drain", "--db", db_arg], None, &creds(&endpoint));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(78), "{endpoint:?}: {err}");
        assert!(err.contains(says), "{endpoint:?}: {err}");
    }
    let refused = "http://127.0.0.1:9";
    let out = backfill(&["drain", "--db", db_arg], None, &creds(refused));
    assert_eq!(out.status.code(), Some(69));
    assert!(
        text(&out).1.contains("connection refused"),
        "{}",
        text(&out).1
    );
    let tls = url.replace("http://", "https://");
    let out = backfill(&["drain", "--db", db_arg], None, &creds(&tls));
    assert_eq!(out.status.code(), Some(69));
    assert!(text(&out).1.contains("TLS"), "{}", text(&out).1);
    let status = status_json(&db);
    assert_eq!(
        status["stats"]["requests"], 0,
        "only answered requests count"
    );
    assert_eq!(status["buffered_events"], 3);
}

#[test]
fn until_empty_names_its_wait_and_ctrl_c_prints_the_summary() {
    stopped_by("INT", 130, "interrupted");
}

#[test]
fn sigterm_prints_the_summary_like_ctrl_c() {
    stopped_by("TERM", 143, "stopped (SIGTERM)");
}

/// Drains into a closed port until it waits to retry, sends `signal`, and expects `code` with
/// the summary saying `says`.
fn stopped_by(signal: &str, code: i32, says: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    enqueue(&db, &readings(3));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backfill"));
    cmd.args(["drain", "--db", db.to_str().expect("path"), "--until-empty"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in creds("http://127.0.0.1:9") {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("retrying in"))
        .expect("a line while it waits");
    assert!(
        first.contains("connection refused") && first.contains("retrying in"),
        "{first}"
    );
    // The shell's own `kill`: no procps needed on the machine.
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -{signal} {}", child.id())])
        .status()
        .expect("kill");
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(code), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains(says) && l.contains("3 left")),
        "{rest:?}"
    );
}

#[test]
fn a_closed_pipe_ends_quietly_and_help_shows_the_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    enqueue(&db, &readings(3000));
    let mut child = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args([
            "inspect",
            "--db",
            db.to_str().expect("path"),
            "--limit",
            "3000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("one line");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let help = backfill(&["--help"], None, &[]);
    assert!(help.status.success());
    for code in ["65", "66", "69", "74", "75", "77", "78", "130", "143"] {
        assert!(text(&help).0.contains(code), "--help lists {code}");
    }
    let wrong = backfill(&["drain", "--no-such-flag"], None, &[]);
    assert_eq!(wrong.status.code(), Some(64));
}

#[test]
fn dry_runs_touch_nothing_and_limits_evict_the_oldest_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let out = backfill(
        &["enqueue", "--db", db_arg, "--dry-run"],
        Some(&readings(5)),
        &[],
    );
    assert!(out.status.success());
    assert!(text(&out).0.contains("5 readings are valid"));
    assert!(!db.exists(), "a dry run creates nothing");
    enqueue(&db, &readings(5));
    let out = backfill(
        &["enqueue", "--db", db_arg, "--max-rows", "6"],
        Some(&readings(3)),
        &[],
    );
    assert!(out.status.success());
    assert!(
        text(&out).1.contains("the 2 oldest events were evicted"),
        "{}",
        text(&out).1
    );
    assert_eq!(status_json(&db)["stats"]["evicted"], 2);
    let out = backfill(
        &["drain", "--db", db_arg, "--dry-run"],
        None,
        &creds("http://127.0.0.1:9"),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("6 events"), "{}", text(&out).0);
    assert_eq!(status_json(&db)["buffered_events"], 6);
    let quiet = backfill(&["-q", "enqueue", "--db", db_arg], Some(&readings(1)), &[]);
    assert!(quiet.status.success() && quiet.stdout.is_empty());
}

/// A stub HTTP server outside the project (a proxy, a portal, another host): answers every
/// request with `answer` (status line, headers and body, without the final CRLFs) and counts
/// the requests it read.
fn stub(answer: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = (&stream).write_all(format!("{answer}\r\n\r\n").as_bytes());
        }
    });
    (url, hits)
}

#[test]
fn a_redirect_is_a_wrong_endpoint_and_the_secret_never_follows_it() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    // Another host (a captive portal's login page, a parked domain) that must never see the
    // client secret.
    let (elsewhere, elsewhere_hits) = stub(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 5\r\nconnection: close\r\n\r\nlogin"
            .to_owned(),
    );
    for code in [
        "301 Moved Permanently",
        "302 Found",
        "307 Temporary Redirect",
        "308 Permanent Redirect",
    ] {
        let (redirector, _) = stub(format!(
            "HTTP/1.1 {code}\r\nlocation: {elsewhere}/login\r\ncontent-length: 0\r\nconnection: close"
        ));
        let out = backfill(&["drain", "--db", db_arg], None, &creds(&redirector));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(78), "{code}: {err}");
        assert!(err.contains("redirect"), "{code}: {err}");
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            0,
            "{code}: the redirect was followed"
        );
        assert_eq!(status_json(&db)["buffered_events"], 3);
    }
}

#[test]
fn enqueue_names_the_line_of_invalid_utf8_and_refuses_ambiguous_csv_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let file = dir.path().join("readings");
    let file_arg = file.to_str().expect("path");
    // A Latin-1 "é" on the third line of an otherwise good log.
    let mut latin1 = readings(2).into_bytes();
    latin1.extend_from_slice(b"{\"name\":\"caf\xe9\"}\n");
    std::fs::write(&file, &latin1).expect("write");
    let out = backfill(&["enqueue", "--db", db_arg, file_arg], None, &[]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("line 3") && err.contains("UTF-8"), "{err}");
    // Two columns of one name: one of the values would be lost.
    for (csv, says) in [
        ("name,temp,temp\nreading,1,2\n", "\"temp\""),
        ("name,,temp\nreading,1,2\n", "column 2"),
    ] {
        std::fs::write(&file, csv).expect("write");
        let out = backfill(&["enqueue", "--db", db_arg, file_arg], None, &[]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(65), "{csv:?}: {err}");
        assert!(
            err.contains("line 1") && err.contains(says),
            "{csv:?}: {err}"
        );
    }
    assert!(!db.exists(), "nothing was written");
}

#[test]
fn a_file_size_limit_is_reported_as_a_full_disk_and_keeps_the_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(10));
    let input = dir.path().join("many.ndjson");
    std::fs::write(&input, readings(5000)).expect("write");
    // `ulimit -f` counts 512-byte blocks: 256 KiB, past the buffer's size after 10 readings
    // and short of 5000 more.
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 512 && exec \"$0\" enqueue --db \"$1\" \"$2\"")
        .arg(env!("CARGO_BIN_EXE_backfill"))
        .arg(db_arg)
        .arg(&input)
        .output()
        .expect("run backfill under ulimit -f");
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(err.contains("nothing was added"), "{err}");
    assert!(
        err.contains("ulimit -f"),
        "the likely causes are named: {err}"
    );
    assert_eq!(status_json(&db)["buffered_events"], 10);
}

#[test]
fn messages_carry_no_terminal_colours_into_a_log_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(500));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open the buffer");
    file.set_len(3000).expect("truncate the buffer");
    let out = backfill(&["enqueue", "--db", db_arg], Some(&readings(1)), &[]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("corrupt"),
        "the damaged buffer is named: {err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "no escape codes in a pipe: {err:?}"
    );
}

#[test]
fn status_forgets_the_last_error_once_a_drain_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"), PROJECT, SECRET);
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    let wrong = format!("{}/v1", server.url());
    let out = backfill(&["drain", "--db", db_arg], None, &creds(&wrong));
    assert_eq!(out.status.code(), Some(78), "{}", text(&out).1);
    assert!(status_json(&db)["stats"]["last_error"].is_string());
    let out = backfill(&["drain", "--db", db_arg], None, &creds(&server.url()));
    assert!(out.status.success(), "{}", text(&out).1);
    let status = status_json(&db);
    assert_eq!(status["buffered_events"], 0);
    assert!(
        status["stats"]["last_error"].is_null(),
        "a fixed endpoint no longer shows as paused: {status}"
    );
}

#[test]
fn enqueue_warns_about_readings_stamped_in_the_future() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let mut input = readings(2);
    input.push_str("{\"name\":\"reading\",\"timestamp\":\"2099-01-01T00:00:00Z\"}\n");
    let out = backfill(&["enqueue", "--db", db_arg], Some(&input), &[]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 readings are stamped in the future") && err.contains("line 3"),
        "{err}"
    );
    assert_eq!(status_json(&db)["buffered_events"], 3, "kept all the same");
    let out = backfill(&["enqueue", "--db", db_arg], Some(&readings(2)), &[]);
    assert!(!text(&out).1.contains("future"), "{}", text(&out).1);
}

#[test]
fn a_buffer_missing_a_table_is_refused_with_74_not_called_a_bug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("DROP TABLE counters"))
        .expect("damage the buffer");
    for args in [
        vec!["status", "--db", db_arg],
        vec!["enqueue", "--db", db_arg, "-"],
        vec!["drain", "--db", db_arg],
    ] {
        let out = backfill(&args, Some(&readings(1)), &creds("http://127.0.0.1:9"));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(74), "{args:?}: {err}");
        assert!(err.contains("move it aside"), "{args:?}: {err}");
    }
    let events: i64 = rusqlite::Connection::open(&db)
        .and_then(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get(0)))
        .expect("count");
    assert_eq!(events, 3, "nothing lost");
}

#[test]
fn a_directory_as_the_buffer_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_arg = dir.path().to_str().expect("path");
    for args in [
        vec!["status", "--db", db_arg],
        vec!["inspect", "--db", db_arg],
        vec!["enqueue", "--db", db_arg, "-"],
        vec!["drain", "--db", db_arg],
        vec!["dead-letters", "export", "--db", db_arg],
        vec!["dead-letters", "requeue", "--db", db_arg],
    ] {
        let out = backfill(&args, Some(&readings(1)), &creds("http://127.0.0.1:9"));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(66), "{args:?}: {err}");
        assert!(
            err.contains("is a directory") && err.contains("gw.db"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        listing(dir.path()),
        Vec::<String>::new(),
        "nothing created in it"
    );
}

#[test]
fn an_integer_too_long_to_keep_exactly_is_refused_not_rounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let input = "{\"name\":\"sim\",\"properties\":{\"note\":\"89014103211118510720\",\"n\":-12}}\n\
                 {\"name\":\"sim\",\"properties\":{\"iccid\":89014103211118510720}}\n";
    let out = backfill(&["enqueue", "--db", db_arg], Some(input), &[]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("line 2") && err.contains("\"89014103211118510720\""),
        "{err}"
    );
    assert!(!db.exists());
    let exact = "{\"name\":\"sim\",\"properties\":{\"iccid\":\"89014103211118510720\",\
                 \"max\":18446744073709551615,\"min\":-9223372036854775808,\"f\":1.5e300}}\n";
    let out = backfill(&["enqueue", "--db", db_arg], Some(exact), &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = backfill(&["inspect", "--db", db_arg, "--json"], None, &[]);
    let reading: Value = serde_json::from_slice(&out.stdout).expect("inspect --json");
    assert_eq!(reading["properties"]["iccid"], "89014103211118510720");
    assert_eq!(reading["properties"]["max"], u64::MAX);
    assert_eq!(reading["properties"]["min"], i64::MIN);
}

#[test]
fn drain_watch_follows_a_buffer_replaced_under_it() {
    watch_drains_after(
        |dir, db| {
            // An operator starts afresh: the old buffer is moved away with its WAL and
            // shared-memory files, as the README says; a new one begins.
            std::fs::rename(db, dir.join("old.db")).expect("move the buffer aside");
            for suffix in ["-wal", "-shm"] {
                let file = format!("{}{suffix}", db.display());
                if Path::new(&file).exists() {
                    std::fs::rename(&file, dir.join(format!("old.db{suffix}"))).expect("move");
                }
            }
            enqueue(db, &readings(2));
        },
        3,
        "the new buffer's readings are drained",
    );
}

#[test]
fn enqueue_from_a_terminal_says_it_waits_for_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    // `script` (util-linux) gives the command a terminal; Ctrl-D (EOT) ends its input.
    let mut child = Command::new("script")
        .args(["-qefc"])
        .arg(format!(
            "{} enqueue --db {}",
            env!("CARGO_BIN_EXE_backfill"),
            db.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"{\"name\":\"typed\"}\n\x04")
        .expect("type");
    let out = child.wait_with_output().expect("wait");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Ctrl-D"), "{said}");
    assert_eq!(status_json(&db)["buffered_events"], 1);
}

#[test]
fn a_proxy_refusing_gzip_is_named_with_the_way_around_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    let (proxy, _) = stub(
        "HTTP/1.1 415 Unsupported Media Type\r\ncontent-type: text/html\r\ncontent-length: 6\r\nconnection: close\r\n\r\n<html>"
            .to_owned(),
    );
    let out = backfill(&["drain", "--db", db_arg], None, &creds(&proxy));
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("--no-gzip"), "{err}");
    assert_eq!(status_json(&db)["buffered_events"], 3);
}

#[test]
fn csv_with_crlf_and_quoted_line_breaks_names_the_right_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    for (csv, line) in [
        (
            "name,note,timestamp\r\na,\"x\r\ny\",\r\nb,z,notatime\r\n",
            "line 4:",
        ),
        (
            "\u{feff}name,note\r\n\r\na,\"x\r\ny\"\r\nb,z,1\r\n",
            "line 5:",
        ),
    ] {
        let out = backfill(&["enqueue", "--db", db_arg], Some(csv), &[]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(65), "{csv:?}: {err}");
        assert!(err.contains(line), "{csv:?}: {err}");
        assert!(!err.contains("(line:"), "one line number only: {err}");
    }
}

#[test]
fn a_quote_left_open_to_the_end_of_a_csv_is_refused_naming_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    for csv in [
        "name,note\nok,\"oops\nok,a\nok,b\n",
        "name,note\r\nok,x\r\nok,\"oops\r\nok,a\r\n",
    ] {
        let out = backfill(&["enqueue", "--db", db_arg], Some(csv), &[]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(65), "{csv:?}: {err}");
        let line = if csv.contains("ok,x") {
            "line 3"
        } else {
            "line 2"
        };
        assert!(
            err.contains(line) && err.contains("never closed"),
            "{csv:?}: {err}"
        );
        assert!(!db.exists(), "nothing enqueued");
    }
    // A quoted cell whose line break is closed, and a quote inside a cell that is not quoted,
    // are readings like any other.
    let out = backfill(
        &["enqueue", "--db", db_arg],
        Some("name,note\nok,\"two\nlines\"\nok,5\" screen\n"),
        &[],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(status_json(&db)["buffered_events"], 2);
}

#[test]
fn a_property_backfill_sets_itself_is_refused_not_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    for (input, says) in [
        (
            "{\"name\":\"a\"}\n{\"name\":\"a\",\"properties\":{\"__insertId\":\"x-1\"}}\n",
            "line 2",
        ),
        ("name,__timestamp\na,2026-01-01T00:00:00Z\n", "line 1"),
    ] {
        let out = backfill(&["enqueue", "--db", db_arg], Some(input), &[]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(65), "{input:?}: {err}");
        assert!(
            err.contains(says) && err.contains("field"),
            "{input:?}: {err}"
        );
    }
    assert!(!db.exists());
}

#[test]
fn a_closed_stderr_ends_with_the_exit_code_not_a_panic() {
    use std::os::fd::OwnedFd;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(2));
    let run = |args: &[&str], env: &[(&str, &str)]| {
        // A stderr whose reader has already gone: every write fails with EPIPE.
        let (stderr, reader) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        drop(reader);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backfill"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(OwnedFd::from(stderr)));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.status().expect("run backfill").code()
    };
    assert_eq!(
        run(&["enqueue", "--db", db_arg, "/nonexistent.ndjson"], &[]),
        Some(66)
    );
    assert_eq!(
        run(&["drain", "--db", db_arg], &creds("http://127.0.0.1:9")),
        Some(69)
    );
    assert_eq!(status_json(&db)["buffered_events"], 2);
}

#[test]
fn buffer_bounds_too_small_for_the_input_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let out = backfill(
        &["enqueue", "--db", db_arg, "--max-rows", "0"],
        Some(&readings(1)),
        &[],
    );
    assert_eq!(out.status.code(), Some(64), "a wrong flag is a usage error");
    // No reading is bad: the bound is too small for the input, which is refused whole.
    let file = dir.path().join("r.csv");
    let csv: String = std::iter::once("name,temp\n".to_owned())
        .chain((0..10).map(|i| format!("r,{i}\n")))
        .collect();
    std::fs::write(&file, csv).expect("write");
    let file_arg = file.to_str().expect("path");
    for args in [
        &["enqueue", "--db", db_arg, "--max-rows", "3", file_arg][..],
        &[
            "enqueue",
            "--db",
            db_arg,
            "--max-rows",
            "3",
            "--dry-run",
            file_arg,
        ],
    ] {
        let out = backfill(args, None, &[]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            err.contains("more than 3 readings")
                && err.contains("Raise --max-rows")
                && err.contains("smaller parts")
                && !err.contains("line "),
            "{args:?}: {err}"
        );
        assert!(!db.exists(), "{args:?}: a refused input creates no buffer");
    }
    // Past the first readings, and into a buffer that holds some: left as it was.
    enqueue(&db, &readings(2));
    let before = buffer_rows(&db);
    for (bound, value, says) in [
        ("--max-rows", "1200", "more than 1200 readings"),
        ("--max-bytes", "100KiB", "more than 100.0 KiB of event JSON"),
    ] {
        let out = backfill(
            &["enqueue", "--db", db_arg, bound, value],
            Some(&readings(1500)),
            &[],
        );
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(
            err.contains(says) && err.contains(&format!("Raise {bound}")),
            "{err}"
        );
        assert_eq!(buffer_rows(&db), before, "nothing added, nothing evicted");
    }
}

/// Runs `backfill enqueue --db DB FILE` and returns its exit code, its stderr and its peak
/// resident memory in KiB: `ru_maxrss` of the children of a process whose only child it is
/// (Python's `resource` module: `getrusage` and `wait4` are `unsafe` in Rust, which this
/// workspace forbids, and `/usr/bin/time` is not everywhere).
fn enqueue_measured(db: &Path, file: &Path) -> (Option<i32>, String, i64) {
    const PEAK: &str = "import resource, subprocess, sys\n\
        code = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode\n\
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
        sys.exit(code)\n";
    let out = Command::new("python3")
        .args([
            "-c",
            PEAK,
            env!("CARGO_BIN_EXE_backfill"),
            "enqueue",
            "--db",
        ])
        .arg(db)
        .arg(file)
        .output()
        .expect("python3 (which CI installs) runs backfill and reports its peak memory");
    let peak = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("ru_maxrss");
    (out.status.code(), text(&out).1, peak)
}

/// A buffered row as stored: its place in the drain order, its insert id and its body.
type Row = (i64, String, String);

/// Every buffered row as stored, and the counters.
fn buffer_rows(db: &Path) -> (Vec<Row>, Vec<(String, i64)>) {
    let conn = rusqlite::Connection::open(db).expect("open the buffer");
    let rows = conn
        .prepare("SELECT seq, insert_id, body FROM events ORDER BY seq")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("rows");
    let counters = conn
        .prepare("SELECT name, value FROM counters ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("counters");
    (rows, counters)
}

#[test]
fn enqueue_memory_is_bounded_by_a_chunk_not_by_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut peaks = Vec::new();
    for n in [25_000, 100_000] {
        let file = dir.path().join(format!("{n}.ndjson"));
        std::fs::write(&file, readings(n)).expect("write");
        let db = dir.path().join(format!("{n}.db"));
        let (code, err, peak_kib) = enqueue_measured(&db, &file);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(status_json(&db)["buffered_events"], n);
        peaks.push(peak_kib);
    }
    let (small, large) = (peaks[0], peaks[1]);
    eprintln!("peak RSS: {small} KiB for 25k readings, {large} KiB for 100k");
    // Read whole, 4x the readings took about 3.5x the memory (58 MiB for 50k readings, 200
    // MiB for 200k); streamed, the peak hardly moves.
    assert!(
        large < small + small / 2,
        "peak RSS {large} KiB for 100k readings against {small} KiB for 25k: memory grows \
         with the input"
    );
}

#[test]
fn a_bad_line_or_a_storage_fault_past_the_first_chunk_leaves_the_buffer_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(10));
    // Evictions would change the buffer too: the bound makes room for the input by
    // evicting the 10 readings, unless the input is refused.
    let before = buffer_rows(&db);
    assert_eq!(before.0.len(), 10);
    let mut input = readings(4_990);
    input.push_str("{\"name\":\"reading\",\"timestamp\":\"yesterday\"}\n");
    input.push_str(&readings(9));
    let out = backfill(
        &["enqueue", "--db", db_arg, "--max-rows", "5000"],
        Some(&input),
        &[],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("line 4991") && err.contains("nothing was added"),
        "{err}"
    );
    assert_eq!(buffer_rows(&db), before, "rows and counters unchanged");

    // The disk fills (here a file-size limit of 2 MiB) while 12,000 readings are written.
    let good = dir.path().join("good.ndjson");
    std::fs::write(&good, readings(12_000)).expect("write");
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 4096 && exec \"$0\" enqueue --db \"$1\" \"$2\"")
        .arg(env!("CARGO_BIN_EXE_backfill"))
        .arg(db_arg)
        .arg(&good)
        .output()
        .expect("run backfill under ulimit -f");
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(
        err.contains("nothing was added") && err.contains("ulimit -f"),
        "{err}"
    );
    assert_eq!(buffer_rows(&db), before, "rows and counters unchanged");
    // And without the limit, the same file goes in whole.
    let (code, err, _) = enqueue_measured(&db, &good);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(status_json(&db)["buffered_events"], 12_010);
}

#[test]
fn an_enqueue_while_another_writes_says_the_buffer_is_busy_and_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    let before = buffer_rows(&db);
    // Another process holds the write lock, as an enqueue reading a large log does.
    let mut writer = rusqlite::Connection::open(&db).expect("open the buffer");
    let held = writer
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("take the write lock");
    let out = backfill(&["enqueue", "--db", db_arg], Some(&readings(2)), &[]);
    drop(held);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains("another process is writing to it") && err.contains("nothing was added"),
        "{err}"
    );
    assert_eq!(buffer_rows(&db), before);
    enqueue(&db, &readings(2));
    assert_eq!(status_json(&db)["buffered_events"], 5);
}

#[test]
fn an_enqueue_still_reading_its_input_leaves_the_buffer_free_for_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    let mut slow = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(["enqueue", "--db", db_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut pipe = slow.stdin.take().expect("stdin");
    // Far more than a pipe holds: once written, the slow enqueue has read most of it.
    std::io::Write::write_all(&mut pipe, readings(5000).as_bytes()).expect("write");
    // Its producer has not finished; another enqueue and a reader go on meanwhile.
    let out = backfill(&["enqueue", "--db", db_arg], Some(&readings(2)), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_eq!(status_json(&db)["buffered_events"], 5);
    // The spool has no name in the directory: a killed enqueue leaves nothing behind.
    let named: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|f| !f.starts_with("gw."))
        .collect();
    assert!(named.is_empty(), "{named:?}");
    drop(pipe);
    let out = slow.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_eq!(status_json(&db)["buffered_events"], 5005);
}

/// Whether this test may run commands as other users: as root, with `setpriv`. Says why not
/// when it cannot (root ignores file permissions, so the test means nothing as root without
/// switching users, and only root may switch).
fn can_switch_users(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && setpriv) {
        eprintln!(
            "{test}: SKIPPED: it runs backfill as other users, which needs root and setpriv \
             (util-linux); root: {root}, setpriv: {setpriv}"
        );
    }
    root && setpriv
}

/// Sets the permission bits of `path` (as root: whoever owns it).
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Users without a name on most systems: `nobody`, and one more.
const OWNER: u32 = 65534;
const OTHER: u32 = 65533;

/// `status --json`, `inspect` and `dead-letters export` run from `bin` as `uid`: each must
/// succeed and leave `dir` as it was; returns the buffered count `status` gave.
fn read_as(uid: u32, bin: &Path, db: &Path, dir: &Path) -> u64 {
    let before = listing(dir);
    let db_arg = db.to_str().expect("path");
    let mut buffered = None;
    for args in [
        &["status", "--db", db_arg, "--json"][..],
        &["inspect", "--db", db_arg],
        &["dead-letters", "export", "--db", db_arg],
    ] {
        let out = backfill_as(Some((uid, bin)), args, None, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?} as user {uid}: {}",
            text(&out).1
        );
        assert_eq!(
            listing(dir),
            before,
            "{args:?} as user {uid} changed {dir:?}"
        );
        if args[0] == "status" {
            let status: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            buffered = status["buffered_events"].as_u64();
        }
    }
    buffered.expect("status gave a count")
}

/// Whether user `uid` may search `path` (reach what is in it).
fn reaches(uid: u32, path: &Path) -> bool {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "test", "-x"])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn readers_create_and_change_nothing_whoever_runs_them() {
    const TEST: &str = "readers_create_and_change_nothing_whoever_runs_them";
    if !can_switch_users(TEST) {
        return;
    }
    // A temporary directory other users can reach (TMPDIR may be under a home of mode 0700),
    // holding the binary when they cannot reach the build's (a clone under such a home).
    let mut dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o755);
    if !reaches(OWNER, dir.path()) {
        dir = tempfile::tempdir_in("/tmp").expect("tempdir in /tmp");
        chmod(dir.path(), 0o755);
    }
    let mut bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_backfill"));
    if !backfill_as(Some((OWNER, &bin)), &["--version"], None, &[])
        .status
        .success()
    {
        let copy = dir.path().join("backfill");
        if std::fs::hard_link(&bin, &copy).is_err() {
            std::fs::copy(&bin, &copy).expect("copy the binary");
        }
        bin = copy;
    }
    if !backfill_as(Some((OWNER, &bin)), &["--version"], None, &[])
        .status
        .success()
    {
        eprintln!(
            "{TEST}: SKIPPED: user {OWNER} cannot run {} (a parent directory of {} others may \
             not search)",
            bin.display(),
            dir.path().display()
        );
        return;
    }
    let bin = bin.as_path();

    // A directory the reader cannot write, the buffer closed (no -wal, no -shm): SQLite's
    // usual read-only open would need to create them.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    let db = locked.join("gw.db");
    enqueue(&db, &readings(3));
    chmod(&db, 0o644);
    assert_eq!(listing(&locked), ["gw.db"]);
    assert_eq!(read_as(OWNER, bin, &db, &locked), 3);

    // The same while a writer has it open, with events still in its -wal file.
    let writer = rusqlite::Connection::open(&db).expect("open the buffer");
    writer
        .query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
        .expect("read");
    enqueue(&db, &readings(2));
    assert_eq!(listing(&locked), ["gw.db", "gw.db-shm", "gw.db-wal"]);
    assert!(
        std::fs::metadata(locked.join("gw.db-wal"))
            .expect("wal")
            .len()
            > 0
    );
    assert_eq!(
        read_as(OWNER, bin, &db, &locked),
        5,
        "the -wal file's events count"
    );

    // A -wal file without its -shm (a writer killed while closing): it cannot be read without
    // creating a -shm file, and the reader says who can.
    let crashed = dir.path().join("crashed");
    std::fs::create_dir(&crashed).expect("mkdir");
    for name in ["gw.db", "gw.db-wal"] {
        std::fs::copy(locked.join(name), crashed.join(name)).expect("copy");
        chmod(&crashed.join(name), 0o644);
    }
    drop(writer);
    let crashed_db = crashed.join("gw.db");
    let out = backfill_as(
        Some((OWNER, bin)),
        &["status", "--db", crashed_db.to_str().expect("path")],
        None,
        &[],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(
        err.contains("gw.db-shm") && err.contains("as the user that enqueues"),
        "{err}"
    );
    assert_eq!(listing(&crashed), ["gw.db", "gw.db-wal"]);
    assert_eq!(
        status_json(&crashed_db)["buffered_events"],
        5,
        "its owner reads every event"
    );

    // Another user's buffer in a directory everyone may write (/tmp): a reader leaves no -wal
    // or -shm file of its own, which would keep the owner from writing.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o1777);
    let db = shared.join("gw.db");
    let db_arg = db.to_str().expect("path");
    let out = backfill_as(
        Some((OWNER, bin)),
        &["enqueue", "--db", db_arg],
        Some(&readings(3)),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    chmod(&db, 0o644);
    assert_eq!(read_as(OTHER, bin, &db, &shared), 3);
    assert_eq!(listing(&shared), ["gw.db"]);
    let out = backfill_as(
        Some((OWNER, bin)),
        &["enqueue", "--db", db_arg],
        Some(&readings(2)),
        &[],
    );
    assert!(
        out.status.success(),
        "the owner still writes: {}",
        text(&out).1
    );
    assert_eq!(read_as(OWNER, bin, &db, &shared), 5);
}

#[test]
fn enqueue_names_the_first_bad_line_whatever_its_fault_and_a_short_bad_input_creates_no_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    // Line 2 breaks a rule of the contract (the SDK's check), line 3 cannot be read at all
    // (the input reader's).
    let ndjson = "{\"name\":\"a\"}\n\
                  {\"name\":\"dl-ip\",\"properties\":{\"__ip\":\"not-an-ip\"}}\n\
                  {\"name\":\"b\",\"timestamp\":\"not a time\"}\n";
    let csv = "name,__ip,timestamp\nr,203.0.113.7,\nr,not-an-ip,\nr,,soon\n";
    let short = "{\"name\":\"a\"}\n{\"name\":\"dl-ip\",\"properties\":{\"__ip\":\"not-an-ip\"}}\n";
    for (input, line) in [(ndjson, 2), (csv, 3), (short, 2)] {
        let file = dir.path().join("readings.txt");
        std::fs::write(&file, input).expect("write");
        let file_arg = file.to_str().expect("path");
        for (args, stdin) in [
            (&["enqueue", "--db", db_arg, file_arg][..], None),
            (&["enqueue", "--db", db_arg], Some(input)),
            (&["enqueue", "--db", db_arg, "--dry-run", file_arg], None),
        ] {
            let out = backfill(args, stdin, &[]);
            let (_, err) = text(&out);
            assert_eq!(out.status.code(), Some(65), "{args:?}: {err}");
            assert!(
                err.contains(&format!("line {line}: ")) && err.contains("__ip"),
                "{args:?}: the first bad line is named: {err}"
            );
            assert_eq!(
                listing(dir.path()),
                ["readings.txt"],
                "{args:?}: no buffer is created"
            );
        }
    }
}

/// The warnings on stderr.
fn warnings(out: &Output) -> Vec<String> {
    text(out)
        .1
        .lines()
        .filter(|l| l.contains("warning:") || l.contains("evicted"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn enqueue_dry_run_warns_as_an_enqueue_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    let mut input = readings(2);
    input.push_str("{\"name\":\"reading\",\"timestamp\":\"2020-01-01T00:00:00Z\"}\n");
    input.push_str("{\"name\":\"reading\",\"timestamp\":\"2099-01-01T00:00:00Z\"}\n");
    let dry = backfill(&["enqueue", "--db", db_arg, "--dry-run"], Some(&input), &[]);
    assert!(dry.status.success(), "{}", text(&dry).1);
    let said = warnings(&dry);
    assert!(
        said.iter()
            .any(|w| w.contains("1 readings (the oldest from 2020-01-01T00:00:00.000Z) are older than the server's 5-day age window")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|w| w.contains("1 readings are stamped in the future (the latest, line 4")),
        "{said:?}"
    );
    assert!(!db.exists(), "a dry run creates nothing");
    let real = backfill(&["enqueue", "--db", db_arg], Some(&input), &[]);
    assert!(real.status.success(), "{}", text(&real).1);
    assert_eq!(warnings(&real), said, "the same warnings");

    // Into a buffer that is full: the events the readings would evict.
    let before = buffer_rows(&db);
    let dry = backfill(
        &["enqueue", "--db", db_arg, "--dry-run", "--max-rows", "5"],
        Some(&readings(2)),
        &[],
    );
    assert!(dry.status.success(), "{}", text(&dry).1);
    assert_eq!(
        warnings(&dry),
        [
            "backfill enqueue: the buffer would be full (5 events at most): the 1 oldest events \
          would be evicted to make room"
        ]
    );
    assert_eq!(buffer_rows(&db), before, "nothing changed");
    let real = backfill(
        &["enqueue", "--db", db_arg, "--max-rows", "5"],
        Some(&readings(2)),
        &[],
    );
    assert!(
        warnings(&real)
            .iter()
            .any(|w| w.contains("the 1 oldest events were evicted")),
        "{}",
        text(&real).1
    );
}

#[test]
fn a_drain_that_does_not_retry_says_so_and_how_to_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gw.db");
    let db_arg = db.to_str().expect("path");
    enqueue(&db, &readings(3));
    let (failing, hits) = stub(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
         content-length: 68\r\nconnection: close\r\n\r\n\
         {\"status\":500,\"error\":\"Internal Server Error\",\"message\":\"try later\"}"
            .to_owned(),
    );
    for url in ["http://127.0.0.1:9".to_owned(), failing] {
        let out = backfill(&["drain", "--db", db_arg], None, &creds(&url));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(69), "{url}: {err}");
        assert!(
            err.contains("3 events kept")
                && err.contains("Run drain again later")
                && err.contains("--until-empty")
                && err.contains("--watch"),
            "{url}: {err}"
        );
        assert!(
            !err.contains("retry in") && !err.contains("retrying in"),
            "{url}: it promises no retry it does not make: {err}"
        );
        assert_eq!(status_json(&db)["buffered_events"], 3);
    }
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn a_buffer_in_a_missing_directory_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("a/b/c/typo.db");
    let typo_arg = typo.to_str().expect("path");
    let file = dir.path().join("r.ndjson");
    std::fs::write(&file, readings(3)).expect("write");
    let file_arg = file.to_str().expect("path");
    let missing = dir.path().join("a");
    let runs: [(&[&str], Option<&str>); 4] = [
        (&["enqueue", "--db", typo_arg, file_arg], None),
        (&["enqueue", "--db", typo_arg], Some(&readings(3))),
        (&["enqueue", "--db", typo_arg, "--dry-run", file_arg], None),
        (&["drain", "--db", typo_arg, "--watch"], None),
    ];
    for (args, stdin) in runs {
        let out = if args[0] == "drain" {
            // Were it to start, a watching drain would wait for readings until stopped.
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_backfill"));
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in creds("http://127.0.0.1:9") {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn");
            let ended = wait_until(std::time::Duration::from_secs(30), || {
                child.try_wait().is_ok_and(|s| s.is_some())
            });
            if !ended {
                let _ = child.kill();
            }
            child.wait_with_output().expect("wait")
        } else {
            backfill(args, stdin, &[])
        };
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(73), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "the directory {} does not exist",
                missing.display()
            )) && err.contains("mkdir -p"),
            "{args:?}: {err}"
        );
        assert_eq!(
            listing(dir.path()),
            ["r.ndjson"],
            "{args:?}: nothing created"
        );
    }
    // A file where a directory should be.
    let under_file = file.join("gw.db");
    let out = backfill(
        &["enqueue", "--db", under_file.to_str().expect("path")],
        Some(&readings(1)),
        &[],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(73), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    // The buffer file itself is still created, in a directory that exists.
    let db = dir.path().join("gw.db");
    enqueue(&db, &readings(2));
    assert_eq!(status_json(&db)["buffered_events"], 2);
}
