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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backfill"));
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
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("stdin");
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
    assert_eq!(status_json(&db)["buffered_events"], 3, "data kept");

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
    assert_eq!(out.status.code(), Some(75), "unreachable: try again later");
    assert_eq!(status_json(&db)["buffered_events"], 2);
}

#[test]
fn status_reports_a_missing_buffer_and_a_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("none.db");
    let out = backfill(&["status", "--db", db.to_str().expect("path")], None, &[]);
    assert_eq!(out.status.code(), Some(74));
    let out = backfill(
        &["enqueue", "--db", db.to_str().expect("path")],
        Some(&readings(2)),
        &[],
    );
    assert!(out.status.success());
    let out = backfill(&["status", "--db", db.to_str().expect("path")], None, &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("buffered        2 events"), "{text}");
    let json = status_json(&db);
    assert!(
        json["oldest_event"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
}
