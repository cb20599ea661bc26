//! A progress line for drains: a redrawn bar on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Shows how a drain of `total` events advances.
pub struct Progress {
    total: u64,
    started: Instant,
    terminal: bool,
    last_line: Option<Instant>,
    /// The line that reached the total was shown.
    reached: bool,
    /// `-q`: nothing is shown.
    quiet: bool,
}

impl Progress {
    /// A display for `total` events.
    pub fn new(total: u64) -> Self {
        Self {
            total,
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            quiet: crate::output::quiet(),
            last_line: None,
            reached: false,
        }
    }

    /// Redraws with `done` events sent in `requests` requests.
    pub fn update(&mut self, done: u64, requests: u64) {
        if self.quiet {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / elapsed;
        let left = self.total.saturating_sub(done);
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "?".to_owned()
        };
        let fraction = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let width = 30;
            let filled = ((fraction * width as f64) as usize).min(width);
            let _ = write!(
                err,
                "\r  [{}{}] {done}/{} events  {requests} requests  {rate:.0} ev/s  ETA {eta}   ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                self.total
            );
            let _ = err.flush();
        } else if self.plain_line_due(done) {
            let _ = writeln!(
                err,
                "drain: {done}/{} events, {requests} requests, {rate:.0} events/s, ETA {eta}",
                self.total
            );
        }
    }

    /// Whether a plain line (a log, not a terminal) is due: at most one a second, and the
    /// one that reaches the total. Events enqueued during the drain take `done` past the
    /// total; that is no reason for a line at every update.
    fn plain_line_due(&mut self, done: u64) -> bool {
        let reached = done >= self.total && !self.reached;
        let due = self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if reached || due {
            self.reached |= reached;
            self.last_line = Some(Instant::now());
        }
        reached || due
    }

    /// Ends the bar's line with a note (why the drain waits), so the next redraw starts below.
    pub fn pause(&self, note: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal && !self.quiet {
            let _ = writeln!(err);
        }
        let _ = writeln!(err, "drain: {note}");
    }

    /// Ends the line.
    pub fn finish(&self) {
        if self.terminal && !self.quiet {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_gets_a_line_a_second_even_past_the_total() {
        let mut progress = Progress::new(10);
        assert!(progress.plain_line_due(0), "the first line");
        assert!(!progress.plain_line_due(5), "within the second");
        assert!(progress.plain_line_due(10), "the total reached");
        for done in 11..100 {
            assert!(
                !progress.plain_line_due(done),
                "past the total, within the second"
            );
        }
    }
}
