//! Records events as fast as it can with the background uploader on, printing each event's
//! insert id once `track` has returned; the SIGKILL test kills it at random moments.
//!
//! Usage: `sdk_child <database> <endpoint> <client-id> <client-secret>`

use std::io::Write;
use std::time::Duration;

use backfill_core::{Backfill, Config};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, endpoint, id, secret] = args.as_slice() else {
        anyhow::bail!("usage: sdk_child <database> <endpoint> <client-id> <client-secret>");
    };
    let config = Config::builder(endpoint, id, secret, db)
        .flush_threshold(25)
        .flush_interval(Duration::from_millis(50))
        .max_batch_events(100)
        .build()?;
    let sdk = Backfill::open(config)?;
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let mut props = serde_json::Map::new();
        props.insert("i".into(), i.into());
        let insert_id = sdk.track("tick", props)?;
        writeln!(out, "{insert_id}")?;
        out.flush()?;
        if i % 16 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}
