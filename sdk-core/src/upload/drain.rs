//! One drain: expire, pack, send, settle, until the buffer is empty or the server says wait.

use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use backfill_protocol::clock::Clock;
use backfill_protocol::wire::{BatchResponse, ErrorBody, RejectReason};

use super::policy::{Answer, Backoff, Decision, decide};
use super::transport::{Reply, Transport};
use crate::batch::Packer;
use crate::error::Error;
use crate::store::{Buffer, Settled, counter};

/// State key of the server's age window, once known.
pub const WINDOW_KEY: &str = "max_event_age_ms";

/// What a drain needs; borrowed for its duration.
pub struct Drain<'a> {
    /// The buffer.
    pub buffer: &'a Buffer,
    /// The request path.
    pub transport: &'a dyn Transport,
    /// The time source.
    pub clock: &'a dyn Clock,
    /// Most events per request.
    pub max_events: usize,
    /// Most body bytes per request, before compression.
    pub max_bytes: usize,
    /// Gzip bodies.
    pub compress: bool,
    /// Retry delays.
    pub backoff: Backoff,
    /// Dead-letter table bound.
    pub max_dead_letters: u64,
    /// The server's age window in ms; 0 until known.
    pub window_ms: &'a AtomicI64,
    /// The window assumed while the server has not said its own, in ms.
    pub default_window_ms: i64,
    /// Consecutive failed attempts, kept across drains for the backoff.
    pub failures: &'a mut u32,
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEnd {
    /// Nothing left to send.
    Empty,
    /// The server or the network asked to wait this long; the rest stays buffered.
    RetryIn(Duration),
    /// The server refused the credentials; uploads stop until the app acts.
    Unauthorized(u16),
}

/// What one drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Events the server accepted (duplicates included).
    pub sent: u64,
    /// Of those, events it already had.
    pub duplicates: u64,
    /// Events refused for good and dead-lettered.
    pub dead_lettered: u64,
    /// Events dropped for being older than the server's window.
    pub expired: u64,
    /// Requests made.
    pub requests: u64,
    /// Bytes of request bodies on the wire.
    pub bytes_sent: u64,
    /// How it ended.
    pub end: DrainEnd,
}

impl Drain<'_> {
    fn window(&self) -> i64 {
        match self.window_ms.load(Ordering::Relaxed) {
            0 => self.default_window_ms,
            w => w,
        }
    }

    fn learn_window(&self, reply: &Reply) -> Result<(), Error> {
        if let Some(age) = reply.max_event_age {
            let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            if ms > 0 && self.window_ms.swap(ms, Ordering::Relaxed) != ms {
                self.buffer.set_state(WINDOW_KEY, &ms.to_string())?;
            }
        }
        Ok(())
    }

    fn draw() -> f64 {
        fastrand::f64()
    }

    /// Drains until empty, a wait, or a stop.
    pub fn run(mut self) -> Result<DrainReport, Error> {
        let mut report = DrainReport {
            sent: 0,
            duplicates: 0,
            dead_lettered: 0,
            expired: 0,
            requests: 0,
            bytes_sent: 0,
            end: DrainEnd::Empty,
        };
        // Learn the server's window before expiring anything by the default one: a server
        // configured for a week must receive the events of days 6 and 7.
        if self.window_ms.load(Ordering::Relaxed) == 0 && self.buffer.totals()?.0 > 0 {
            match self.transport.probe() {
                Ok(reply) => self.learn_window(&reply)?,
                Err(e) => {
                    tracing::debug!(error = %e, "server unreachable");
                    report.end = self.fail(&Answer::Network, 1);
                    return Ok(report);
                }
            }
        }
        let mut cap = self.max_events;
        loop {
            let now = self.clock.now_ms();
            report.expired += self.buffer.expire(now - self.window())?;
            let mut packer = Packer::new(cap, self.max_bytes);
            self.buffer
                .scan_oldest(|row| packer.offer(row.seq, &row.body))?;
            let batch = packer.finish();
            if batch.is_empty() {
                return Ok(report);
            }
            let mut body = batch.body(self.clock.now_ms());
            if self.compress {
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 4),
                    flate2::Compression::default(),
                );
                body = gz
                    .write_all(&body)
                    .and_then(|()| gz.finish())
                    .map_err(|e| Error::Storage(format!("gzip failed: {e}")))?;
            }
            let wire_len = body.len() as u64;
            let result = self.transport.post_batch(body, self.compress);
            report.requests += 1;
            self.buffer
                .count(&[(counter::REQUESTS, 1), (counter::BYTES_SENT, wire_len)])?;
            report.bytes_sent += wire_len;
            let reply = match result {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::debug!(error = %e, "request failed");
                    report.end = self.fail(&Answer::Network, batch.len());
                    return Ok(report);
                }
            };
            self.learn_window(&reply)?;
            let answer = if reply.status == 202 {
                match serde_json::from_slice::<BatchResponse>(&reply.body) {
                    Ok(accepted) => {
                        let settled = settle(&batch.seqs, &accepted);
                        let retry_rows =
                            settled.delivered.len() + settled.refused.len() < batch.len();
                        report.sent += settled.delivered.len() as u64;
                        report.duplicates += settled.duplicates;
                        report.dead_lettered += settled.refused.len() as u64;
                        self.buffer
                            .settle(&settled, self.clock.now_ms(), self.max_dead_letters)?;
                        Answer::Accepted { retry_rows }
                    }
                    // Not the contract's answer; resending is safe (insert ids deduplicate).
                    Err(_) => Answer::Status {
                        code: 502,
                        retry_after: None,
                    },
                }
            } else {
                Answer::Status {
                    code: reply.status,
                    retry_after: reply.retry_after,
                }
            };
            match decide(
                &answer,
                *self.failures,
                batch.len(),
                &self.backoff,
                Self::draw(),
            ) {
                Decision::Next => {
                    *self.failures = 0;
                    cap = (cap * 2).min(self.max_events);
                }
                Decision::Split => cap = (batch.len() / 2).max(1),
                Decision::DeadLetter => {
                    let error = serde_json::from_slice::<ErrorBody>(&reply.body)
                        .map(|b| b.message)
                        .unwrap_or_else(|_| format!("HTTP {}", reply.status));
                    let refused = Settled {
                        refused: batch.seqs.iter().map(|s| (*s, error.clone())).collect(),
                        ..Default::default()
                    };
                    self.buffer
                        .settle(&refused, self.clock.now_ms(), self.max_dead_letters)?;
                    report.dead_lettered += batch.len() as u64;
                }
                Decision::Stop => {
                    report.end = DrainEnd::Unauthorized(reply.status);
                    return Ok(report);
                }
                Decision::RetryAfter(wait) => {
                    *self.failures = self.failures.saturating_add(1);
                    report.end = DrainEnd::RetryIn(wait);
                    return Ok(report);
                }
            }
        }
    }

    fn fail(&mut self, answer: &Answer, batch_len: usize) -> DrainEnd {
        let decision = decide(
            answer,
            *self.failures,
            batch_len,
            &self.backoff,
            Self::draw(),
        );
        *self.failures = self.failures.saturating_add(1);
        match decision {
            Decision::RetryAfter(wait) => DrainEnd::RetryIn(wait),
            _ => DrainEnd::RetryIn(self.backoff.delay(*self.failures, Self::draw())),
        }
    }
}

/// Splits a batch's rows by the `202` answer: delivered, refused for good, or (left out of
/// both) to be resent.
fn settle(seqs: &[i64], answer: &BatchResponse) -> Settled {
    let mut settled = Settled {
        duplicates: answer.duplicates as u64,
        ..Default::default()
    };
    let mut rejected = answer.rejected.iter().peekable();
    for (index, seq) in seqs.iter().enumerate() {
        match rejected.peek() {
            Some(r) if r.index == index => {
                if r.reason == RejectReason::Validation {
                    settled.refused.push((*seq, r.error.clone()));
                }
                rejected.next();
            }
            _ => settled.delivered.push(*seq),
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_protocol::wire::Rejection;

    #[test]
    fn settles_by_index() {
        let answer = BatchResponse {
            accepted: 2,
            duplicates: 1,
            rejected: vec![
                Rejection {
                    index: 1,
                    reason: RejectReason::Internal,
                    error: "db".into(),
                },
                Rejection {
                    index: 2,
                    reason: RejectReason::Validation,
                    error: "bad".into(),
                },
            ],
        };
        let s = settle(&[10, 11, 12, 13], &answer);
        assert_eq!(s.delivered, vec![10, 13]);
        assert_eq!(s.refused, vec![(12, "bad".to_owned())]);
        assert_eq!(s.duplicates, 1);
    }
}
