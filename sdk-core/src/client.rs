//! The SDK's API: [`Backfill`], shared by every thread of the app.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use backfill_protocol::clock::{Clock, SystemClock};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::Error;
use crate::event::{self, Event, Stamp};
use crate::session::{self, Placement, SessionState};
use crate::stats::Stats;
use crate::store::drain_lock::DrainLock;
use crate::store::{Bounds, Buffer, NewRow, counter, set_state};
use crate::upload::drain::{Drain, DrainEnd, DrainReport, WINDOW_KEY};
use crate::upload::policy::Backoff;
use crate::upload::transport::{HttpTransport, Transport};

const DEVICE_KEY: &str = "device_id";
const SESSION_KEY: &str = "session";
const PROFILE_KEY: &str = "profile_id";
/// State key of the last error, with its time.
const LAST_ERROR_KEY: &str = "last_error";

/// State shared by the API and the background uploader.
pub(crate) struct Shared {
    config: Config,
    buffer: Buffer,
    clock: Arc<dyn Clock>,
    transport: Box<dyn Transport>,
    /// Held for the whole of a drain, so there is one at a time; holds the failure count.
    drain: Mutex<u32>,
    /// The buffer's drain lock, when held for as long as this SDK is open
    /// ([`Backfill::hold_drain_lock`]); otherwise each drain takes it for its own duration.
    drain_lock: Mutex<Option<DrainLock>>,
    window_ms: AtomicI64,
    device_id: String,
    session: Mutex<Option<SessionState>>,
    profile_id: RwLock<Option<String>>,
    globals: RwLock<Map<String, Value>>,
    online: AtomicBool,
    unauthorized: AtomicBool,
    /// The answers said the endpoint is wrong; uploads pause until the app acts.
    misconfigured: AtomicBool,
    /// Epoch ms before which the background uploader does not retry.
    retry_at_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn note_error(&self, message: String) {
        tracing::warn!("{message}");
        // Kept in the buffer too, with its time, so that a tool looking at the buffer from
        // another process (`backfill status`) can say why uploads stopped.
        if !self.buffer.is_read_only() {
            let stamped = format!(
                "{}: {message}",
                backfill_protocol::time::format_iso_ms(self.clock.now_ms())
            );
            if let Err(e) = self.buffer.set_state(LAST_ERROR_KEY, &stamped) {
                tracing::debug!(error = %e, "cannot keep the last error");
            }
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message);
        }
    }

    /// Runs one drain; one at a time.
    pub(crate) fn drain(&self) -> Result<DrainReport, Error> {
        let mut failures = self
            .drain
            .lock()
            .map_err(|_| Error::Storage("drain lock poisoned".to_owned()))?;
        let held = self
            .drain_lock
            .lock()
            .map_err(|_| Error::Storage("drain lock poisoned".to_owned()))?
            .is_some();
        // Another process draining the same buffer would send every row a second time.
        let _lock = if held {
            None
        } else {
            Some(DrainLock::try_acquire(&self.config.database_path)?)
        };
        let config = &self.config;
        let report = Drain {
            buffer: &self.buffer,
            transport: self.transport.as_ref(),
            clock: self.clock.as_ref(),
            max_events: config.max_batch_events,
            max_bytes: config.max_batch_bytes,
            compress: config.compress,
            backoff: Backoff {
                base: config.retry_base,
                cap: config.retry_cap,
            },
            max_dead_letters: config.max_dead_letters,
            window_ms: &self.window_ms,
            default_window_ms: i64::try_from(config.default_max_event_age.as_millis())
                .unwrap_or(i64::MAX),
            failures: &mut failures,
        }
        .run();
        if let Err(e) = self.buffer.checkpoint() {
            tracing::debug!(error = %e, "checkpoint after drain failed");
        }
        match &report {
            Ok(r) => {
                let unauthorized = matches!(r.end, DrainEnd::Unauthorized(_));
                self.unauthorized.store(unauthorized, Ordering::Relaxed);
                let misconfigured = matches!(r.end, DrainEnd::Misconfigured(_));
                self.misconfigured.store(misconfigured, Ordering::Relaxed);
                match &r.end {
                    DrainEnd::Empty => self.retry_at_ms.store(0, Ordering::Relaxed),
                    DrainEnd::RetryIn(wait) => {
                        let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                        self.retry_at_ms
                            .store(self.clock.now_ms().saturating_add(wait), Ordering::Relaxed);
                        let cause = r.last_error.as_deref().unwrap_or("server busy");
                        self.note_error(format!("upload deferred for {wait} ms: {cause}"));
                    }
                    DrainEnd::Unauthorized(code) => self.note_error(format!(
                        "the server refused the credentials (HTTP {code}); uploads paused"
                    )),
                    DrainEnd::Misconfigured(why) => {
                        self.note_error(format!("{why}; uploads paused, nothing was deleted"))
                    }
                }
            }
            Err(e) => self.note_error(format!("drain failed: {e}")),
        }
        report
    }

    fn buffered(&self) -> u64 {
        self.buffer.totals().map(|(rows, _)| rows).unwrap_or(0)
    }
}

enum Command {
    /// Drain now if online and not backing off.
    Wake,
    /// The buffer is no longer empty: start the interval timer.
    Arm,
    Shutdown,
}

struct Uploader {
    commands: mpsc::Sender<Command>,
    thread: JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    uploader: Mutex<Option<Uploader>>,
    wake_pending: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        stop_uploader(&self.uploader);
    }
}

fn stop_uploader(uploader: &Mutex<Option<Uploader>>) {
    let taken = uploader.lock().ok().and_then(|mut u| u.take());
    if let Some(u) = taken {
        let _ = u.commands.send(Command::Shutdown);
        let _ = u.thread.join();
    }
}

/// The background uploader: drains on a wake (count threshold, `set_online(true)`), on the
/// interval while events wait, and after a backoff; sleeps without timers when nothing waits.
fn run_uploader(
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    wake_pending: Arc<AtomicBool>,
) {
    let interval = i64::try_from(shared.config.flush_interval.as_millis()).unwrap_or(i64::MAX);
    let mut next_interval_at = shared.clock.now_ms().saturating_add(interval);
    loop {
        let idle = !shared.online.load(Ordering::Relaxed)
            || shared.unauthorized.load(Ordering::Relaxed)
            || shared.misconfigured.load(Ordering::Relaxed)
            || shared.buffered() == 0;
        let command = if idle {
            commands
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            let now = shared.clock.now_ms();
            let due = next_interval_at.max(shared.retry_at_ms.load(Ordering::Relaxed));
            commands.recv_timeout(Duration::from_millis(due.saturating_sub(now).max(0) as u64))
        };
        let drain_now = match command {
            Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Command::Wake) => {
                wake_pending.store(false, Ordering::Relaxed);
                shared.online.load(Ordering::Relaxed)
                    && shared.clock.now_ms() >= shared.retry_at_ms.load(Ordering::Relaxed)
            }
            Ok(Command::Arm) => {
                if idle {
                    next_interval_at = shared.clock.now_ms().saturating_add(interval);
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => true,
        };
        if drain_now {
            let _ = shared.drain();
            next_interval_at = shared.clock.now_ms().saturating_add(interval);
        }
    }
}

/// The device SDK. Cheap to clone; every method may be called from any thread.
///
/// Every recording call commits the event to the on-device SQLite buffer before it returns.
/// Uploads happen in the background (or through [`Backfill::flush`]); events survive restarts,
/// crashes and days offline.
#[derive(Clone)]
pub struct Backfill {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Backfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backfill")
            .field("device_id", &self.inner.shared.device_id)
            .finish_non_exhaustive()
    }
}

impl Backfill {
    /// Opens the buffer and starts the background uploader.
    pub fn open(config: Config) -> Result<Self, Error> {
        let transport = HttpTransport::new(
            &config.endpoint,
            &config.client_id,
            &config.client_secret,
            config.request_timeout,
        )
        .map_err(|e| Error::InvalidConfig(e.0))?;
        Self::with_parts(config, Box::new(transport), Arc::new(SystemClock))
    }

    /// Opens an existing buffer to look at it (`stats`, `dead_letters`, `buffered`): nothing
    /// is created, moved, upgraded or written, whatever state the file is in, and recording or
    /// draining through it fails. For tools that show a buffer another process uses.
    pub fn open_read_only(path: impl Into<std::path::PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let buffer = Buffer::open_read_only(&path)?;
        let config = Config::builder("http://127.0.0.1", "read-only", "read-only", path)
            .background_upload(false)
            .build()?;
        let transport = HttpTransport::new(
            &config.endpoint,
            &config.client_id,
            &config.client_secret,
            config.request_timeout,
        )
        .map_err(|e| Error::InvalidConfig(e.0))?;
        Self::assemble(
            config,
            buffer,
            None,
            Box::new(transport),
            Arc::new(SystemClock),
        )
    }

    /// Opens with a given transport and clock (tests, simulations, custom networking).
    pub fn with_parts(
        config: Config,
        transport: Box<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let (buffer, recovered) = Buffer::open(
            &config.database_path,
            clock.now_ms(),
            config.max_database_bytes,
        )?;
        Self::assemble(config, buffer, recovered, transport, clock)
    }

    fn assemble(
        config: Config,
        buffer: Buffer,
        recovered: Option<String>,
        transport: Box<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let read_only = buffer.is_read_only();
        let device_id = match (&config.device_id, buffer.state(DEVICE_KEY)?) {
            (Some(fixed), _) => fixed.trim().to_owned(),
            (None, Some(stored)) => stored,
            (None, None) if read_only => String::new(),
            (None, None) => {
                let id = uuid::Uuid::new_v4().to_string();
                buffer.set_state(DEVICE_KEY, &id)?;
                id
            }
        };
        let session = buffer
            .state(SESSION_KEY)?
            .and_then(|s| serde_json::from_str(&s).ok());
        let profile_id = buffer.state(PROFILE_KEY)?;
        let window_ms = buffer
            .state(WINDOW_KEY)?
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        let background = config.background_upload;
        let shared = Arc::new(Shared {
            config,
            buffer,
            clock,
            transport,
            drain: Mutex::new(0),
            drain_lock: Mutex::new(None),
            window_ms: AtomicI64::new(window_ms),
            device_id,
            session: Mutex::new(session),
            profile_id: RwLock::new(profile_id),
            globals: RwLock::new(Map::new()),
            online: AtomicBool::new(true),
            unauthorized: AtomicBool::new(false),
            misconfigured: AtomicBool::new(false),
            retry_at_ms: AtomicI64::new(0),
            last_error: Mutex::new(recovered),
        });
        let wake_pending = Arc::new(AtomicBool::new(false));
        let uploader = if background {
            let (commands, rx) = mpsc::channel();
            let (s, w) = (Arc::clone(&shared), Arc::clone(&wake_pending));
            let thread = std::thread::Builder::new()
                .name("backfill-uploader".to_owned())
                .spawn(move || run_uploader(s, rx, w))
                .map_err(|e| Error::Storage(format!("cannot start the uploader: {e}")))?;
            Some(Uploader { commands, thread })
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                uploader: Mutex::new(uploader),
                wake_pending,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn bounds(&self) -> Bounds {
        let c = &self.shared().config;
        Bounds {
            max_rows: c.max_buffer_rows,
            max_bytes: c.max_buffer_bytes,
        }
    }

    /// After recording `added` rows: wakes the uploader at the threshold, and arms its interval
    /// timer when the buffer was empty before (an idle uploader sleeps without a timer).
    fn wake_if_due(&self, added: u64) {
        let buffered = self.shared().buffered();
        if buffered >= self.shared().config.flush_threshold {
            if !self.inner.wake_pending.swap(true, Ordering::Relaxed) {
                self.send(Command::Wake);
            }
        } else if buffered <= added {
            self.send(Command::Arm);
        }
    }

    fn send(&self, command: Command) {
        if let Ok(uploader) = self.inner.uploader.lock()
            && let Some(u) = uploader.as_ref()
        {
            let _ = u.commands.send(command);
        }
    }

    /// The age window events are expired by: the server's (its `backfill-max-event-age`, as
    /// last seen and kept in the buffer), else the configured default (SPEC §9).
    pub fn max_event_age(&self) -> Duration {
        let shared = self.shared();
        match shared.window_ms.load(Ordering::Relaxed) {
            ms if ms > 0 => Duration::from_millis(ms as u64),
            _ => shared.config.default_max_event_age,
        }
    }

    /// This device's id, sent as `__deviceId` with its own events.
    pub fn device_id(&self) -> &str {
        &self.shared().device_id
    }

    /// Records an event now. Returns its `__insertId`.
    pub fn track(&self, name: &str, properties: Map<String, Value>) -> Result<String, Error> {
        self.record(Event {
            name: name.to_owned(),
            properties,
            timestamp_ms: None,
            device_id: None,
            insert_id: None,
        })
    }

    /// Records an event that happened at `timestamp_ms`.
    pub fn track_at(
        &self,
        name: &str,
        properties: Map<String, Value>,
        timestamp_ms: i64,
    ) -> Result<String, Error> {
        self.record(Event {
            name: name.to_owned(),
            properties,
            timestamp_ms: Some(timestamp_ms),
            device_id: None,
            insert_id: None,
        })
    }

    /// Records an event of another device (a gateway recording for its sensors). It carries
    /// that device's id and no client session: the server's 30-minute sessions apply.
    pub fn track_for_device(
        &self,
        device_id: &str,
        name: &str,
        properties: Map<String, Value>,
        timestamp_ms: i64,
    ) -> Result<String, Error> {
        self.record(Event {
            name: name.to_owned(),
            properties,
            timestamp_ms: Some(timestamp_ms),
            device_id: Some(device_id.to_owned()),
            insert_id: None,
        })
    }

    fn record(&self, event: Event) -> Result<String, Error> {
        let mut ids = self.record_many(vec![event])?;
        ids.pop()
            .ok_or_else(|| Error::Storage("nothing recorded".to_owned()))
    }

    /// Records several events in one transaction: all or none. Returns their `__insertId`s.
    pub fn track_many(&self, events: Vec<Event>) -> Result<Vec<String>, Error> {
        self.record_many(events)
    }

    fn record_many(&self, events: Vec<Event>) -> Result<Vec<String>, Error> {
        let shared = self.shared();
        let now = shared.clock.now_ms();
        let globals = shared
            .globals
            .read()
            .map_err(|_| Error::Storage("lock poisoned".to_owned()))?
            .clone();
        let profile = shared
            .profile_id
            .read()
            .map_err(|_| Error::Storage("lock poisoned".to_owned()))?
            .clone();
        let mut session_guard = shared
            .session
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".to_owned()))?;
        let mut session = session_guard.clone();
        let timeout = i64::try_from(shared.config.session_timeout.as_millis()).unwrap_or(i64::MAX);
        let max_len =
            i64::try_from(shared.config.max_session_length.as_millis()).unwrap_or(i64::MAX);
        let mut rows = Vec::with_capacity(events.len());
        let mut ids = Vec::with_capacity(events.len());
        for e in events {
            let time_ms = e.timestamp_ms.unwrap_or(now);
            let insert_id = match e.insert_id {
                Some(id) => id,
                None => uuid::Uuid::now_v7().to_string(),
            };
            let own = e.device_id.is_none();
            let device = e
                .device_id
                .as_deref()
                .map(str::trim)
                .unwrap_or(&shared.device_id)
                .to_owned();
            let session_id = if own {
                match session::place(session.as_ref(), time_ms, timeout, max_len, || {
                    uuid::Uuid::now_v7().to_string()
                }) {
                    Placement::Session(s) => {
                        let id = s.id.clone();
                        session = Some(s);
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
                device_id: &device,
                session_id: session_id.as_deref(),
                profile_id: if own { profile.as_deref() } else { None },
            };
            let body = event::track_json(&e.name, &globals, e.properties, &stamp)?;
            rows.push(NewRow {
                time_ms,
                insert_id: insert_id.clone(),
                body,
            });
            ids.push(insert_id);
        }
        let changed = session != *session_guard;
        let session_text = session.as_ref().and_then(|s| serde_json::to_string(s).ok());
        let evicted =
            shared
                .buffer
                .append(&rows, self.bounds(), |tx| match (&session_text, changed) {
                    (Some(text), true) => set_state(tx, SESSION_KEY, text),
                    _ => Ok(()),
                });
        let evicted =
            evicted.inspect_err(|e| shared.note_error(format!("recording failed: {e}")))?;
        if evicted > 0 {
            shared.note_error(format!("buffer full: evicted the {evicted} oldest events"));
        }
        *session_guard = session;
        drop(session_guard);
        self.wake_if_due(ids.len() as u64);
        Ok(ids)
    }

    /// Checks an event as [`Backfill::track_many`] would, without recording it.
    pub fn check(&self, event: &Event) -> Result<(), Error> {
        let shared = self.shared();
        let stamp = Stamp {
            time_ms: event.timestamp_ms.unwrap_or_else(|| shared.clock.now_ms()),
            insert_id: event
                .insert_id
                .as_deref()
                .unwrap_or("00000000-0000-7000-8000-000000000000"),
            device_id: event.device_id.as_deref().unwrap_or(&shared.device_id),
            session_id: None,
            profile_id: None,
        };
        let globals = shared
            .globals
            .read()
            .map_err(|_| Error::Storage("lock poisoned".to_owned()))?;
        event::track_json(&event.name, &globals, event.properties.clone(), &stamp).map(|_| ())
    }

    /// Names the user; later events of this device carry `profileId`. `traits` may hold
    /// `firstName`, `lastName`, `email`, `avatar` and any other properties.
    pub fn identify(&self, profile_id: &str, traits: Map<String, Value>) -> Result<String, Error> {
        let shared = self.shared();
        let insert_id = uuid::Uuid::now_v7().to_string();
        let now = shared.clock.now_ms();
        let stamp = Stamp {
            time_ms: now,
            insert_id: &insert_id,
            device_id: &shared.device_id,
            session_id: None,
            profile_id: None,
        };
        let body = event::identify_json(profile_id, traits, &stamp)?;
        let row = NewRow {
            time_ms: now,
            insert_id: insert_id.clone(),
            body,
        };
        shared.buffer.append(&[row], self.bounds(), |tx| {
            set_state(tx, PROFILE_KEY, profile_id)
        })?;
        if let Ok(mut p) = shared.profile_id.write() {
            *p = Some(profile_id.to_owned());
        }
        self.wake_if_due(1);
        Ok(insert_id)
    }

    /// Sets a property merged into every later event (the event's own value wins).
    pub fn register(&self, key: &str, value: Value) {
        if let Ok(mut g) = self.shared().globals.write() {
            g.insert(key.to_owned(), value);
        }
    }

    /// Removes a global property.
    pub fn unregister(&self, key: &str) {
        if let Ok(mut g) = self.shared().globals.write() {
            g.remove(key);
        }
    }

    /// Drains now on the calling thread and returns what happened. Waits for a drain already
    /// running on another thread to finish first.
    pub fn flush(&self) -> Result<DrainReport, Error> {
        self.shared().retry_at_ms.store(0, Ordering::Relaxed);
        let report = self.shared().drain()?;
        match &report.end {
            DrainEnd::Unauthorized(code) => return Err(Error::Unauthorized(*code)),
            DrainEnd::Misconfigured(why) => return Err(Error::Misconfigured(why.clone())),
            _ => {}
        }
        Ok(report)
    }

    /// Takes the buffer's drain lock until this SDK is dropped, so that no other drain (in
    /// this or another process) can start meanwhile; this SDK's own drains go on. Fails with
    /// [`Error::Busy`] when another drain holds it. For tools that own a buffer's uploads.
    pub fn hold_drain_lock(&self) -> Result<(), Error> {
        let shared = self.shared();
        let mut held = shared
            .drain_lock
            .lock()
            .map_err(|_| Error::Storage("drain lock poisoned".to_owned()))?;
        if held.is_none() {
            *held = Some(DrainLock::try_acquire(&shared.config.database_path)?);
        }
        Ok(())
    }

    /// Tells the SDK whether the network is up; going online starts a drain at once.
    pub fn set_online(&self, online: bool) {
        let was = self.shared().online.swap(online, Ordering::Relaxed);
        if online && !was {
            self.shared().retry_at_ms.store(0, Ordering::Relaxed);
            self.send(Command::Wake);
        }
    }

    /// The buffer and upload figures.
    pub fn stats(&self) -> Result<Stats, Error> {
        let shared = self.shared();
        let b = &shared.buffer;
        let (buffered_events, buffered_bytes) = b.totals()?;
        let now = shared.clock.now_ms();
        let (oldest, newest) = b.time_span()?;
        Ok(Stats {
            buffered_events,
            buffered_bytes,
            oldest_event_age_ms: oldest.map(|t| now - t),
            oldest_event_ms: oldest,
            newest_event_ms: newest,
            sent: b.counter(counter::SENT)?,
            duplicates: b.counter(counter::DUPLICATES)?,
            dead_lettered: b.counter(counter::DEAD_LETTERED)?,
            dead_letters_evicted: b.counter(counter::DEAD_LETTERS_EVICTED)?,
            expired: b.counter(counter::EXPIRED)?,
            evicted: b.counter(counter::EVICTED)?,
            requests: b.counter(counter::REQUESTS)?,
            bytes_sent: b.counter(counter::BYTES_SENT)?,
            unauthorized: shared.unauthorized.load(Ordering::Relaxed),
            misconfigured: shared.misconfigured.load(Ordering::Relaxed),
            last_error: match shared.last_error.lock().ok().and_then(|e| e.clone()) {
                Some(e) => Some(e),
                None => b.state(LAST_ERROR_KEY)?,
            },
        })
    }

    /// The oldest buffered events (at most `limit`), oldest first, as the wire JSON they will
    /// be sent as.
    pub fn buffered(&self, limit: usize) -> Result<Vec<String>, Error> {
        let mut bodies = Vec::new();
        self.shared().buffer.scan_oldest(None, |row| {
            if bodies.len() >= limit {
                return false;
            }
            bodies.push(row.body.to_owned());
            true
        })?;
        Ok(bodies)
    }

    /// Moves every dead letter back into the buffer to be sent again, each at its own event
    /// time and with its own insert id (so a copy the server already has is a duplicate).
    /// Returns how many.
    pub fn requeue_dead_letters(&self) -> Result<u64, Error> {
        let n = self.shared().buffer.requeue_dead_letters()?;
        self.wake_if_due(n);
        Ok(n)
    }

    /// The newest dead-lettered events, newest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<crate::store::DeadLetter>, Error> {
        self.shared().buffer.dead_letters(limit)
    }

    /// Stops the background uploader; buffered events stay for the next start. Recording still
    /// works afterwards, and [`Backfill::flush`] still drains by hand.
    pub fn shutdown(&self) {
        stop_uploader(&self.inner.uploader);
    }
}
