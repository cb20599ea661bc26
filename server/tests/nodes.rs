//! Several real `backfill-server` processes on one PostgreSQL database: exactly-once storage
//! and one `session_start` per session across nodes (SPEC §5, §6), and a database outage.

#[path = "cluster/mod.rs"]
mod cluster;
#[path = "spawn/mod.rs"]
mod spawn;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const PROJECT: &str = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f";
const SECRET: &str = "nodes-test-secret";
const LEAD_MS: i64 = 100;
const BUCKET_MS: i64 = 1_800_000;

/// A server process, killed when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` nodes on `database_url` at once (they migrate the empty database together)
/// and waits until each listens.
fn start_nodes(database_url: &str, count: usize) -> Vec<Node> {
    let launched: Vec<_> = (0..count)
        .map(|_| {
            spawn::launch(
                Command::new(env!("CARGO_BIN_EXE_backfill-server"))
                    .args(["--listen", "127.0.0.1:0", "--database-pool-size", "8"])
                    .args(["--project", &format!("{PROJECT}:{SECRET}")])
                    .env("BACKFILL_DATABASE_URL", database_url)
                    .env_remove("BACKFILL_PROJECTS")
                    .env("RUST_LOG", "warn")
                    .stderr(Stdio::null()),
            )
        })
        .collect();
    launched
        .into_iter()
        .map(|l| Node {
            url: l.address(),
            child: l.child,
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn post(client: &reqwest::Client, url: &str, events: &[Value]) -> (u16, Value, bool) {
    match client
        .post(format!("{url}/track/batch"))
        .header("openpanel-client-id", PROJECT)
        .header("openpanel-client-secret", SECRET)
        .json(&json!({ "events": events }))
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body = response.json().await.unwrap_or(Value::Null);
            (status, body, retry_after)
        }
        // Refused or reset: the same to a client as a 503 without a body.
        Err(_) => (0, Value::Null, false),
    }
}

/// Every item of `path`'s `key` list, across pages.
async fn read_all(client: &reqwest::Client, url: &str, path: &str, key: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!("{url}{path}?limit=1000&cursor={cursor}"))
            .header("openpanel-client-id", PROJECT)
            .header("openpanel-client-secret", SECRET)
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        out.extend(page[key].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => return out,
        }
    }
}

/// 12 sessions chosen by the client (`__sessionId`) and 12 the server derives from the device
/// and the 30-minute bucket, 100 readings each, spread over 16 minutes of one bucket, shuffled;
/// three readings in four carry a profile id.
fn readings() -> Vec<Value> {
    let bucket = (now_ms() - 2 * 3_600_000) / BUCKET_MS * BUCKET_MS + 10_000;
    let mut events = Vec::new();
    for s in 0..24 {
        for j in 0..100i64 {
            let t = bucket + fastrand::i64(0..960_000) + j;
            let mut properties = json!({
                "temp": 20.5,
                "__timestamp": t,
                "__insertId": format!("s{s}-e{j}"),
                "__deviceId": format!("gw-{s}"),
            });
            if s < 12 {
                properties["__sessionId"] = json!(format!("client-session-{s}"));
            }
            let mut event =
                json!({"type": "track", "payload": {"name": "reading", "properties": properties}});
            if j % 4 != 0 {
                event["payload"]["profileId"] = json!(format!("user-{s}-{j}"));
            }
            events.push(event);
        }
    }
    fastrand::shuffle(&mut events);
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_store_each_event_once_and_each_session_start_once() {
    if !cluster::available() {
        return;
    }
    let database = cluster::shared().create_database();
    let nodes = start_nodes(&database, 3);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let events = Arc::new(readings());
    let (batches, size, step) = (16, 250, 150);

    // Batch i holds events [150 i, 150 i + 250), wrapping: most events are in two batches.
    // Every batch goes to node i % 3 and, at the same time, again to node (i + 1) % 3, as a
    // client whose first answer was lost would resend it elsewhere.
    let client = client();
    let mut sends = Vec::new();
    for attempt in 0..2 {
        for i in 0..batches {
            let batch: Vec<Value> = (0..size)
                .map(|k| events[(i * step + k) % events.len()].clone())
                .collect();
            let url = urls[(i + attempt) % urls.len()].clone();
            let client = client.clone();
            sends.push(tokio::spawn(async move {
                let (status, body, _) = post(&client, &url, &batch).await;
                (status, body, batch.len())
            }));
        }
    }
    let mut newly_stored = 0;
    for send in sends {
        let (status, body, n) = send.await.expect("send");
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], json!(n), "{body}");
        assert_eq!(body["rejected"], json!([]), "{body}");
        newly_stored +=
            body["accepted"].as_u64().unwrap_or(0) - body["duplicates"].as_u64().unwrap_or(0);
    }
    assert_eq!(
        newly_stored,
        events.len() as u64,
        "across nodes, each event is counted new exactly once"
    );

    // Whatever node is asked, the data is the same.
    let stored = read_all(&client, &urls[2], "/api/events", "events").await;
    let mut readings_by_key: HashMap<String, &Value> = HashMap::new();
    let mut starts: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut start_profiles: BTreeMap<String, Value> = BTreeMap::new();
    for e in &stored {
        match e["name"].as_str() {
            Some("reading") => {
                let key = e["insert_id"].as_str().expect("insert id").to_owned();
                assert!(
                    readings_by_key.insert(key, e).is_none(),
                    "stored twice: {e}"
                );
            }
            Some("session_start") => {
                let session = e["session_id"].as_str().expect("session").to_owned();
                start_profiles.insert(session.clone(), e["profile_id"].clone());
                starts
                    .entry(session)
                    .or_default()
                    .push(time_ms(&e["created_at"]));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let sent: HashSet<String> = events
        .iter()
        .map(|e| {
            e["payload"]["properties"]["__insertId"]
                .as_str()
                .expect("key")
                .to_owned()
        })
        .collect();
    assert_eq!(
        readings_by_key.keys().cloned().collect::<HashSet<_>>(),
        sent
    );

    // What each session must be, from the stored readings.
    let mut expected: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for e in readings_by_key.values() {
        let t = time_ms(&e["created_at"]);
        let s = expected
            .entry(e["session_id"].as_str().expect("session").to_owned())
            .or_insert((t, t, 0));
        s.0 = s.0.min(t);
        s.1 = s.1.max(t);
        s.2 += 1;
    }
    assert_eq!(
        expected.len(),
        24,
        "one session per device: {:?}",
        expected.keys()
    );
    for (id, (first, _, _)) in &expected {
        assert_eq!(
            starts.get(id).map(Vec::as_slice),
            Some(&[first - LEAD_MS][..]),
            "session {id}: exactly one session_start, 100 ms before its earliest event"
        );
    }
    assert_eq!(
        starts.len(),
        expected.len(),
        "no session_start without a session"
    );
    let sessions = read_all(&client, &urls[1], "/api/sessions", "sessions").await;
    let got: BTreeMap<String, (i64, i64, i64)> = sessions
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_owned(),
                (
                    time_ms(&s["started_at"]),
                    time_ms(&s["ended_at"]),
                    s["event_count"].as_i64().expect("count"),
                ),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // Each session's profile id is the one of its earliest event that has one, on equal times
    // the bytewise smaller (SPEC §6b), whichever node wrote what first; its session_start
    // carries the same.
    let mut first_profiles: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for e in readings_by_key.values() {
        let Some(profile) = e["profile_id"].as_str() else {
            continue;
        };
        let candidate = (time_ms(&e["created_at"]), profile.to_owned());
        first_profiles
            .entry(e["session_id"].as_str().expect("session").to_owned())
            .and_modify(|p| *p = std::cmp::min(p.clone(), candidate.clone()))
            .or_insert(candidate);
    }
    let expected: BTreeMap<String, Value> = first_profiles
        .into_iter()
        .map(|(session, (_, profile))| (session, json!(profile)))
        .collect();
    assert_eq!(expected.len(), 24);
    let got: BTreeMap<String, Value> = sessions
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_owned(),
                s["profile_id"].clone(),
            )
        })
        .collect();
    assert_eq!(got, expected, "each session's profile id");
    assert_eq!(start_profiles, expected, "each session_start's profile id");
}

/// Event time in ms from the read API's ISO-8601 text.
fn time_ms(v: &Value) -> i64 {
    let text = v.as_str().expect("a time");
    backfill_protocol::time::parse_timestamp_str(text)
        .unwrap_or_else(|| panic!("{text} is not a time"))
}

/// What a writer saw: each answer's status and whether it carried `Retry-After`.
type Answer = (u16, bool);

/// Posts batches of 50 new readings until `stop`, resending a batch after anything but `202`
/// (after a short backoff, as the SDK does), and records the keys of acknowledged batches.
async fn keep_writing(
    writer: usize,
    url: String,
    acknowledged: Arc<std::sync::Mutex<Vec<String>>>,
    answers: tokio::sync::mpsc::UnboundedSender<Answer>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = client();
    for n in 0.. {
        let now = now_ms();
        let keys: Vec<String> = (0..50).map(|k| format!("w{writer}-{n}-{k}")).collect();
        let batch: Vec<Value> = keys
            .iter()
            .map(|key| {
                json!({"type": "track", "payload": {"name": "reading", "properties": {
                    "temp": 1, "__deviceId": "gw-outage", "__timestamp": now - 60_000,
                    "__insertId": key,
                }}})
            })
            .collect();
        loop {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let (status, _, retry_after) = post(&client, &url, &batch).await;
            if status == 202
                && let Ok(mut acked) = acknowledged.lock()
            {
                acked.extend(keys.iter().cloned());
            }
            if answers.send((status, retry_after)).is_err() {
                return;
            }
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits for the writer's next answer that `wanted` accepts, checking each answer on the way.
async fn wait_for(
    answers: &mut tokio::sync::mpsc::UnboundedReceiver<Answer>,
    mut check: impl FnMut(Answer),
    mut wanted: impl FnMut(Answer) -> bool,
) {
    let deadline = Duration::from_secs(120);
    tokio::time::timeout(deadline, async {
        while let Some(answer) = answers.recv().await {
            check(answer);
            if wanted(answer) {
                return;
            }
        }
        panic!("the writer stopped");
    })
    .await
    .expect("the awaited answer came within two minutes");
}

async fn health(url: &str) -> u16 {
    client()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_is_503_and_loses_nothing_acknowledged() {
    if !cluster::available() {
        return;
    }
    // A cluster of its own: this test stops it.
    let cluster = Arc::new(cluster::Cluster::start());
    let database = cluster.create_database();
    let nodes = start_nodes(&database, 2);
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let writers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(writer, node)| {
            tokio::spawn(keep_writing(
                writer,
                node.url.clone(),
                Arc::clone(&acknowledged),
                tx.clone(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    drop(tx);

    let mut acks = 0;
    wait_for(
        &mut answers,
        |_| {},
        |(status, _)| {
            acks += usize::from(status == 202);
            acks >= 4
        },
    )
    .await;

    let halting = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || halting.halt())
        .await
        .expect("halt");
    // Requests in flight when the database went down may still be answered 202 (they had
    // committed); after that every answer is 503 with Retry-After, never a dropped connection.
    wait_for(
        &mut answers,
        |(status, retry_after)| {
            assert!(
                status == 202 || (status == 503 && retry_after),
                "during the outage: {status}, Retry-After {retry_after}"
            );
        },
        |(status, _)| status == 503,
    )
    .await;
    for node in &nodes {
        assert_eq!(
            health(&node.url).await,
            503,
            "/healthz fails while the database is down"
        );
    }

    let resuming = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || resuming.resume())
        .await
        .expect("resume");
    let mut acks = 0;
    wait_for(
        &mut answers,
        |(status, retry_after)| assert!(status == 202 || (status == 503 && retry_after)),
        |(status, _)| {
            acks += usize::from(status == 202);
            acks >= 4
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }
    for node in &nodes {
        assert_eq!(health(&node.url).await, 200, "recovered without a restart");
    }

    let acked: HashSet<String> = acknowledged.lock().expect("keys").iter().cloned().collect();
    let stored = read_all(&client(), &nodes[0].url, "/api/events", "events").await;
    let mut keys = HashSet::new();
    for e in stored.iter().filter(|e| e["name"] == "reading") {
        let key = e["insert_id"].as_str().expect("key").to_owned();
        assert!(keys.insert(key), "stored twice: {e}");
    }
    let lost: Vec<&String> = acked.difference(&keys).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(acked.len() >= 8 * 50, "{} keys acknowledged", acked.len());
}

/// Thaws the cluster when dropped, whatever the test's assertions did.
struct Thaw<'a>(&'a cluster::Cluster);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.signal_all("CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_hangs_is_503_not_a_hung_request() {
    if !cluster::available() {
        return;
    }
    // A cluster of its own: this test freezes it.
    let cluster = cluster::Cluster::start();
    let database = cluster.create_database();
    let nodes = start_nodes(&database, 1);
    let url = nodes[0].url.clone();
    let client = client();
    let batch: Vec<Value> = (0..50)
        .map(|i| {
            json!({"type": "track", "payload": {"name": "hang", "properties": {
                "__timestamp": now_ms() - 60_000 + i,
                "__insertId": format!("hang-{i}"),
                "__deviceId": "gw-hang",
            }}})
        })
        .collect();
    let (status, body, _) = post(&client, &url, &batch[..10]).await;
    assert_eq!(status, 202, "{body}");

    cluster.signal_all("STOP");
    let thaw = Thaw(&cluster);
    // The client waits up to a minute: a hung answer fails the test, a bounded one passes.
    assert_eq!(health(&url).await, 503, "/healthz fails, not hangs");
    let (status, body, retry_after) = post(&client, &url, &batch).await;
    assert!(status == 503 && retry_after, "{status} {body}");
    drop(thaw);

    let recovered = async {
        while health(&url).await != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), recovered)
        .await
        .expect("the node answers again once the database does");
    // The refused batch is sent again, as a client does after a 503: every event once.
    let (status, body, _) = post(&client, &url, &batch).await;
    assert_eq!(status, 202, "{body}");
    let stored: Vec<Value> = read_all(&client, &url, "/api/events", "events")
        .await
        .into_iter()
        .filter(|e| e["name"] == "hang")
        .collect();
    assert_eq!(stored.len(), batch.len(), "each event stored once");
}
