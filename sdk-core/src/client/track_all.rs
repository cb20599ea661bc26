//! Recording a stream of events of any length in one transaction, all or nothing, in memory
//! bounded by one event: what a gateway piping in a week of readings needs.

use std::cell::{Cell, RefCell};

use crate::error::Error;
use crate::event::{self, Event, Stamp};
use crate::session::{self, Placement};
use crate::store::{NewRow, set_state};

use super::{Backfill, SESSION_KEY, poisoned};

/// What [`Backfill::track_all`] recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Events recorded (0 while the user has opted out).
    pub events: u64,
    /// Events buffered before the call that were evicted to keep the buffer within its bounds
    /// (also counted in [`Stats::evicted`](crate::Stats::evicted)).
    pub evicted: u64,
}

/// Why [`Backfill::track_all`] recorded nothing. `index` counts the source's items from 0.
#[derive(Debug)]
pub enum TrackAllError<E> {
    /// The source gave `error` as its item `index` (a reading that could not be read).
    Source {
        /// The item's place in the source, from 0.
        index: u64,
        /// The source's error, as given.
        error: E,
    },
    /// Recording stopped at item `index`: that event breaks a rule of the contract, or with it
    /// the call's events would pass the buffer's bounds (both [`Error::InvalidEvent`]), or the
    /// buffer failed on it ([`Error::Storage`], [`Error::StorageFull`]). `index` is `None` when
    /// the call failed before reading an item ([`Error::Closed`]) or while committing.
    Sdk {
        /// The item's place in the source, from 0, when the failure is tied to one.
        index: Option<u64>,
        /// What failed.
        error: Error,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for TrackAllError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Source { index, error } => write!(f, "item {index}: {error}"),
            Self::Sdk {
                index: Some(index),
                error,
            } => write!(f, "item {index}: {error}"),
            Self::Sdk { index: None, error } => error.fmt(f),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for TrackAllError<E> {}

/// A failure inside the transaction, before the item it belongs to is known.
enum Failure<E> {
    Source(E),
    Sdk(Error),
}

impl<E> From<Error> for Failure<E> {
    fn from(e: Error) -> Self {
        Self::Sdk(e)
    }
}

impl Backfill {
    /// Records every event of `events` in one SQLite transaction: all of them, or none. Items
    /// are pulled one at a time and each is checked, stamped and written before the next is
    /// pulled, so memory is bounded by one event whatever the length of the source (a file
    /// of millions of readings is read as it is written). Each event is recorded as
    /// [`Backfill::track_event`] records it: its own time or now, its own insert id or a fresh
    /// UUIDv7, this device's client session when it has no `device_id` (SPEC §9).
    ///
    /// The first `Err` item, or the first event the contract refuses (SPEC §4), or a fault of
    /// the buffer (a full disk, a file-size limit), stops the call: the transaction is rolled
    /// back, the source is not read further, and the error says which item
    /// ([`TrackAllError`]). The buffer is then exactly as it was, eviction included.
    ///
    /// Bounds (SPEC §9): the call's own events are never evicted to make room for each other.
    /// When they alone pass [`Config::max_buffer_rows`](crate::Config::max_buffer_rows) or
    /// [`Config::max_buffer_bytes`](crate::Config::max_buffer_bytes), the call fails at the
    /// event that passes the bound with [`Error::InvalidEvent`] and records nothing, as
    /// [`Backfill::track_many`] refuses such a batch. Otherwise the events buffered before the
    /// call are evicted oldest first (by event time) as room is needed, and counted in
    /// [`Recorded::evicted`] and [`Stats::evicted`](crate::Stats::evicted).
    ///
    /// Meanwhile the buffer has one writer, this call: recording calls on any thread of this
    /// process wait for it to end, and writers in other processes wait up to SQLite's busy
    /// timeout (5 s) and then fail with [`Error::Busy`]. A drain, here or in another process,
    /// reads and sends only events committed before the call (none of this call's until it
    /// returns `Ok`); its settle waits for the commit within that busy timeout, else the drain
    /// ends with [`Error::Busy`] and the rows it sent stay buffered, to be sent again and
    /// counted by the server as duplicates (SPEC §5). Give it events that are ready (checked,
    /// from a file), not ones still arriving from a slow producer.
    ///
    /// While the user has opted out, the source is not read and `Ok` with nothing recorded is
    /// returned (the call is counted in [`Stats::opted_out_calls`](crate::Stats::opted_out_calls)).
    pub fn track_all<E>(
        &self,
        events: impl IntoIterator<Item = Result<Event, E>>,
    ) -> Result<Recorded, TrackAllError<E>> {
        let shared = self.shared();
        let before_any = |error| TrackAllError::Sdk { index: None, error };
        shared.ensure_open().map_err(before_any)?;
        if self.opted_out() {
            return Ok(Recorded::default());
        }
        let now = shared.clock.now_ms();
        let globals = shared
            .globals
            .read()
            .map_err(|_| before_any(poisoned()))?
            .clone();
        let profile = shared
            .profile_id
            .read()
            .map_err(|_| before_any(poisoned()))?
            .clone();
        let own_device = shared.device_id();
        let mut session_guard = shared.session.lock().map_err(|_| before_any(poisoned()))?;
        let session = RefCell::new(session_guard.clone());
        let timeout = shared.config.session_timeout();
        let max_len = shared.config.max_session_length();
        // Items pulled so far: a failure inside the transaction belongs to the last one,
        // unless the source had ended (the failure is then the commit's).
        let pulled = Cell::new(0u64);
        let ended = Cell::new(false);
        let stamp_row = |item: Result<Event, E>| -> Result<NewRow, Failure<E>> {
            let e = item.map_err(Failure::Source)?;
            let time_ms = e.timestamp_ms.unwrap_or(now);
            let insert_id = e
                .insert_id
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let own = e.device_id.is_none();
            let device = e
                .device_id
                .as_deref()
                .map_or(own_device.as_str(), str::trim);
            let session_id = if own {
                let mut current = session.borrow_mut();
                match session::place(current.as_ref(), time_ms, timeout, max_len, || {
                    uuid::Uuid::now_v7().to_string()
                }) {
                    Placement::Session(s) => {
                        let id = s.id.clone();
                        *current = Some(s);
                        Some(id)
                    }
                    Placement::Past => None,
                }
            } else {
                None
            };
            let stamp = Stamp {
                time_ms,
                insert_id: &insert_id,
                device_id: device,
                session_id: session_id.as_deref(),
                profile_id: if own { profile.as_deref() } else { None },
            };
            let body = event::track_json(&e.name, &globals, e.properties, &stamp)?;
            Ok(NewRow {
                time_ms,
                insert_id,
                body,
            })
        };
        let mut source = events.into_iter();
        let rows = std::iter::from_fn(|| match source.next() {
            Some(item) => {
                pulled.set(pulled.get() + 1);
                Some(stamp_row(item))
            }
            None => {
                ended.set(true);
                None
            }
        });
        let changed = || *session.borrow() != *session_guard;
        let appended = shared.buffer.append_stream(rows, self.bounds(), |tx| {
            match (session.borrow().as_ref(), changed()) {
                (Some(s), true) => match serde_json::to_string(s) {
                    Ok(text) => set_state(tx, SESSION_KEY, &text),
                    Err(_) => Ok(()),
                },
                _ => Ok(()),
            }
        });
        let appended = match appended {
            Ok(appended) => appended,
            Err(failure) => {
                let index = pulled.get().checked_sub(1).filter(|_| !ended.get());
                return Err(match failure {
                    Failure::Source(error) => TrackAllError::Source {
                        index: index.unwrap_or(0),
                        error,
                    },
                    Failure::Sdk(error) => {
                        if !matches!(error, Error::InvalidEvent(_)) {
                            shared.note_error(format!("recording failed: {error}"));
                        }
                        TrackAllError::Sdk { index, error }
                    }
                });
            }
        };
        if appended.evicted > 0 {
            shared.note_error(format!(
                "buffer full: evicted the {} oldest events",
                appended.evicted
            ));
        }
        *session_guard = session.into_inner();
        drop(session_guard);
        self.wake_if_due(appended.rows);
        Ok(Recorded {
            events: appended.rows,
            evicted: appended.evicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Map, Value, json};

    use super::*;
    use crate::config::Config;
    use crate::upload::transport::NoUploads;
    use crate::{ManualClock, Stats};

    const NOW: i64 = 1_795_000_000_000;

    fn open(dir: &std::path::Path, max_rows: u64) -> Backfill {
        let config = Config::builder("http://127.0.0.1:9", "id", "secret", dir.join("b.db"))
            .background_upload(false)
            .max_buffer_rows(max_rows)
            .build()
            .expect("config");
        Backfill::with_parts(config, Arc::new(NoUploads), Arc::new(ManualClock::new(NOW)))
            .expect("open")
    }

    fn reading(n: i64, device: Option<&str>) -> Event {
        Event {
            name: "reading".to_owned(),
            properties: json!({"n": n}).as_object().cloned().unwrap_or_default(),
            timestamp_ms: Some(NOW - 1_000 * n),
            device_id: device.map(str::to_owned),
            insert_id: None,
        }
    }

    fn bodies(sdk: &Backfill) -> Vec<Value> {
        sdk.buffered(usize::MAX)
            .expect("buffered")
            .iter()
            .map(|b| serde_json::from_str(b).expect("JSON"))
            .collect()
    }

    fn counts(stats: &Stats) -> (u64, u64, u64) {
        (stats.buffered_events, stats.buffered_bytes, stats.evicted)
    }

    #[test]
    fn a_stream_is_recorded_as_track_records_each_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = open(dir.path(), 1_000_000);
        let events = (0..3_000).map(|n| Ok::<_, String>(reading(n, (n % 2 == 0).then_some("s1"))));
        let recorded = sdk.track_all(events).expect("recorded");
        assert_eq!(
            recorded,
            Recorded {
                events: 3_000,
                evicted: 0
            }
        );
        let stored = bodies(&sdk);
        assert_eq!(stored.len(), 3_000);
        let props = |v: &Value| v["payload"]["properties"].clone();
        // Oldest first: n = 2999 is the earliest reading.
        assert_eq!(props(&stored[0])["n"], 2_999);
        assert_eq!(props(&stored[0])["__timestamp"], NOW - 2_999_000);
        // A sensor's readings carry its id and no client session; this device's carry both.
        let sensor = stored.iter().find(|v| props(v)["n"] == 0).expect("n = 0");
        assert_eq!(props(sensor)["__deviceId"], "s1");
        assert!(props(sensor).get("__sessionId").is_none());
        let own = stored.iter().find(|v| props(v)["n"] == 1).expect("n = 1");
        assert_eq!(props(own)["__deviceId"], Value::from(sdk.device_id()));
        assert!(props(own)["__sessionId"].is_string());
        // The client session goes on from the stream: an event now is in the same session.
        sdk.track_at("later", Map::new(), NOW).expect("track");
        let latest = bodies(&sdk).pop().expect("one more");
        assert_eq!(props(&latest)["__sessionId"], props(own)["__sessionId"]);
    }

    #[test]
    fn the_first_failure_names_its_item_and_leaves_the_buffer_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = open(dir.path(), 1_000_000);
        sdk.track_all((0..5).map(|n| Ok::<_, String>(reading(n, Some("s1")))))
            .expect("recorded");
        let before = (bodies(&sdk), counts(&sdk.stats().expect("stats")));
        // A source error past many events: nothing recorded, the source not read further.
        let mut pulled = 0;
        let source = (0..10_000).map(|n| {
            pulled += 1;
            if n == 7_000 {
                Err("line 7001 is bad".to_owned())
            } else {
                Ok(reading(n, Some("s2")))
            }
        });
        match sdk.track_all(source) {
            Err(TrackAllError::Source { index, error }) => {
                assert_eq!((index, error.as_str()), (7_000, "line 7001 is bad"));
            }
            other => panic!("expected a source error, got {other:?}"),
        }
        assert_eq!(pulled, 7_001);
        assert_eq!((bodies(&sdk), counts(&sdk.stats().expect("stats"))), before);
        // An event the contract refuses: named by its index, nothing recorded.
        let mut refused = reading(3, None);
        refused.name = "session_start".to_owned();
        let source = (0..3)
            .map(|n| reading(n, None))
            .chain([refused])
            .map(Ok::<_, String>);
        match sdk.track_all(source) {
            Err(TrackAllError::Sdk {
                index: Some(3),
                error: Error::InvalidEvent(_),
            }) => {}
            other => panic!("expected event 3 refused, got {other:?}"),
        }
        assert_eq!((bodies(&sdk), counts(&sdk.stats().expect("stats"))), before);
    }

    #[test]
    fn bounds_evict_older_events_but_never_the_streams_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = open(dir.path(), 4);
        sdk.track_all((0..3).map(|n| Ok::<_, String>(reading(n, Some("old")))))
            .expect("recorded");
        // Older than every buffered event, yet kept: the buffered ones make room.
        let recorded = sdk
            .track_all((10..13).map(|n| Ok::<_, String>(reading(n, Some("new")))))
            .expect("recorded");
        assert_eq!(recorded.evicted, 2);
        let devices: Vec<Value> = bodies(&sdk)
            .iter()
            .map(|v| v["payload"]["properties"]["__deviceId"].clone())
            .collect();
        assert_eq!(devices, ["new", "new", "new", "old"]);
        let before = (bodies(&sdk), counts(&sdk.stats().expect("stats")));
        match sdk.track_all((20..25).map(|n| Ok::<_, String>(reading(n, None)))) {
            Err(TrackAllError::Sdk {
                index: Some(4),
                error: Error::InvalidEvent(why),
            }) => assert!(why.starts_with("5 events at once"), "{why}"),
            other => panic!("expected the bound refused at event 4, got {other:?}"),
        }
        assert_eq!((bodies(&sdk), counts(&sdk.stats().expect("stats"))), before);
    }

    #[test]
    fn other_connections_see_none_of_the_stream_until_it_is_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = open(dir.path(), 1_000_000);
        sdk.track_all((0..2).map(|n| Ok::<_, String>(reading(n, Some("s1")))))
            .expect("recorded");
        // What another process (`backfill status`, a drain packing) sees while the stream is
        // half written: the two events from before, none of the new ones.
        let watcher = Backfill::open_read_only(dir.path().join("b.db")).expect("read-only");
        let mut seen_midway = None;
        let source = (0..5_000).map(|n| {
            if n == 4_000 {
                seen_midway = Some(watcher.stats().expect("stats").buffered_events);
            }
            Ok::<_, String>(reading(n, Some("s2")))
        });
        sdk.track_all(source).expect("recorded");
        assert_eq!(seen_midway, Some(2));
        assert_eq!(watcher.stats().expect("stats").buffered_events, 5_002);
    }

    #[test]
    fn opted_out_reads_nothing_and_records_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = open(dir.path(), 1_000_000);
        sdk.opt_out().expect("opt out");
        let source = std::iter::from_fn(|| -> Option<Result<Event, String>> {
            panic!("the source is not read while opted out")
        });
        assert_eq!(sdk.track_all(source).expect("ok"), Recorded::default());
        let stats = sdk.stats().expect("stats");
        assert_eq!((stats.buffered_events, stats.opted_out_calls), (0, 1));
    }
}
