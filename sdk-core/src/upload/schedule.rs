//! When the background uploader drains next: a pure function of what it knows, so that the
//! threshold, the interval, going online, backoff and pauses are tested without a clock or a
//! thread. The uploader thread only acts on the answer.

/// What the uploader knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// The app says the network is up.
    pub online: bool,
    /// Uploads are paused (the server refused the credentials).
    pub paused: bool,
    /// Events waiting in the buffer.
    pub buffered: u64,
    /// Buffered events that start a drain at once ([`Config::flush_threshold`](crate::Config)).
    pub threshold: u64,
    /// The app asked for a drain (back online, back in the foreground).
    pub asked: bool,
    /// Now, epoch ms.
    pub now_ms: i64,
    /// When the interval timer fires, epoch ms (armed when events start to wait, and after
    /// each drain).
    pub interval_due_ms: i64,
    /// No retry before this time, epoch ms (0: no backoff).
    pub retry_at_ms: i64,
}

/// What the uploader does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until something changes: sleep without a timer.
    Idle,
    /// Drain now.
    DrainNow,
    /// Sleep until this time (epoch ms), or until something changes.
    WaitUntil(i64),
}

/// Decides: idle while offline, paused or empty; otherwise drain once the threshold is reached
/// or the app asked (but never inside a backoff), else when the interval timer fires.
pub fn next(s: &Situation) -> Next {
    if !s.online || s.paused || s.buffered == 0 {
        return Next::Idle;
    }
    let due = if s.asked || s.buffered >= s.threshold {
        s.retry_at_ms
    } else {
        s.interval_due_ms.max(s.retry_at_ms)
    };
    if s.now_ms >= due {
        Next::DrainNow
    } else {
        Next::WaitUntil(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn waiting(buffered: u64) -> Situation {
        Situation {
            online: true,
            paused: false,
            buffered,
            threshold: 50,
            asked: false,
            now_ms: NOW,
            interval_due_ms: NOW + 30_000,
            retry_at_ms: 0,
        }
    }

    #[test]
    fn below_the_threshold_events_wait_for_the_interval() {
        assert_eq!(next(&waiting(49)), Next::WaitUntil(NOW + 30_000));
        let fired = Situation {
            now_ms: NOW + 30_000,
            ..waiting(49)
        };
        assert_eq!(next(&fired), Next::DrainNow, "the interval drains the few");
    }

    #[test]
    fn the_threshold_drains_at_once() {
        assert_eq!(next(&waiting(50)), Next::DrainNow);
        assert_eq!(next(&waiting(5000)), Next::DrainNow);
    }

    #[test]
    fn nothing_happens_offline_paused_or_empty() {
        let offline = Situation {
            online: false,
            ..waiting(5000)
        };
        let paused = Situation {
            paused: true,
            ..waiting(5000)
        };
        for s in [offline, paused, waiting(0)] {
            assert_eq!(next(&s), Next::Idle, "{s:?}");
        }
        let asked_offline = Situation {
            asked: true,
            ..offline
        };
        assert_eq!(next(&asked_offline), Next::Idle);
    }

    #[test]
    fn going_online_or_to_the_foreground_drains_even_a_few() {
        let asked = Situation {
            asked: true,
            ..waiting(3)
        };
        assert_eq!(next(&asked), Next::DrainNow);
    }

    #[test]
    fn a_backoff_holds_every_drain_until_it_ends() {
        let backing_off = Situation {
            retry_at_ms: NOW + 8_000,
            asked: true,
            ..waiting(5000)
        };
        assert_eq!(next(&backing_off), Next::WaitUntil(NOW + 8_000));
        let later_interval = Situation {
            retry_at_ms: NOW + 8_000,
            ..waiting(3)
        };
        assert_eq!(
            next(&later_interval),
            Next::WaitUntil(NOW + 30_000),
            "the later of the two"
        );
        let over = Situation {
            now_ms: NOW + 8_000,
            ..backing_off
        };
        assert_eq!(next(&over), Next::DrainNow);
    }
}
