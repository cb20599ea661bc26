//! Client sessions for the app's own events (SPEC §9): a new session after 30 minutes without
//! events, or once a session is 24 hours long, by event time.

use serde::{Deserialize, Serialize};

/// The current client session, persisted across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The `__sessionId` sent with the session's events.
    pub id: String,
    /// Time of the session's first event (ms).
    pub started_ms: i64,
    /// Time of the session's latest event (ms).
    pub last_ms: i64,
}

/// Where an event at `t` belongs, and the session state afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In the session (possibly new) now current.
    Session(SessionState),
    /// Before the current session's reach: sent without `__sessionId`, so the server's
    /// deterministic 30-minute sessions place it, and the live session is not disturbed.
    Past,
}

/// Places an event at `t` given the current session. `new_id` is called only for a new session.
pub fn place(
    current: Option<&SessionState>,
    t: i64,
    timeout_ms: i64,
    max_length_ms: i64,
    new_id: impl FnOnce() -> String,
) -> Placement {
    let Some(s) = current else {
        return Placement::Session(SessionState {
            id: new_id(),
            started_ms: t,
            last_ms: t,
        });
    };
    if t < s.started_ms {
        if s.started_ms - t <= timeout_ms && s.last_ms - t < max_length_ms {
            return Placement::Session(SessionState {
                started_ms: t,
                ..s.clone()
            });
        }
        return Placement::Past;
    }
    if t - s.last_ms > timeout_ms || t - s.started_ms >= max_length_ms {
        return Placement::Session(SessionState {
            id: new_id(),
            started_ms: t,
            last_ms: t,
        });
    }
    Placement::Session(SessionState {
        last_ms: s.last_ms.max(t),
        ..s.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const TIMEOUT: i64 = 30 * MIN;
    const DAY: i64 = 24 * 60 * MIN;

    fn at(current: Option<&SessionState>, t: i64) -> Placement {
        place(current, t, TIMEOUT, DAY, || format!("s{t}"))
    }

    fn session(p: Placement) -> SessionState {
        match p {
            Placement::Session(s) => s,
            Placement::Past => panic!("expected a session"),
        }
    }

    #[test]
    fn first_event_starts_a_session() {
        assert_eq!(
            session(at(None, 1000)),
            SessionState {
                id: "s1000".into(),
                started_ms: 1000,
                last_ms: 1000
            }
        );
    }

    #[test]
    fn thirty_minutes_of_silence_start_a_new_session() {
        let s = session(at(None, 0));
        let s = session(at(Some(&s), 29 * MIN));
        assert_eq!(s.id, "s0");
        let same = session(at(Some(&s), 29 * MIN + TIMEOUT));
        assert_eq!(
            same.id, "s0",
            "exactly 30 minutes later is still the session"
        );
        let next = session(at(Some(&same), 29 * MIN + TIMEOUT + TIMEOUT + 1));
        assert_ne!(next.id, "s0");
    }

    #[test]
    fn a_session_ends_after_24_hours_of_activity() {
        let mut s = session(at(None, 0));
        let mut t = 0;
        while t + 10 * MIN < DAY {
            t += 10 * MIN;
            s = session(at(Some(&s), t));
            assert_eq!(s.id, "s0");
        }
        let next = session(at(Some(&s), DAY));
        assert_eq!(next.id, format!("s{DAY}"));
    }

    #[test]
    fn late_events_do_not_disturb_the_live_session() {
        let s = session(at(None, 10 * DAY));
        assert_eq!(at(Some(&s), 10 * DAY - 6 * 60 * MIN), Placement::Past);
        let earlier = session(at(Some(&s), 10 * DAY - 5 * MIN));
        assert_eq!(
            (earlier.id.as_str(), earlier.started_ms),
            ("s864000000", 10 * DAY - 5 * MIN)
        );
        let inside = session(at(Some(&earlier), 10 * DAY - MIN));
        assert_eq!(
            inside, earlier,
            "an event inside the session changes nothing"
        );
    }
}
