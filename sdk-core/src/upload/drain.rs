//! One drain: expire, pack, send, settle, until the buffer is empty or the server says wait.

use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use backfill_protocol::clock::Clock;
use backfill_protocol::wire::{BatchResponse, ErrorBody, RejectReason, Rejection};

use std::collections::VecDeque;
use std::thread::ScopedJoinHandle;

use super::policy::{Answer, Attempt, Backoff, Decision, Fault, Verdict, decide};
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
    verdict: Verdict,
    /// Delivered and refused rows of a `202`, and the request's own count.
    settled: Settled,
    /// The request's rows.
    batch: Batch,
    /// What the server said when it refused the whole request (status and message).
    refusal: Option<(u16, String)>,
}

/// A single event of a split that the server refused, kept buffered until its sibling's answer
/// tells whether the event or the configuration is at fault.
struct Held {
    seq: i64,
    status: u16,
    error: String,
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

/// Whether `ms` is an age window a server may have: a whole number of days from 1 to 90
/// (SPEC §4). Only such a window, from a `backfill-max-event-age` header or saved from one,
/// expires events.
pub fn is_server_window(ms: i64) -> bool {
    const DAY_MS: i64 = 86_400_000;
    ms % DAY_MS == 0 && (1..=90).contains(&(ms / DAY_MS))
}

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
    /// The answers say the endpoint is wrong (`404`, `405`, `410`, an answer that is not the
    /// contract's, or every event refused alike, SPEC §9); uploads stop and nothing is deleted.
    /// The text says what the server answered.
    Misconfigured(String),
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
    /// The event time (epoch ms) of the oldest event dropped as expired.
    pub oldest_expired_ms: Option<i64>,
    /// The age window (ms) events were expired by: the server's, or the default.
    pub window_ms: i64,
    /// Requests that got an answer.
    pub requests: u64,
    /// Bytes of request bodies on the wire.
    pub bytes_sent: u64,
    /// The last failure's cause (`connection refused`, `HTTP 503: ...`), if any.
    pub last_error: Option<String>,
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
            if !is_server_window(ms) {
                // Events are deleted by this window: a value no server of the contract sends
                // (a proxy's, a typo's) is not trusted with them.
                tracing::warn!(
                    seconds = age.as_secs(),
                    "ignoring a backfill-max-event-age that is not a whole number of days from 1 to 90"
                );
            } else if self.window_ms.swap(ms, Ordering::Relaxed) != ms {
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
            oldest_expired_ms: None,
            window_ms: 0,
            requests: 0,
            bytes_sent: 0,
            last_error: None,
            end: DrainEnd::Empty,
        };
        // Learn the server's window before expiring anything by the default one: a server
        // configured for a week must receive the events of days 6 and 7.
        if self.window_ms.load(Ordering::Relaxed) == 0 && self.buffer.totals()?.0 > 0 {
            match self.transport.probe() {
                Ok(reply) => {
                    self.learn_window(&reply)?;
                    // `GET /healthz` exists on every Backfill server (SPEC §8): a URL where it
                    // is missing is not one's root.
                    if matches!(reply.status, 404 | 405 | 410) {
                        report.end = DrainEnd::Misconfigured(format!(
                            "GET /healthz answered HTTP {}: the endpoint is not a Backfill \
                             server's base URL",
                            reply.status
                        ));
                        return Ok(report);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "server unreachable");
                    report.last_error = Some(e.0);
                    *self.failures = self.failures.saturating_add(1);
                    report.end =
                        DrainEnd::RetryIn(self.backoff.delay(*self.failures, Self::draw()));
                    return Ok(report);
                }
            }
        }
        report.window_ms = self.window();
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
            // A split is under way (the batch size has not yet grown back): one request at a
            // time, so that each answer is read before the next rows are chosen.
            let mut splitting = false;
            let mut held: Option<Held> = None;
            loop {
                let depth = if splitting { 1 } else { PIPELINE_DEPTH };
                while !exhausted && in_flight.len() < depth {
                    let now = clock.now_ms();
                    if expired_at.is_none_or(|t| now - t >= EXPIRE_EVERY_MS) {
                        let expired = buffer.expire(now - self.window())?;
                        report.expired += expired.count;
                        report.oldest_expired_ms =
                            match (report.oldest_expired_ms, expired.oldest_ms) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            };
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
                let attempt = Attempt {
                    failures: *self.failures,
                    batch_len: next.batch.len(),
                    split: splitting,
                    held: held.as_ref().map(|h| h.status),
                };
                let answered = self.answer(next, &attempt, report)?;
                let Verdict {
                    decision,
                    dead_letter_held,
                } = answered.verdict.clone();
                if decision == Decision::Next {
                    *self.failures = 0;
                    cap = (cap * 2).min(self.max_events);
                    splitting &= cap < self.max_events;
                }
                if decision == Decision::Next && !dead_letter_held {
                    let job = ToSettler::Settle(answered.settled, clock.now_ms());
                    settler.send(job).map_err(|_| settler_gone())?;
                    continue;
                }
                settled_all(&settler)?;
                let now = clock.now_ms();
                buffer.settle(&answered.settled, now, max_dead_letters)?;
                if dead_letter_held && let Some(h) = held.take() {
                    self.dead_letter(&[h.seq], &h.error, report)?;
                }
                // Anything but plain success: let the requests already sent finish and settle
                // what they delivered; the rest is sent again from the oldest unsettled row.
                let others = !in_flight.is_empty();
                while let Some(other) = in_flight.pop_front() {
                    let attempt = Attempt {
                        batch_len: other.batch.len(),
                        ..attempt
                    };
                    let answered = self.answer(other, &attempt, report)?;
                    buffer.settle(&answered.settled, clock.now_ms(), max_dead_letters)?;
                }
                if others || decision != Decision::Next {
                    after = None;
                    exhausted = false;
                }
                match decision {
                    Decision::Next => {}
                    Decision::Split => {
                        cap = (answered.batch.len() / 2).max(1);
                        splitting = true;
                    }
                    Decision::DeadLetter => {
                        let error = answered.refusal.map(|r| r.1).unwrap_or_default();
                        self.dead_letter(&answered.batch.seqs, &error, report)?;
                    }
                    Decision::Hold => {
                        let (status, error) = answered.refusal.unwrap_or_default();
                        let seq = answered.batch.seqs.first().copied();
                        if let Some(seq) = seq {
                            held = Some(Held { seq, status, error });
                        }
                        after = seq;
                        cap = 1;
                    }
                    Decision::Stop(fault) => {
                        let said = answered
                            .refusal
                            .map(|(code, message)| format!("HTTP {code}: {message}"))
                            .unwrap_or_default();
                        report.end = match fault {
                            Fault::Credentials(code) => DrainEnd::Unauthorized(code),
                            Fault::Endpoint(_) => DrainEnd::Misconfigured(format!(
                                "{said}: the endpoint is not a Backfill server's base URL, or \
                                 a proxy in front of it answers in its place"
                            )),
                            Fault::RefusedAlike(_) => DrainEnd::Misconfigured(format!(
                                "{said}, for every event sent alone: the server refuses the \
                                 requests, not the events"
                            )),
                        };
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

    /// Moves rows the server refused for themselves to the dead-letter table.
    fn dead_letter(
        &self,
        seqs: &[i64],
        error: &str,
        report: &mut DrainReport,
    ) -> Result<(), Error> {
        let refused = Settled {
            refused: seqs.iter().map(|s| (*s, error.to_owned())).collect(),
            ..Default::default()
        };
        self.buffer
            .settle(&refused, self.clock.now_ms(), self.max_dead_letters)?;
        report.dead_lettered += seqs.len() as u64;
        Ok(())
    }

    /// Waits for one request's answer, counts it, and says what the drain does next and what
    /// the answer settles.
    fn answer(
        &mut self,
        flight: InFlight<'_>,
        attempt: &Attempt,
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
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                report.last_error = Some(e.0);
                return Ok(Answered {
                    verdict: self.policy(&Answer::Network, attempt),
                    settled: Settled::default(),
                    batch,
                    refusal: None,
                });
            }
        };
        // Only requests that got an answer are counted, with whatever they settle, in one
        // transaction.
        report.requests += 1;
        report.bytes_sent += wire_len;
        let mut settled = Settled {
            requests: 1,
            bytes_sent: wire_len,
            ..Default::default()
        };
        self.learn_window(&reply)?;
        let mut refusal = None;
        let parsed = match serde_json::from_slice::<BatchResponse>(&reply.body) {
            Ok(accepted) if reply.status == 202 => match unaccounted(batch.len(), &accepted) {
                None => Ok(accepted),
                Some(why) => Err(Some(why)),
            },
            _ => Err(None),
        };
        let answer = match parsed {
            Ok(accepted) => {
                settled = Settled {
                    requests: 1,
                    bytes_sent: wire_len,
                    removals_when_packed: Some(removals),
                    ..settle(&batch, &accepted)
                };
                let retry_rows = settled.delivered.len() + settled.refused.len() < batch.len();
                report.sent += settled.delivered.len() as u64;
                report.duplicates += settled.duplicates;
                report.dead_lettered += settled.refused.len() as u64;
                if retry_rows {
                    report.last_error = Some("the server failed on some events".to_owned());
                }
                Answer::Accepted { retry_rows }
            }
            Err(unaccounted) => {
                let body = serde_json::from_slice::<ErrorBody>(&reply.body)
                    .ok()
                    .filter(|b| b.status == reply.status);
                let contract_body = body.is_some();
                let message = body.map(|b| b.message).unwrap_or_else(|| {
                    if (300..400).contains(&reply.status) {
                        "the server redirects elsewhere (redirects are not followed, so that \
                         the client secret goes nowhere else); give the URL it redirects to, \
                         often its https:// form"
                            .to_owned()
                    } else if reply.status == 415 {
                        "the server, or a proxy in front of it, refuses compressed bodies; send \
                         them uncompressed (compress(false); backfill drain --no-gzip)"
                            .to_owned()
                    } else if let Some(why) = &unaccounted {
                        format!("an answer that is not the contract's ({why})")
                    } else if reply.status == 202 {
                        "an answer that is not the contract's".to_owned()
                    } else {
                        "an answer that is not the contract's JSON error body".to_owned()
                    }
                });
                report.last_error = Some(format!("HTTP {}: {message}", reply.status));
                refusal = Some((reply.status, message));
                Answer::Status {
                    code: reply.status,
                    retry_after: reply.retry_after,
                    contract_body,
                }
            }
        };
        Ok(Answered {
            verdict: self.policy(&answer, attempt),
            settled,
            batch,
            refusal,
        })
    }

    fn policy(&self, answer: &Answer, attempt: &Attempt) -> Verdict {
        decide(answer, attempt, &self.backoff, Self::draw())
    }
}

/// Why a `202` answer does not account for a batch of `len` rows, if it does not. SPEC §2: every
/// index in `0..len` appears exactly once, either as accepted or as rejected, and `duplicates`
/// counts accepted rows. Rows are deleted by the answer, so one that does not add up (a proxy's,
/// or a server's that is not this contract's) deletes nothing: it could name as delivered rows
/// that no server stored.
fn unaccounted(len: usize, answer: &BatchResponse) -> Option<String> {
    let mut rejected = vec![false; len];
    for r in &answer.rejected {
        match rejected.get_mut(r.index) {
            None => {
                return Some(format!(
                    "rejected index {} is outside a batch of {len}",
                    r.index
                ));
            }
            Some(true) => return Some(format!("rejected index {} appears twice", r.index)),
            Some(seen) => *seen = true,
        }
    }
    if answer.accepted.checked_add(answer.rejected.len()) != Some(len) {
        return Some(format!(
            "{} accepted and {} rejected for a batch of {len}",
            answer.accepted,
            answer.rejected.len()
        ));
    }
    if answer.duplicates > answer.accepted {
        return Some(format!(
            "{} duplicates among {} accepted",
            answer.duplicates, answer.accepted
        ));
    }
    None
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
        assert_eq!(unaccounted(4, &answer), None);
        let s = settle(&batch, &answer);
        assert_eq!(s.delivered, vec![10, 13]);
        assert_eq!(s.delivered_bytes, 500);
        assert_eq!(s.refused, vec![(12, "bad".to_owned())]);
        assert_eq!(s.duplicates, 1);
    }

    #[test]
    fn an_answer_must_account_for_every_row_once() {
        let rejected = |indexes: &[usize]| -> Vec<Rejection> {
            indexes
                .iter()
                .map(|&index| Rejection {
                    index,
                    reason: RejectReason::Validation,
                    error: "bad".into(),
                })
                .collect()
        };
        let answer = |accepted, duplicates, indexes: &[usize]| BatchResponse {
            accepted,
            duplicates,
            rejected: rejected(indexes),
        };
        assert_eq!(unaccounted(3, &answer(3, 3, &[])), None);
        assert_eq!(unaccounted(3, &answer(0, 0, &[0, 1, 2])), None);
        for (wrong, why) in [
            (
                answer(1, 0, &[]),
                "1 accepted and 0 rejected for a batch of 3",
            ),
            (
                answer(3, 0, &[1]),
                "3 accepted and 1 rejected for a batch of 3",
            ),
            (
                answer(2, 0, &[3]),
                "rejected index 3 is outside a batch of 3",
            ),
            (answer(1, 0, &[1, 1]), "rejected index 1 appears twice"),
            (answer(3, 4, &[]), "4 duplicates among 3 accepted"),
            (answer(usize::MAX, 0, &[1]), "accepted and 1 rejected"),
        ] {
            let found = unaccounted(3, &wrong);
            assert!(
                found.as_deref().is_some_and(|f| f.contains(why)),
                "{found:?}"
            );
        }
    }

    #[test]
    fn only_whole_days_from_1_to_90_are_a_server_window() {
        for days in [1, 5, 7, 90] {
            assert!(is_server_window(days * 86_400_000), "{days}");
        }
        for ms in [
            0,
            -86_400_000,
            1000,
            86_399_999,
            86_400_001,
            91 * 86_400_000,
            i64::MAX,
        ] {
            assert!(!is_server_window(ms), "{ms}");
        }
    }
}
