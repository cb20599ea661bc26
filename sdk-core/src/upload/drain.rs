//! One drain: expire, pack, send, settle, until the buffer is empty or the server says wait.

use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use backfill_protocol::clock::Clock;
use backfill_protocol::wire::{BatchResponse, ErrorBody, RejectReason, Rejection};

use std::collections::VecDeque;
use std::thread::ScopedJoinHandle;

use super::policy::{self, Answer, Backoff, decide};
use super::transport::{NetworkError, Reply, Transport};
use crate::batch::{Batch, Packer, seal};
use crate::error::Error;
use crate::store::{Buffer, Settled};

/// Requests in flight at once during a drain.
pub const PIPELINE_DEPTH: usize = 6;

/// A sent request and the rows it carries.
struct InFlight<'scope> {
    batch: Batch,
    /// The buffer's removal count read before the batch was packed.
    removals: u64,
    request: ScopedJoinHandle<'scope, (u64, Result<Reply, NetworkError>)>,
}

/// An answer read: what to do next and what it settles in the buffer.
struct Answered {
    decision: Decision,
    /// Delivered and refused rows, and the request's own count.
    settled: Settled,
    /// Every row of the request, when the whole request was refused for good.
    refused_all: Option<Settled>,
}

/// Work for the thread that settles answers while the drain goes on.
enum ToSettler {
    /// Settle these rows at this time.
    Settle(Settled, i64),
    /// Answer once everything sent before is settled, with the first error since the last
    /// barrier.
    Barrier(std::sync::mpsc::Sender<Result<(), Error>>),
}

/// Settles what it is sent, in order, until the drain closes the channel.
fn run_settler(
    buffer: &Buffer,
    max_dead_letters: u64,
    jobs: std::sync::mpsc::Receiver<ToSettler>,
) -> Result<(), Error> {
    let mut failed: Option<Error> = None;
    for job in jobs {
        match job {
            ToSettler::Settle(settled, now) => {
                if failed.is_none()
                    && let Err(e) = buffer.settle(&settled, now, max_dead_letters)
                {
                    failed = Some(e);
                }
            }
            ToSettler::Barrier(reply) => {
                let _ = reply.send(failed.take().map_or(Ok(()), Err));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// How often a drain copies the WAL back into the buffer file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints the buffer every [`CHECKPOINT_EVERY`] until `stop` is dropped.
fn run_checkpointer(buffer: &Buffer, stop: &std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = buffer.checkpoint() {
            tracing::debug!(error = %e, "checkpoint during drain failed");
        }
    }
}

/// Waits until the settler has settled everything sent to it.
fn settled_all(settler: &std::sync::mpsc::SyncSender<ToSettler>) -> Result<(), Error> {
    let (reply, answer) = std::sync::mpsc::channel();
    settler
        .send(ToSettler::Barrier(reply))
        .map_err(|_| settler_gone())?;
    answer.recv().map_err(|_| settler_gone())?
}

fn settler_gone() -> Error {
    Error::Storage("the settle thread stopped".to_owned())
}

/// How often, at most, a drain drops expired rows while it runs.
const EXPIRE_EVERY_MS: i64 = 1000;

/// What the drain does after an answer (the policy's decision, with what it needs).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Next,
    RetryAfter(Duration),
    /// Halve the batch of this many rows.
    Split(usize),
    /// The rows were dead-lettered (HTTP status).
    DeadLetter(u16),
    /// Stop on this HTTP status.
    Stop(u16),
}

fn to_decision(d: policy::Decision, batch: &Batch, status: u16) -> Decision {
    match d {
        policy::Decision::Next => Decision::Next,
        policy::Decision::RetryAfter(wait) => Decision::RetryAfter(wait),
        policy::Decision::Split => Decision::Split(batch.len()),
        policy::Decision::DeadLetter => Decision::DeadLetter(status),
        policy::Decision::Stop => Decision::Stop(status),
    }
}

/// Stamps `sentAt`, compresses and sends; runs on the request's own thread.
fn send(
    transport: &dyn Transport,
    clock: &dyn Clock,
    open_body: Vec<u8>,
    compress: bool,
) -> (u64, Result<Reply, NetworkError>) {
    let mut body = seal(open_body, clock.now_ms());
    if compress {
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        match gz.write_all(&body).and_then(|()| gz.finish()) {
            Ok(compressed) => body = compressed,
            Err(e) => return (0, Err(NetworkError(format!("gzip failed: {e}")))),
        }
    }
    let len = body.len() as u64;
    (len, transport.post_batch(body, compress))
}

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

    /// Drains until empty, a wait, or a stop. Up to [`PIPELINE_DEPTH`] requests are in flight
    /// at once, each with its own rows, so that packing, compressing, the network and the
    /// server's commit overlap; answers are handled in order.
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
        // Settles commit many pages: the WAL is copied back on a thread of the drain's own,
        // so that no settle waits for it.
        self.buffer.auto_checkpoints(false)?;
        let result = self.pipeline(&mut report);
        let restored = self.buffer.auto_checkpoints(true);
        result?;
        restored?;
        Ok(report)
    }

    /// The body of [`Drain::run`] once the window is known.
    fn pipeline(&mut self, report: &mut DrainReport) -> Result<(), Error> {
        let transport = self.transport;
        let compress = self.compress;
        let clock = self.clock;
        let buffer = self.buffer;
        let max_dead_letters = self.max_dead_letters;
        std::thread::scope(|scope| {
            // Dropped when this closure returns, which stops the checkpoint thread.
            let (_stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
            scope.spawn(move || run_checkpointer(buffer, &stopped));
            let mut in_flight: VecDeque<InFlight<'_>> = VecDeque::new();
            // Successful answers are settled on a thread of their own, in order, while the
            // next requests are packed and sent; every other answer first waits for them.
            let (settler, jobs) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
            scope.spawn(move || run_settler(buffer, max_dead_letters, jobs));
            let mut cap = self.max_events;
            let mut after: Option<i64> = None;
            let mut exhausted = false;
            let mut expired_at: Option<i64> = None;
            loop {
                while !exhausted && in_flight.len() < PIPELINE_DEPTH {
                    let now = clock.now_ms();
                    if expired_at.is_none_or(|t| now - t >= EXPIRE_EVERY_MS) {
                        report.expired += buffer.expire(now - self.window())?;
                        expired_at = Some(now);
                    }
                    let removals = buffer.removals();
                    let mut packer = Packer::new(cap, self.max_bytes);
                    self.buffer
                        .scan_oldest(after, |row| packer.offer(row.seq, row.body))?;
                    let mut batch = packer.finish();
                    if batch.is_empty() {
                        exhausted = true;
                        break;
                    }
                    after = batch.last_seq();
                    let open_body = std::mem::take(&mut batch.open_body);
                    let request = scope.spawn(move || send(transport, clock, open_body, compress));
                    in_flight.push_back(InFlight {
                        batch,
                        removals,
                        request,
                    });
                }
                let Some(next) = in_flight.pop_front() else {
                    settled_all(&settler)?;
                    return Ok(());
                };
                let answered = self.answer(next, report)?;
                let decision = answered.decision.clone();
                if decision == Decision::Next && answered.refused_all.is_none() {
                    let job = ToSettler::Settle(answered.settled, clock.now_ms());
                    settler.send(job).map_err(|_| settler_gone())?;
                    *self.failures = 0;
                    cap = (cap * 2).min(self.max_events);
                    continue;
                }
                settled_all(&settler)?;
                self.apply(answered)?;
                // Anything but success: let the requests already sent finish and settle what
                // they delivered, then act from the oldest unsettled row again.
                while let Some(other) = in_flight.pop_front() {
                    let answered = self.answer(other, report)?;
                    self.apply(answered)?;
                }
                after = None;
                exhausted = false;
                match decision {
                    Decision::Next => {}
                    Decision::Split(len) => cap = (len / 2).max(1),
                    Decision::DeadLetter(_) => {}
                    Decision::Stop(code) => {
                        report.end = DrainEnd::Unauthorized(code);
                        return Ok(());
                    }
                    Decision::RetryAfter(wait) => {
                        *self.failures = self.failures.saturating_add(1);
                        report.end = DrainEnd::RetryIn(wait);
                        return Ok(());
                    }
                }
            }
        })
    }

    /// Settles an answer's rows in the buffer now.
    fn apply(&self, answered: Answered) -> Result<(), Error> {
        let now = self.clock.now_ms();
        self.buffer
            .settle(&answered.settled, now, self.max_dead_letters)?;
        if let Some(refused) = answered.refused_all {
            self.buffer.settle(&refused, now, self.max_dead_letters)?;
        }
        Ok(())
    }

    /// Waits for one request's answer, counts it, and says what the drain does next and what
    /// the answer settles.
    fn answer(
        &mut self,
        flight: InFlight<'_>,
        report: &mut DrainReport,
    ) -> Result<Answered, Error> {
        let InFlight {
            batch,
            removals,
            request,
        } = flight;
        let (wire_len, result) = request
            .join()
            .unwrap_or((0, Err(NetworkError("request thread panicked".into()))));
        report.requests += 1;
        report.bytes_sent += wire_len;
        // The request is counted with whatever it settles, in one transaction.
        let mut sent = Settled {
            requests: 1,
            bytes_sent: wire_len,
            ..Default::default()
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                return Ok(Answered {
                    decision: to_decision(self.policy(&Answer::Network, batch.len()), &batch, 0),
                    settled: sent,
                    refused_all: None,
                });
            }
        };
        self.learn_window(&reply)?;
        let answer = match serde_json::from_slice::<BatchResponse>(&reply.body) {
            Ok(accepted) if reply.status == 202 => {
                sent = Settled {
                    requests: 1,
                    bytes_sent: wire_len,
                    removals_when_packed: Some(removals),
                    ..settle(&batch, &accepted)
                };
                let retry_rows = sent.delivered.len() + sent.refused.len() < batch.len();
                report.sent += sent.delivered.len() as u64;
                report.duplicates += sent.duplicates;
                report.dead_lettered += sent.refused.len() as u64;
                Answer::Accepted { retry_rows }
            }
            // A 202 that is not the contract's answer: resending is safe (insert ids deduplicate).
            Err(_) if reply.status == 202 => Answer::Status {
                code: 502,
                retry_after: None,
            },
            _ => Answer::Status {
                code: reply.status,
                retry_after: reply.retry_after,
            },
        };
        let decision = to_decision(self.policy(&answer, batch.len()), &batch, reply.status);
        let refused_all = if let Decision::DeadLetter(_) = decision {
            let error = serde_json::from_slice::<ErrorBody>(&reply.body)
                .map(|b| b.message)
                .unwrap_or_else(|_| format!("HTTP {}", reply.status));
            report.dead_lettered += batch.len() as u64;
            Some(Settled {
                refused: batch.seqs.iter().map(|s| (*s, error.clone())).collect(),
                ..Default::default()
            })
        } else {
            None
        };
        Ok(Answered {
            decision,
            settled: sent,
            refused_all,
        })
    }

    fn policy(&self, answer: &Answer, batch_len: usize) -> policy::Decision {
        decide(
            answer,
            *self.failures,
            batch_len,
            &self.backoff,
            Self::draw(),
        )
    }

    fn fail(&mut self, answer: &Answer, batch_len: usize) -> DrainEnd {
        let decision = self.policy(answer, batch_len);
        *self.failures = self.failures.saturating_add(1);
        match decision {
            policy::Decision::RetryAfter(wait) => DrainEnd::RetryIn(wait),
            _ => DrainEnd::RetryIn(self.backoff.delay(*self.failures, Self::draw())),
        }
    }
}

/// Splits a batch's rows by the `202` answer: delivered, refused for good, or (left out of
/// both) to be resent.
fn settle(batch: &Batch, answer: &BatchResponse) -> Settled {
    let mut settled = Settled {
        duplicates: answer.duplicates as u64,
        ..Default::default()
    };
    // The contract sorts `rejected` by index; a map keeps this right even if a server does not.
    let rejected: std::collections::HashMap<usize, &Rejection> =
        answer.rejected.iter().map(|r| (r.index, r)).collect();
    for (index, (seq, size)) in batch.seqs.iter().zip(&batch.sizes).enumerate() {
        match rejected.get(&index) {
            Some(r) if r.reason == RejectReason::Validation => {
                settled.refused.push((*seq, r.error.clone()))
            }
            Some(_) => {}
            None => {
                settled.delivered.push(*seq);
                settled.delivered_bytes += u64::from(*size);
            }
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let batch = Batch {
            seqs: vec![10, 11, 12, 13],
            sizes: vec![100, 200, 300, 400],
            open_body: Vec::new(),
        };
        let s = settle(&batch, &answer);
        assert_eq!(s.delivered, vec![10, 13]);
        assert_eq!(s.delivered_bytes, 500);
        assert_eq!(s.refused, vec![(12, "bad".to_owned())]);
        assert_eq!(s.duplicates, 1);
    }
}
