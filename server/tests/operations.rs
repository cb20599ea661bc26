//! What an operator sees of the real `backfill-server` binary over real HTTP: project admin on a
//! real store, logs (scanned for secrets), metrics after traffic, `/openapi.json`, `--listen`
//! with a host name, and a first start that fails.

#[path = "spawn/mod.rs"]
mod spawn;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_backfill-server");

struct Server {
    child: Child,
    url: String,
    /// Everything printed on stdout after the address (a created client).
    stdout: Vec<String>,
    /// Where stderr (the logs) goes.
    log: PathBuf,
}

impl Server {
    /// Stops with SIGTERM and returns the logs.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).expect("log")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `data_dir` with `args` and `RUST_LOG=info`, logs to a file.
fn spawn(data_dir: &Path, args: &[&str]) -> Server {
    let log = data_dir.with_extension(format!("{}.log", fastrand::u32(..)));
    let launched = spawn::launch(
        Command::new(BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("BACKFILL_PROJECTS")
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    let url = launched.address();
    Server {
        stdout: launched.printed_with_address(),
        child: launched.child,
        url,
        log,
    }
}

/// Runs `backfill-server --data-dir DIR project ARGS`.
fn admin(data_dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("project")
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "project {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `client id:` and `client secret:` lines of a command's output.
fn credentials(lines: &str) -> (String, String) {
    let field = |name: &str| {
        lines
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("{name} in {lines}"))
    };
    (field("client id:"), field("client secret:"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn ingest(url: &str, id: &str, secret: &str, events: Vec<Value>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/track/batch"))
        .header("openpanel-client-id", id)
        .header("openpanel-client-secret", secret)
        .json(&json!({ "events": events }))
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn read(url: &str, path: &str, id: &str, secret: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .header("openpanel-client-id", id)
        .header("openpanel-client-secret", secret)
        .send()
        .await
        .expect("get");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn reading(key: &str) -> Value {
    json!({"type": "track", "payload": {"name": "reading", "properties": {
        "temp": 21.5, "__deviceId": "sensor-1", "__timestamp": now_ms() - 60_000, "__insertId": key}}})
}

#[tokio::test]
async fn project_commands_manage_keys_on_a_real_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let root = admin(&data, &["create", "--mode", "root", "--name", "ops"]);
    let root_text = String::from_utf8_lossy(&root.stdout).into_owned();
    let (root_id, root_secret) = credentials(&root_text);
    let write = admin(&data, &["create", "--for", &root_id, "--name", "app"]);
    let (write_id, write_secret) = credentials(&String::from_utf8_lossy(&write.stdout));
    assert!(String::from_utf8_lossy(&write.stdout).contains("mode:          write"));

    let list = admin(&data, &["list"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.contains(&root_id) && list.contains(&write_id),
        "{list}"
    );
    assert!(
        !list.contains(&root_secret) && !list.contains(&write_secret),
        "an existing secret is never printed again: {list}"
    );
    let app_line = list
        .lines()
        .find(|l| l.starts_with(&write_id))
        .expect("write key listed");
    assert!(
        app_line.contains("write") && app_line.contains(&root_id),
        "the write key belongs to the root key's project: {app_line}"
    );
    // Every line's PROJECT column starts where the header's does, whatever the mode's length.
    let project_column = list.find("PROJECT").expect("header");
    for line in list.lines().skip(1) {
        assert_eq!(
            line.get(project_column..project_column + 36),
            Some(root_id.as_str()),
            "columns align: {list}"
        );
    }

    let server = spawn(&data, &["--listen", "127.0.0.1:0"]);
    assert!(
        !server.stdout.join("\n").contains("client secret"),
        "a store with clients creates none"
    );
    let (status, body) = ingest(&server.url, &write_id, &write_secret, vec![reading("k1")]).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = read(&server.url, "/api/events", &write_id, &write_secret).await;
    assert_eq!(status, 403, "a write key cannot read");
    let (status, page) = read(
        &server.url,
        "/api/events?name=reading",
        &root_id,
        &root_secret,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["events"][0]["insert_id"], json!("k1"));

    // Rotation while the server runs: both secrets work during the grace period.
    let rotated = admin(&data, &["rotate", &write_id, "--grace-hours", "1"]);
    let (same_id, new_secret) = credentials(&String::from_utf8_lossy(&rotated.stdout));
    assert_eq!(same_id, write_id);
    assert_ne!(new_secret, write_secret);
    let (status, _) = ingest(&server.url, &write_id, &new_secret, vec![reading("k2")]).await;
    assert_eq!(status, 202, "the new secret works at once");
    let (status, _) = ingest(&server.url, &write_id, &write_secret, vec![reading("k3")]).await;
    assert_eq!(status, 202, "the old secret works during the grace period");
    let list = admin(&data, &["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("rotating"));

    // Revocation reaches the running server within its cache time.
    admin(&data, &["revoke", &write_id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = ingest(&server.url, &write_id, &new_secret, vec![reading("k4")]).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 202);
        assert!(
            Instant::now() < deadline,
            "the revoked key is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = read(&server.url, "/api/events", &root_id, &root_secret).await;
    assert_eq!(status, 200, "the project's other keys still work");
    let logs = server.stop();
    for secret in [&root_secret, &write_secret, &new_secret] {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
    }
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("client={write_id}")) && l.contains("status=202"))
        .unwrap_or_else(|| panic!("no line of the write key in\n{logs}"));
    assert!(
        line.contains(&format!("project={root_id}")),
        "a key issued for a project logs that project: {line}"
    );

    let unknown = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["project", "rotate", "00000000-0000-4000-8000-000000000000"])
        .output()
        .expect("run");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no client"));
}

#[tokio::test]
async fn a_first_start_on_a_taken_port_creates_no_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &addr])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("client secret"),
        "no secret was printed"
    );
    assert!(
        !data.join("backfill.db").exists(),
        "the store was not even opened: no client was created whose secret was never shown"
    );
    let list = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["project", "list"])
        .output()
        .expect("run");
    assert!(!list.status.success(), "list never makes a store");
    assert!(String::from_utf8_lossy(&list.stderr).contains("no store at"));
    drop(taken);

    // The next start on a free port creates the client and shows its secret.
    let server = spawn(&data, &["--listen", "localhost:0"]);
    let (id, secret) = credentials(&server.stdout.join("\n"));
    let (status, _) = read(&server.url, "/api/events", &id, &secret).await;
    assert_eq!(status, 200, "a root client; localhost resolved");
    let logs = server.stop();
    assert!(!logs.contains(&secret), "a secret reached the logs");
}

#[tokio::test]
async fn logs_metrics_and_openapi_after_real_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let id = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
    let secret = "operations-test-secret-7f3a";
    let project = format!("{id}:{secret}");
    let server = spawn(
        &data,
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--project",
            &project,
        ],
    );
    let mut events = vec![reading("a1"), reading("a2"), reading("a1")];
    events.push(json!({"type": "track", "payload": {"name": ""}}));
    let (status, body) = ingest(&server.url, id, secret, events).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = ingest(&server.url, id, "wrong-secret-1234", vec![reading("x")]).await;
    assert_eq!(status, 401);
    let (status, _) = read(&server.url, "/api/events?devce_id=1", id, secret).await;
    assert_eq!(status, 400);
    let (status, page) = read(&server.url, "/api/events", id, secret).await;
    assert_eq!(status, 200, "{page}");

    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "backfill_events_accepted_total 3",
        "backfill_events_duplicates_total 1",
        "backfill_events_rejected_total{reason=\"validation\"} 1",
        "backfill_http_requests_total{route=\"/track/batch\",status=\"202\"} 1",
        "backfill_http_requests_total{route=\"/track/batch\",status=\"401\"} 1",
        "backfill_http_requests_total{route=\"/api/events\",status=\"400\"} 1",
        "backfill_http_requests_total{route=\"/api/events\",status=\"200\"} 1",
        "backfill_http_request_duration_seconds_count{route=\"/track/batch\"} 2",
        "backfill_store_errors_total 0",
        "backfill_build_info{version=\"",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let commits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("backfill_store_commit_duration_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("commit histogram");
    assert!(commits >= 1, "{metrics}");

    let doc: Value = http
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], json!("3.1.0"));
    assert!(doc["paths"]["/track/batch"]["post"].is_object());

    let logs = server.stop();
    assert!(!logs.contains(secret), "the secret reached the logs");
    assert!(
        !logs.contains("wrong-secret-1234"),
        "a wrong secret reached the logs"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "no colours when stderr is not a terminal"
    );
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .filter(|l: &Value| l["message"] == json!("request"))
        .collect();
    let batch = lines
        .iter()
        .find(|l| l["route"] == json!("/track/batch") && l["status"] == json!(202))
        .expect("the batch is logged");
    assert_eq!(batch["level"], json!("INFO"));
    assert_eq!(batch["method"], json!("POST"));
    assert_eq!(batch["client"], json!(id));
    assert_eq!(batch["project"], json!(id));
    assert_eq!(
        (&batch["accepted"], &batch["duplicates"], &batch["rejected"]),
        (&json!(3), &json!(1), &json!(1))
    );
    assert!(batch["duration_ms"].as_f64().is_some());
    let refused = lines
        .iter()
        .find(|l| l["status"] == json!(401))
        .expect("the 401 is logged");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("wrong client secret")),
        "{refused}"
    );
    let typo = lines
        .iter()
        .find(|l| l["status"] == json!(400))
        .expect("the 400 is logged");
    assert!(
        typo["reason"]
            .as_str()
            .is_some_and(|r| r.contains("devce_id")),
        "{typo}"
    );
    let listed = lines
        .iter()
        .find(|l| l["route"] == json!("/api/events") && l["status"] == json!(200))
        .expect("the read is logged");
    assert!(
        listed["returned"].as_u64().is_some_and(|n| n >= 2),
        "{listed}"
    );
}

#[tokio::test]
async fn text_logs_name_route_status_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let id = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
    let secret = "text-log-secret-91c2";
    let project = format!("{id}:{secret}:write");
    let server = spawn(&data, &["--listen", "127.0.0.1:0", "--project", &project]);
    let (status, _) = read(&server.url, "/api/sessions", id, secret).await;
    assert_eq!(status, 403, "a write key configured on the command line");
    let logs = server.stop();
    assert!(!logs.contains(secret));
    assert!(
        !logs.contains('\u{1b}'),
        "no colours when stderr is not a terminal"
    );
    let line = logs
        .lines()
        .find(|l| l.contains("route=/api/sessions"))
        .unwrap_or_else(|| panic!("no request line in\n{logs}"));
    assert!(
        line.contains("INFO") && line.contains("status=403"),
        "{line}"
    );
    assert!(line.contains("cannot use the read API"), "{line}");
}

#[tokio::test]
async fn an_online_backup_is_a_store_a_server_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let id = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
    let secret = "backup-test-secret";
    let project = format!("{id}:{secret}");
    let server = spawn(&data, &["--listen", "127.0.0.1:0", "--project", &project]);
    let (status, _) = ingest(&server.url, id, secret, vec![reading("b1"), reading("b2")]).await;
    assert_eq!(status, 202);
    let copy = dir.path().join("copy.db");
    let backup = |to: &Path| {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .arg("backup")
            .arg(to)
            .output()
            .expect("run")
    };
    let out = backup(&copy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = backup(&copy);
    assert!(
        !again.status.success(),
        "an existing file is never overwritten"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let (status, _) = ingest(&server.url, id, secret, vec![reading("b3")]).await;
    assert_eq!(status, 202, "the server kept serving");
    drop(server.stop());

    let restored = dir.path().join("restored");
    std::fs::create_dir_all(&restored).expect("dir");
    std::fs::copy(&copy, restored.join("backfill.db")).expect("copy");
    let server = spawn(
        &restored,
        &["--listen", "127.0.0.1:0", "--project", &project],
    );
    let (status, page) = read(&server.url, "/api/events?name=reading", id, secret).await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["insert_id"].as_str())
        .collect();
    assert_eq!(
        keys.len(),
        2,
        "the backup holds what was committed before it: {keys:?}"
    );
    assert!(keys.contains(&"b1") && keys.contains(&"b2"));
}

#[tokio::test]
async fn a_store_from_before_modes_is_upgraded_with_a_warning_and_its_client_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A store of today's schema, whose clients table is then put back as version 3 had it.
    admin(&data, &["create"]);
    let id = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
    let secret = "a-secret-from-before-modes";
    {
        // The clients table as schema version 3 wrote it, with one client, and its sessions.
        let conn = rusqlite::Connection::open(data.join("backfill.db")).expect("open");
        conn.execute_batch(
            "ALTER TABLE sessions DROP COLUMN profile_at;
             DROP TABLE projects;
             CREATE TABLE projects (
                 key         INTEGER PRIMARY KEY,
                 client_id   TEXT NOT NULL UNIQUE,
                 secret_hash TEXT NOT NULL,
                 secret_salt TEXT NOT NULL,
                 created_at  INTEGER NOT NULL
             );
             PRAGMA user_version = 3;",
        )
        .expect("version 3");
        conn.execute(
            "INSERT INTO projects (client_id, secret_hash, secret_salt, created_at)
             VALUES (?1, ?2, 'salt', 1795860000)",
            rusqlite::params![id, backfill_server::auth::hash_secret("salt", secret)],
        )
        .expect("client");
    }
    let server = spawn(&data, &["--listen", "127.0.0.1:0"]);
    assert!(
        !server.stdout.join("\n").contains("client secret"),
        "no client is created next to the stored one"
    );
    let (status, body) = ingest(&server.url, id, secret, vec![reading("u1")]).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = read(&server.url, "/api/events", id, secret).await;
    assert_eq!(status, 200, "the old client is root: it reads too");
    let logs = server.stop();
    let warning = logs
        .lines()
        .find(|l| l.contains("WARN"))
        .unwrap_or_else(|| panic!("no warning in\n{logs}"));
    assert!(
        warning.contains("root") && warning.contains("--mode write"),
        "the warning tells the operator to issue write keys: {warning}"
    );
    let list = admin(&data, &["list"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with(id) && l.contains("root")),
        "{list}"
    );
}
