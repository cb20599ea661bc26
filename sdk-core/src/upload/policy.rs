//! The retry policy: from (what happened, where the drain stands) to (what next, how long to
//! wait). Pure, so every status and failure is tested without a network.
//!
//! The rules are SPEC §9's. An answer that says the *configuration* is wrong (`401`/`403`; `404`,
//! `405`, `410`; a body that is not the contract's) stops uploading and keeps every event. A
//! single event is dead-lettered only when the server refused *that event*: a `validation` row of
//! a `202`, or a `4xx` carrying the contract's error body on a request of that event alone. When
//! both events of the last split are refused alone with the same status, the refusal is about
//! the requests, not the events: a configuration fault too.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// What one request came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `202` with the contract's body; `retry_rows` when some rows were refused `internal` and
    /// must be resent.
    Accepted {
        /// Some rows must be resent.
        retry_rows: bool,
    },
    /// Any other HTTP answer.
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` header, if any.
        retry_after: Option<Duration>,
        /// The body is the contract's JSON error body (`{"status", "error", "message"}`, its
        /// `status` equal to `code`): this server read the request and refused it.
        contract_body: bool,
    },
    /// No answer: connection refused, reset, timed out, DNS or TLS failure.
    Network,
}

/// Why uploading stopped. Each is a fault of the configuration, not of the events: nothing is
/// deleted, and uploads resume once it is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `401`/`403`: the server refused the client id or secret (SPEC §1).
    Credentials(u16),
    /// `404`, `405` or `410`, or an answer that is not the contract's: the endpoint URL does not
    /// lead to a Backfill server's root.
    Endpoint(u16),
    /// Both events of a split were refused alone with this same status: the server refuses the
    /// requests, whatever they carry.
    RefusedAlike(u16),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the next batch at once.
    Next,
    /// Wait, then try again (the unsettled rows stay buffered).
    RetryAfter(Duration),
    /// Send the same rows again in halves.
    Split,
    /// A single event of a split was refused: keep it buffered and aside, and send the next
    /// event alone. That answer tells whether the held event or the configuration is at fault.
    Hold,
    /// This single event was refused for itself and will never be accepted: dead-letter it.
    DeadLetter,
    /// Stop uploading and report; keep the data.
    Stop(Fault),
}

/// Where the drain stands when an answer comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Consecutive failed attempts before this one.
    pub failures: u32,
    /// Events in the request.
    pub batch_len: usize,
    /// The request carries part of a larger batch that was refused (a split is under way).
    pub split: bool,
    /// The status a held event of this split was refused with, if one is held.
    pub held: Option<u16>,
}

/// The decision, and the fate of a held event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What to do next.
    pub decision: Decision,
    /// The held event was refused for itself (this answer shows the server takes or tells
    /// apart other events): dead-letter it. Otherwise a held event stays buffered.
    pub dead_letter_held: bool,
}

/// Exponential backoff with full jitter: `draw * min(cap, base * 2^failures)`. The exponential
/// schedule is `backon`'s; the jitter is drawn over the whole delay ("full jitter"), which spreads
/// the retries of many devices coming back after one outage better than `backon`'s own jitter,
/// which only adds to the delay.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay scale of the first retry.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

/// No retry comes sooner than this, so that a zero draw never turns into a tight loop.
pub const MIN_RETRY: Duration = Duration::from_millis(50);

impl Backoff {
    /// The delay before retry number `failures + 1`; `draw` is uniform in `[0, 1)`.
    pub fn delay(&self, failures: u32, draw: f64) -> Duration {
        let base = self.base.min(self.cap);
        let ceiling = ExponentialBuilder::new()
            .with_min_delay(base)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
            // Past 64 doublings every delay is the cap.
            .nth(failures.min(64) as usize)
            .unwrap_or(self.cap);
        ceiling.mul_f64(draw.clamp(0.0, 1.0)).max(MIN_RETRY)
    }
}

/// The longest `Retry-After` honoured: a proxy or a misbehaving server answering
/// `Retry-After: 1000000000` would otherwise park uploads for decades. A longer wait is cut to
/// this (jitter still applies below it); the server's own answers stay far under it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Decides what follows `answer` (SPEC §9).
pub fn decide(answer: &Answer, attempt: &Attempt, backoff: &Backoff, draw: f64) -> Verdict {
    let wait = |retry_after: Option<Duration>| {
        let jittered = backoff.delay(attempt.failures, draw);
        Decision::RetryAfter(retry_after.map_or(jittered, |r| r.min(MAX_RETRY_AFTER).max(jittered)))
    };
    let verdict = |decision: Decision, dead_letter_held: bool| Verdict {
        decision,
        dead_letter_held: dead_letter_held && attempt.held.is_some(),
    };
    let single = attempt.batch_len <= 1;
    match *answer {
        // The server read the request and answered row by row: it takes events, so a held event
        // was refused for itself.
        Answer::Accepted { retry_rows: false } => verdict(Decision::Next, true),
        Answer::Accepted { retry_rows: true } => verdict(wait(None), true),
        Answer::Network => verdict(wait(None), false),
        Answer::Status {
            code,
            retry_after,
            contract_body,
        } => match code {
            401 | 403 => verdict(Decision::Stop(Fault::Credentials(code)), false),
            404 | 405 | 410 => verdict(Decision::Stop(Fault::Endpoint(code)), false),
            408 | 429 | 500..=599 => verdict(wait(retry_after), false),
            // "Too large" is about the request whoever says it (a proxy's limit too): halve.
            413 if !single => verdict(Decision::Split, false),
            // Any other 4xx that is not this server's error body, and any 1xx/2xx/3xx but the
            // contract's 202: something else answers at this URL.
            400..=499 if !contract_body => verdict(Decision::Stop(Fault::Endpoint(code)), false),
            400..=499 if !single => verdict(Decision::Split, false),
            400..=499 => match attempt.held {
                Some(held) if held == code => {
                    verdict(Decision::Stop(Fault::RefusedAlike(code)), false)
                }
                // Told apart from its sibling: each was refused for itself.
                Some(_) => verdict(Decision::Hold, true),
                None if attempt.split => verdict(Decision::Hold, false),
                None => verdict(Decision::DeadLetter, false),
            },
            _ => verdict(Decision::Stop(Fault::Endpoint(code)), false),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    };

    fn status(code: u16, contract_body: bool) -> Answer {
        Answer::Status {
            code,
            retry_after: None,
            contract_body,
        }
    }

    fn attempt(batch_len: usize) -> Attempt {
        Attempt {
            failures: 0,
            batch_len,
            split: false,
            held: None,
        }
    }

    fn decision(answer: &Answer, at: Attempt) -> Decision {
        decide(answer, &at, &B, 0.5).decision
    }

    #[test]
    fn every_answer_has_its_decision() {
        assert_eq!(
            decision(&Answer::Accepted { retry_rows: false }, attempt(10)),
            Decision::Next
        );
        assert_eq!(
            decision(&Answer::Accepted { retry_rows: true }, attempt(10)),
            Decision::RetryAfter(Duration::from_millis(500))
        );
        let third = Attempt {
            failures: 2,
            ..attempt(10)
        };
        assert_eq!(
            decision(&Answer::Network, third),
            Decision::RetryAfter(Duration::from_secs(2))
        );
        for code in [408, 429, 500, 502, 503, 504] {
            for body in [true, false] {
                assert!(
                    matches!(
                        decision(&status(code, body), attempt(10)),
                        Decision::RetryAfter(_)
                    ),
                    "{code}"
                );
            }
        }
        for code in [400, 413, 415, 422] {
            assert_eq!(
                decision(&status(code, true), attempt(10)),
                Decision::Split,
                "{code}"
            );
            assert_eq!(
                decision(&status(code, true), attempt(1)),
                Decision::DeadLetter,
                "{code} on one event, not part of a split"
            );
        }
    }

    #[test]
    fn a_wrong_endpoint_or_credentials_stop_without_touching_a_row() {
        for len in [1, 2, 2000] {
            for body in [true, false] {
                for code in [401, 403] {
                    assert_eq!(
                        decision(&status(code, body), attempt(len)),
                        Decision::Stop(Fault::Credentials(code))
                    );
                }
                // `.../v1` or `.../track/batch` as the endpoint: the server's own 404 body.
                for code in [404, 405, 410] {
                    assert_eq!(
                        decision(&status(code, body), attempt(len)),
                        Decision::Stop(Fault::Endpoint(code)),
                        "{code} on {len}"
                    );
                }
            }
            // Something else answers there: an HTML 400 page, a 200 from a web server, a 202
            // that is not the contract's answer, a redirect.
            for code in [400, 422, 451, 200, 202, 301] {
                assert_eq!(
                    decision(&status(code, false), attempt(len)),
                    Decision::Stop(Fault::Endpoint(code)),
                    "{code} without the contract's body on {len}"
                );
            }
        }
        assert_eq!(
            decision(&status(413, false), attempt(10)),
            Decision::Split,
            "a proxy's size limit: halve"
        );
        assert_eq!(
            decision(&status(413, false), attempt(1)),
            Decision::Stop(Fault::Endpoint(413)),
            "a proxy's limit below one event is configuration"
        );
    }

    #[test]
    fn a_split_dead_letters_only_an_event_the_server_told_apart() {
        let split = |held| Attempt {
            split: true,
            held,
            ..attempt(1)
        };
        // The first event alone is refused: held, not dead-lettered.
        let first = decide(&status(400, true), &split(None), &B, 0.5);
        assert_eq!(first.decision, Decision::Hold);
        assert!(!first.dead_letter_held);
        // Its sibling is accepted: the held one was refused for itself.
        let accepted = decide(
            &Answer::Accepted { retry_rows: false },
            &split(Some(400)),
            &B,
            0.5,
        );
        assert_eq!(accepted.decision, Decision::Next);
        assert!(accepted.dead_letter_held);
        // Its sibling is refused alike: the requests are refused, not the events.
        let alike = decide(&status(400, true), &split(Some(400)), &B, 0.5);
        assert_eq!(alike.decision, Decision::Stop(Fault::RefusedAlike(400)));
        assert!(!alike.dead_letter_held);
        // Refused otherwise: the server told them apart; the new one is held in turn.
        let apart = decide(&status(422, true), &split(Some(400)), &B, 0.5);
        assert_eq!(apart.decision, Decision::Hold);
        assert!(apart.dead_letter_held);
        // No answer, or a busy server: nothing is learned, the held event stays buffered.
        for answer in [Answer::Network, status(503, true)] {
            let v = decide(&answer, &split(Some(400)), &B, 0.5);
            assert!(matches!(v.decision, Decision::RetryAfter(_)));
            assert!(!v.dead_letter_held);
        }
        // Without a held event there is nothing to dead-letter.
        let v = decide(
            &Answer::Accepted { retry_rows: false },
            &attempt(5),
            &B,
            0.5,
        );
        assert!(!v.dead_letter_held);
    }

    #[test]
    fn a_retry_after_of_decades_is_cut_to_an_hour() {
        let answer = Answer::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(1_000_000_000)),
            contract_body: true,
        };
        assert_eq!(
            decide(&answer, &attempt(1), &B, 0.9).decision,
            Decision::RetryAfter(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let answer = Answer::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(30)),
            contract_body: true,
        };
        let verdict = decide(&answer, &attempt(1), &B, 0.9);
        assert_eq!(
            verdict.decision,
            Decision::RetryAfter(Duration::from_secs(30))
        );
        let answer = Answer::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(1)),
            contract_body: true,
        };
        let ninth = Attempt {
            failures: 8,
            ..attempt(1)
        };
        assert_eq!(
            decide(&answer, &ninth, &B, 0.5).decision,
            Decision::RetryAfter(Duration::from_secs(128))
        );
    }

    #[test]
    fn backoff_doubles_with_full_jitter_up_to_the_cap() {
        assert_eq!(B.delay(0, 0.999_999).as_millis(), 999);
        assert_eq!(B.delay(3, 0.5), Duration::from_secs(4));
        assert_eq!(
            B.delay(20, 0.5),
            Duration::from_secs(150),
            "capped at 300 s before jitter"
        );
        assert_eq!(B.delay(1000, 1.0), Duration::from_secs(300));
        assert_eq!(B.delay(u32::MAX, 1.0), Duration::from_secs(300));
        let inverted = Backoff {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(2),
        };
        assert_eq!(
            inverted.delay(0, 1.0),
            Duration::from_secs(2),
            "the cap wins over the base"
        );
        assert_eq!(
            B.delay(5, 0.0),
            MIN_RETRY,
            "a zero draw still waits a little"
        );
    }
}
