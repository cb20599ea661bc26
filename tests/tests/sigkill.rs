//! A process that records and drains is killed with SIGKILL at random moments, 20 times:
//! every event whose `track` returned reaches the server exactly once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use backfill_core::{Backfill, DrainEnd};
use backfill_e2e::*;

#[test]
fn every_recorded_event_arrives_once_across_twenty_kills() {
    let server = TestServer::start(5, None);
    let db = server.dir.path().join("child.db");
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sdk_child"))
            .arg(&db)
            .arg(server.url())
            .arg(PROJECT)
            .arg(SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            // Only whole lines count: a line cut by the kill was never fully acknowledged.
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(id) = line.strip_suffix('\n') {
                    ids.push(id.to_owned());
                }
                line.clear();
            }
            ids
        });
        std::thread::sleep(Duration::from_millis(150 + fastrand_ms(round)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        acknowledged.extend(reader.join().expect("reader"));
    }
    assert!(
        acknowledged.len() > 200,
        "the child recorded events before each kill"
    );
    let sdk = Backfill::open(server.sdk_config(&db).build().expect("config"))
        .expect("reopen after the kills");
    let report = sdk.flush().expect("final drain");
    assert_eq!(report.end, DrainEnd::Empty);

    let stored: Vec<String> = server
        .events("name=tick")
        .iter()
        .filter_map(|e| e["insert_id"].as_str().map(str::to_owned))
        .collect();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no event stored twice");
    let missing = acknowledged
        .iter()
        .filter(|id| !unique.contains(id))
        .count();
    assert_eq!(
        missing,
        0,
        "of {} acknowledged events, {missing} never arrived",
        acknowledged.len()
    );
}

/// A spread of kill moments, different each round, without a random-number dependency.
fn fastrand_ms(round: u64) -> u64 {
    (round * 7919 + now_ms().unsigned_abs()) % 350
}
