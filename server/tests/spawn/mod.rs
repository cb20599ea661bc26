//! Starting the real `backfill-server` binary from a test: the address it prints as the first
//! line of stdout (`listening on http://...`), and the lines printed with it.
// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// A started process whose stdout is read line by line on a thread of its own.
pub struct Launched {
    /// The process.
    pub child: Child,
    lines: Receiver<String>,
}

/// Starts `command` with its stdout piped, without waiting for anything.
pub fn launch(command: &mut Command) -> Launched {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Launched { child, lines }
}

impl Launched {
    /// Waits (up to a minute) for the first line and returns the address it names.
    pub fn address(&self) -> String {
        let first = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the server starts and names its address");
        let url = first
            .strip_prefix("listening on ")
            .expect("first line names the address")
            .to_owned();
        assert!(url.starts_with("http://") && !url.ends_with(":0"), "{url}");
        url
    }

    /// The lines printed together with the address (a created client's credentials): they are
    /// written and flushed in one go with it, so a short wait finds every one of them.
    pub fn printed_with_address(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            lines.push(line);
        }
        lines
    }
}
