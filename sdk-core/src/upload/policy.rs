//! The retry policy: from (what happened, how many failures so far) to (what next, how long to
//! wait). Pure, so every status and failure is tested without a network.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// What one request came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `202`; `retry_rows` when some rows were refused `internal` and must be resent.
    Accepted {
        /// Some rows must be resent.
        retry_rows: bool,
    },
    /// Any other HTTP status.
    Status {
        /// The status code.
        code: u16,
        /// The `Retry-After` header, if any.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, reset, timed out.
    Network,
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
    /// This single row will never be accepted: dead-letter it.
    DeadLetter,
    /// Stop uploading and report; keep the data.
    Stop,
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

/// Decides what follows `answer` for a batch of `batch_len` rows after `failures` consecutive
/// failed attempts.
pub fn decide(
    answer: &Answer,
    failures: u32,
    batch_len: usize,
    backoff: &Backoff,
    draw: f64,
) -> Decision {
    let wait = |retry_after: Option<Duration>| {
        let jittered = backoff.delay(failures, draw);
        Decision::RetryAfter(retry_after.map_or(jittered, |r| r.max(jittered)))
    };
    match answer {
        Answer::Accepted { retry_rows: false } => Decision::Next,
        Answer::Accepted { retry_rows: true } | Answer::Network => wait(None),
        Answer::Status { code, retry_after } => match code {
            401 | 403 => Decision::Stop,
            408 | 429 | 500..=599 => wait(*retry_after),
            // 413 and other client errors: halve until the row at fault stands alone.
            400..=499 if batch_len > 1 => Decision::Split,
            400..=499 => Decision::DeadLetter,
            // A 2xx other than 202, or a 1xx/3xx: not the contract's answer; try again later.
            _ => wait(*retry_after),
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

    fn status(code: u16) -> Answer {
        Answer::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn every_answer_has_its_decision() {
        assert_eq!(
            decide(&Answer::Accepted { retry_rows: false }, 0, 10, &B, 0.5),
            Decision::Next
        );
        assert_eq!(
            decide(&Answer::Accepted { retry_rows: true }, 0, 10, &B, 0.5),
            Decision::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(
            decide(&Answer::Network, 2, 10, &B, 0.5),
            Decision::RetryAfter(Duration::from_secs(2))
        );
        for code in [401, 403] {
            assert_eq!(
                decide(&status(code), 0, 10, &B, 0.5),
                Decision::Stop,
                "{code}"
            );
        }
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(
                    decide(&status(code), 0, 10, &B, 0.5),
                    Decision::RetryAfter(_)
                ),
                "{code}"
            );
        }
        for code in [400, 404, 413, 415, 422] {
            assert_eq!(
                decide(&status(code), 0, 10, &B, 0.5),
                Decision::Split,
                "{code}"
            );
            assert_eq!(
                decide(&status(code), 0, 1, &B, 0.5),
                Decision::DeadLetter,
                "{code} on one row"
            );
        }
        assert!(matches!(
            decide(&status(200), 0, 10, &B, 0.5),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let answer = Answer::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            decide(&answer, 0, 1, &B, 0.9),
            Decision::RetryAfter(Duration::from_secs(30))
        );
        let answer = Answer::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(1)),
        };
        assert_eq!(
            decide(&answer, 8, 1, &B, 0.5),
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
