//! Standard output for reports: quiet on request, and a closed pipe (`backfill status | head`)
//! ends the command quietly instead of a panic.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Sets `-q`: only errors and warnings on stderr, no reports, no progress.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// True with `-q`.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Writes `text` and a newline to stdout (nothing with `-q`). When the reader has gone (a
/// closed pipe), the process ends at once with status 0: the reader asked for no more.
pub fn line(text: &str) {
    if quiet() {
        return;
    }
    always(text);
}

/// Like [`line`], but also with `-q`: for output that is the command's data (`export`,
/// `status --json`), not a report.
pub fn always(text: &str) {
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("backfill: cannot write to standard output: {e}");
        std::process::exit(i32::from(crate::exit::IO));
    }
}
