//! The real `backfill-server` binary over real HTTP: start-up, durability under SIGKILL, signals.

#[path = "spawn/mod.rs"]
mod spawn;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
const SECRET: &str = "process-test-secret";

struct Server {
    child: Child,
    url: String,
    stdout: Vec<String>,
}

fn spawn(data_dir: &Path, extra: &[&str]) -> Server {
    let launched = spawn::launch(
        Command::new(env!("CARGO_BIN_EXE_backfill-server"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("BACKFILL_PROJECTS")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null()),
    );
    let url = launched.address();
    Server {
        stdout: launched.printed_with_address(),
        child: launched.child,
        url,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn with_project() -> Vec<String> {
    vec!["--project".into(), format!("{PROJECT}:{SECRET}")]
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(url: &str, body: Value) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{url}/track/batch"))
        .header("openpanel-client-id", PROJECT)
        .header("openpanel-client-secret", SECRET)
        .json(&body)
        .send()
        .await
}

async fn all_insert_ids(url: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client()
            .get(format!(
                "{url}/api/events?name=reading&limit=1000&cursor={cursor}"
            ))
            .header("openpanel-client-id", PROJECT)
            .header("openpanel-client-secret", SECRET)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        for e in page["events"].as_array().expect("events") {
            ids.push(e["insert_id"].as_str().expect("insert id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return ids,
        }
    }
}

fn batch(round: usize, n: usize, size: usize) -> Value {
    let now = now_ms();
    let events: Vec<Value> = (0..size)
        .map(|i| {
            json!({"type": "track", "payload": {"name": "reading", "properties": {
                "temp": 20.0 + i as f64 / 10.0,
                "__deviceId": format!("sensor-{}", i % 7),
                "__timestamp": now - 3_600_000 + i as i64,
                "__insertId": format!("r{round}-b{n}-e{i}"),
            }}})
        })
        .collect();
    json!({ "events": events })
}

#[tokio::test]
async fn first_start_creates_a_project_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = spawn(dir.path(), &[]);
    let text = first.stdout.join("\n");
    let id = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client id:"))
        .map(str::trim)
        .expect("id printed")
        .to_owned();
    let secret = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("client secret:"))
        .map(str::trim)
        .expect("secret printed")
        .to_owned();
    let ok = client()
        .get(format!("{}/api/events", first.url))
        .header("openpanel-client-id", &id)
        .header("openpanel-client-secret", &secret)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), 200);
    let _ = first.child.kill();
    let _ = first.child.wait();

    let db = std::fs::read(dir.path().join("backfill.db")).expect("database file");
    assert!(
        !String::from_utf8_lossy(&db).contains(&secret),
        "only a hash of the secret is stored"
    );

    let mut second = spawn(dir.path(), &[]);
    assert!(
        second.stdout.is_empty() || !second.stdout.join("\n").contains("client secret"),
        "no second project"
    );
    let ok = client()
        .get(format!("{}/api/sessions", second.url))
        .header("openpanel-client-id", &id)
        .header("openpanel-client-secret", &secret)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), 200, "the project survives a restart");
    let _ = second.child.kill();
    let _ = second.child.wait();
}

#[tokio::test]
async fn every_acknowledged_row_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = with_project();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..4 {
        let mut server = spawn(dir.path(), &args);
        // Four writers post concurrently; the process is killed right after the k-th answer.
        let kill_after = 3 + round * 2;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        let mut writers = Vec::new();
        for w in 0..4 {
            let (url, tx) = (server.url.clone(), tx.clone());
            writers.push(tokio::spawn(async move {
                for n in 0.. {
                    let body = batch(round, w * 1000 + n, 200);
                    let keys: Vec<String> = body["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| {
                            e["payload"]["properties"]["__insertId"]
                                .as_str()
                                .map(str::to_owned)
                        })
                        .collect();
                    match post(&url, body).await {
                        Ok(r) if r.status() == 202 => {
                            if tx.send(keys).is_err() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            }));
        }
        drop(tx);
        let mut answers = 0;
        while let Some(keys) = rx.recv().await {
            acknowledged.extend(keys);
            answers += 1;
            if answers == kill_after {
                server.child.kill().expect("SIGKILL");
                let _ = server.child.wait();
                break;
            }
        }
        // Answers already in flight when the process died were acknowledged too.
        while let Ok(keys) = rx.try_recv() {
            acknowledged.extend(keys);
        }
        for w in writers {
            let _ = w.await;
        }
        while let Ok(keys) = rx.try_recv() {
            acknowledged.extend(keys);
        }
    }
    let mut server = spawn(dir.path(), &args);
    let stored = all_insert_ids(&server.url).await;
    let stored_set: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(stored_set.len(), stored.len(), "no row stored twice");
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored_set.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged rows lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    assert!(
        acknowledged.len() >= 200 * 3,
        "the test acknowledged rows before each kill"
    );
    let _ = server.child.kill();
    let _ = server.child.wait();
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_bad_flags_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = with_project();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = spawn(dir.path(), &args);
    let r = post(&server.url, batch(9, 0, 10)).await.expect("post");
    assert_eq!(r.status(), 202);
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = server.child.wait().expect("wait");
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_backfill-server"))
        .args(["--max-event-age-days", "91", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 to 90"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
