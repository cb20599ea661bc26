//! The SDK's API: [`Backfill`], shared by every thread of the app.
//!
//! [`Backfill::track_all`], recording a stream of events in one transaction, is in
//! `track_all.rs`.

mod track_all;

pub use track_all::{Recorded, TrackAllError};

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
use crate::store::{Bounds, Buffer, NewRow, clear_state, counter, set_state};
use crate::upload::drain::{Drain, DrainEnd, DrainReport, WINDOW_KEY, is_server_window};
use crate::upload::policy::Backoff;
use crate::upload::schedule::{self, Next, Situation};
use crate::upload::transport::{ContractTransport, HttpClient, Transport};

const DEVICE_KEY: &str = "device_id";
const SESSION_KEY: &str = "session";
const PROFILE_KEY: &str = "profile_id";
/// Present (value `1`) while the user has opted out.
const OPTED_OUT_KEY: &str = "opted_out";
/// State key of the last error, with its time.
const LAST_ERROR_KEY: &str = "last_error";

/// State shared by the API and the background uploader.
pub(crate) struct Shared {
    config: Config,
    buffer: Buffer,
    clock: Arc<dyn Clock>,
    transport: Arc<dyn Transport>,
    /// Held for the whole of a drain, so there is one at a time; holds the failure count.
    drain: Mutex<u32>,
    /// The buffer's drain lock, when held for as long as this SDK is open
    /// ([`Backfill::hold_drain_lock`]); otherwise each drain takes it for its own duration.
    drain_lock: Mutex<Option<DrainLock>>,
    window_ms: AtomicI64,
    device_id: RwLock<String>,
    session: Mutex<Option<SessionState>>,
    profile_id: RwLock<Option<String>>,
    globals: RwLock<Map<String, Value>>,
    online: AtomicBool,
    unauthorized: AtomicBool,
    /// The answers said the endpoint is wrong; uploads pause until the app acts.
    misconfigured: AtomicBool,
    /// The app asked for a drain (online again, foreground); cleared by the next drain.
    asked: AtomicBool,
    opted_out: AtomicBool,
    /// Recording calls refused while opted out, since the buffer was opened.
    opted_out_calls: AtomicU64,
    closed: AtomicBool,
    /// Epoch ms before which the background uploader does not retry.
    retry_at_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
}

fn poisoned() -> Error {
    Error::Storage("lock poisoned".to_owned())
}

impl Shared {
    fn ensure_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn device_id(&self) -> String {
        self.device_id.read().map(|d| d.clone()).unwrap_or_default()
    }

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

    /// A drain emptied the buffer: whatever stopped uploads before is over, so `backfill
    /// status` no longer says uploads are paused.
    fn clear_error(&self) {
        let had = self
            .last_error
            .lock()
            .map(|mut last| last.take().is_some())
            .unwrap_or(false);
        // The one kept in the buffer may come from another process, or an earlier run.
        let kept = || matches!(self.buffer.state(LAST_ERROR_KEY), Ok(Some(_)));
        if (had || kept())
            && !self.buffer.is_read_only()
            && let Err(e) = self.buffer.remove_state(LAST_ERROR_KEY)
        {
            tracing::debug!(error = %e, "cannot clear the last error");
        }
    }

    /// Runs one drain; one at a time.
    pub(crate) fn drain(&self) -> Result<DrainReport, Error> {
        let mut failures = self
            .drain
            .lock()
            .map_err(|_| Error::Storage("drain lock poisoned".to_owned()))?;
        self.ensure_open()?;
        self.asked.store(false, Ordering::Relaxed);
        let held = self
            .drain_lock
            .lock()
            .map_err(|_| Error::Storage("drain lock poisoned".to_owned()))?
            .is_some();
        // Another process draining the same buffer would send every row a second time.
        let _lock = if held {
            None
        } else {
            Some(DrainLock::try_acquire(std::path::Path::new(
                &self.config.database_path,
            ))?)
        };
        let config = &self.config;
        let report = Drain {
            buffer: &self.buffer,
            transport: self.transport.as_ref(),
            clock: self.clock.as_ref(),
            max_events: config.max_batch_events as usize,
            max_bytes: config.max_batch_bytes as usize,
            compress: config.compress,
            backoff: Backoff {
                base: Duration::from_millis(config.retry_base_ms),
                cap: Duration::from_millis(config.retry_cap_ms),
            },
            max_dead_letters: config.max_dead_letters,
            window_ms: &self.window_ms,
            default_window_ms: i64::try_from(config.default_max_event_age_ms).unwrap_or(i64::MAX),
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
                    DrainEnd::Empty => {
                        self.retry_at_ms.store(0, Ordering::Relaxed);
                        self.clear_error();
                    }
                    DrainEnd::RetryIn(wait) => {
                        let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                        self.retry_at_ms
                            .store(self.clock.now_ms().saturating_add(wait), Ordering::Relaxed);
                        let cause = r.last_error.as_deref().unwrap_or("server busy");
                        self.note_error(format!("upload deferred for {wait} ms: {cause}"));
                    }
                    DrainEnd::Unauthorized(code) => self.note_error(format!(
                        "the server refused the credentials ({}); uploads paused",
                        r.last_error
                            .clone()
                            .unwrap_or_else(|| format!("HTTP {code}"))
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
    /// Something the uploader decides on changed (events recorded, online, foreground).
    Look,
    Shutdown,
}

struct Uploader {
    commands: mpsc::Sender<Command>,
    thread: JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    uploader: Mutex<Option<Uploader>>,
    /// A [`Command::Look`] for the threshold is on its way; one is enough.
    look_pending: Arc<AtomicBool>,
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

/// The background uploader: asks [`schedule::next`] what to do, and does it. It sleeps without
/// a timer while there is nothing to do, until a [`Command`] says something changed.
fn run_uploader(
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    look_pending: Arc<AtomicBool>,
) {
    let interval = i64::try_from(shared.config.flush_interval_ms).unwrap_or(i64::MAX);
    let mut interval_due_ms = shared.clock.now_ms().saturating_add(interval);
    let mut was_idle = true;
    loop {
        let now_ms = shared.clock.now_ms();
        let situation = Situation {
            online: shared.online.load(Ordering::Relaxed),
            paused: shared.unauthorized.load(Ordering::Relaxed)
                || shared.misconfigured.load(Ordering::Relaxed),
            buffered: shared.buffered(),
            threshold: shared.config.flush_threshold,
            asked: shared.asked.load(Ordering::Relaxed),
            now_ms,
            interval_due_ms,
            retry_at_ms: shared.retry_at_ms.load(Ordering::Relaxed),
        };
        let next = schedule::next(&situation);
        // The interval counts from when events start to wait, not from when the SDK opened.
        if was_idle && next != Next::Idle && !situation.asked {
            interval_due_ms = now_ms.saturating_add(interval);
            was_idle = false;
            continue;
        }
        was_idle = next == Next::Idle;
        let command = match next {
            Next::DrainNow => {
                let _ = shared.drain();
                interval_due_ms = shared.clock.now_ms().saturating_add(interval);
                continue;
            }
            Next::Idle => commands
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Next::WaitUntil(due) => commands.recv_timeout(Duration::from_millis(
                due.saturating_sub(now_ms).max(0) as u64,
            )),
        };
        match command {
            Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Command::Look) => look_pending.store(false, Ordering::Relaxed),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
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
            .field("device_id", &self.inner.shared.device_id())
            .finish_non_exhaustive()
    }
}

impl Backfill {
    /// Opens the buffer and starts the background uploader, uploading with the built-in HTTP
    /// transport (cargo feature `http`).
    #[cfg(feature = "http")]
    pub fn open(config: Config) -> Result<Self, Error> {
        use crate::upload::transport::HttpTransport;
        let transport = HttpTransport::new(
            &config.endpoint,
            &config.client_id,
            &config.client_secret,
            Duration::from_millis(config.request_timeout_ms),
        )
        .map_err(|e| Error::InvalidConfig(e.0))?;
        Self::with_parts(config, Arc::new(transport), Arc::new(SystemClock))
    }

    /// Opens the buffer and starts the background uploader, uploading through `http` (the
    /// app's own HTTP stack: a language binding passes the platform's).
    pub fn open_with_http_client(
        config: Config,
        http: impl HttpClient + 'static,
    ) -> Result<Self, Error> {
        let transport = ContractTransport::over(
            http,
            &config.endpoint,
            &config.client_id,
            &config.client_secret,
            "backfill-core",
        );
        Self::with_parts(config, Arc::new(transport), Arc::new(SystemClock))
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
        Self::assemble(
            config,
            buffer,
            None,
            Arc::new(crate::upload::transport::NoUploads),
            Arc::new(SystemClock),
        )
    }

    /// Opens with a given transport (an app's own HTTP stack through
    /// [`ContractTransport`](crate::upload::transport::ContractTransport), tests, simulations)
    /// and clock.
    pub fn with_parts(
        config: Config,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let (buffer, recovered) = Buffer::open(
            std::path::Path::new(&config.database_path),
            clock.now_ms(),
            config.max_database_bytes,
        )?;
        Self::assemble(config, buffer, recovered, transport, clock)
    }

    fn assemble(
        config: Config,
        buffer: Buffer,
        recovered: Option<String>,
        transport: Arc<dyn Transport>,
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
        // A window saved by an older version without the bounds is forgotten, not trusted.
        let window_ms = buffer
            .state(WINDOW_KEY)?
            .and_then(|w| w.parse().ok())
            .filter(|&ms| is_server_window(ms))
            .unwrap_or(0);
        let opted_out = buffer.state(OPTED_OUT_KEY)?.is_some();
        let background = config.background_upload;
        let shared = Arc::new(Shared {
            config,
            buffer,
            clock,
            transport,
            drain: Mutex::new(0),
            drain_lock: Mutex::new(None),
            window_ms: AtomicI64::new(window_ms),
            device_id: RwLock::new(device_id),
            session: Mutex::new(session),
            profile_id: RwLock::new(profile_id),
            globals: RwLock::new(Map::new()),
            online: AtomicBool::new(true),
            unauthorized: AtomicBool::new(false),
            misconfigured: AtomicBool::new(false),
            asked: AtomicBool::new(false),
            opted_out: AtomicBool::new(opted_out),
            opted_out_calls: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            retry_at_ms: AtomicI64::new(0),
            last_error: Mutex::new(recovered),
        });
        let look_pending = Arc::new(AtomicBool::new(false));
        let uploader = if background {
            let (commands, rx) = mpsc::channel();
            let (s, w) = (Arc::clone(&shared), Arc::clone(&look_pending));
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
                look_pending,
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

    /// After recording `added` rows: has the uploader look again when its answer may have
    /// changed (the threshold is reached, or events started to wait); not after every event.
    fn wake_if_due(&self, added: u64) {
        let buffered = self.shared().buffered();
        if buffered >= self.shared().config.flush_threshold {
            if !self.inner.look_pending.swap(true, Ordering::Relaxed) {
                self.send(Command::Look);
            }
        } else if buffered <= added {
            self.send(Command::Look);
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
            _ => Duration::from_millis(shared.config.default_max_event_age_ms),
        }
    }

    /// This device's id, sent as `__deviceId` with its own events.
    pub fn device_id(&self) -> String {
        self.shared().device_id()
    }

    /// Records an event now. Returns its `__insertId` (empty while the user has opted out:
    /// nothing is recorded then).
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

    /// Records one event: now or at its time, for this device or another. Returns its
    /// `__insertId` (empty while opted out).
    pub fn track_event(&self, event: Event) -> Result<String, Error> {
        self.record(event)
    }

    fn record(&self, event: Event) -> Result<String, Error> {
        let mut ids = self.record_many(vec![event])?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Records several events in one transaction: all or none. Returns their `__insertId`s
    /// (none while opted out).
    pub fn track_many(&self, events: Vec<Event>) -> Result<Vec<String>, Error> {
        self.record_many(events)
    }

    /// While opted out, counts the call and says to record nothing.
    fn opted_out(&self) -> bool {
        let shared = self.shared();
        if shared.opted_out.load(Ordering::Relaxed) {
            shared.opted_out_calls.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn record_many(&self, events: Vec<Event>) -> Result<Vec<String>, Error> {
        let shared = self.shared();
        shared.ensure_open()?;
        if self.opted_out() {
            return Ok(Vec::new());
        }
        let now = shared.clock.now_ms();
        let globals = shared.globals.read().map_err(|_| poisoned())?.clone();
        let profile = shared.profile_id.read().map_err(|_| poisoned())?.clone();
        let own_device = shared.device_id();
        let mut session_guard = shared.session.lock().map_err(|_| poisoned())?;
        let mut session = session_guard.clone();
        let timeout = shared.config.session_timeout();
        let max_len = shared.config.max_session_length();
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
                .unwrap_or(&own_device)
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
        let globals = shared.globals.read().map_err(|_| poisoned())?;
        event::check_track(event, &globals, &shared.device_id(), shared.clock.now_ms())
    }

    /// Names the user; later events of this device carry `profileId`. `traits` may hold
    /// `firstName`, `lastName`, `email`, `avatar` and any other properties.
    /// Returns the event's `__insertId` (empty while opted out).
    pub fn identify(&self, profile_id: &str, traits: Map<String, Value>) -> Result<String, Error> {
        let shared = self.shared();
        shared.ensure_open()?;
        if self.opted_out() {
            return Ok(String::new());
        }
        let insert_id = uuid::Uuid::now_v7().to_string();
        let now = shared.clock.now_ms();
        let own_device = shared.device_id();
        let stamp = Stamp {
            time_ms: now,
            insert_id: &insert_id,
            device_id: &own_device,
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

    /// Sets a property merged into every later event (the event's own value wins). A key the
    /// SDK sets itself (`__timestamp`, `__insertId`, `__deviceId`, `__sessionId`) is
    /// [`Error::InvalidEvent`], as in an event's own properties.
    pub fn register(&self, key: &str, value: Value) -> Result<(), Error> {
        crate::event::check_property_key(key)?;
        if let Ok(mut g) = self.shared().globals.write() {
            g.insert(key.to_owned(), value);
        }
        Ok(())
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
        self.shared().ensure_open()?;
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
            *held = Some(DrainLock::try_acquire(std::path::Path::new(
                &shared.config.database_path,
            ))?);
        }
        Ok(())
    }

    /// Tells the SDK whether the network is up; going online starts a drain at once.
    pub fn set_online(&self, online: bool) {
        let was = self.shared().online.swap(online, Ordering::Relaxed);
        if online && !was {
            self.shared().retry_at_ms.store(0, Ordering::Relaxed);
            self.shared().asked.store(true, Ordering::Relaxed);
            self.send(Command::Look);
        }
    }

    /// Whether the network is up, as last told by [`Backfill::set_online`] (up at start).
    pub fn is_online(&self) -> bool {
        self.shared().online.load(Ordering::Relaxed)
    }

    /// The buffer and upload figures.
    pub fn stats(&self) -> Result<Stats, Error> {
        let shared = self.shared();
        shared.ensure_open()?;
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
            opted_out: shared.opted_out.load(Ordering::Relaxed),
            opted_out_calls: shared.opted_out_calls.load(Ordering::Relaxed),
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
        self.shared().ensure_open()?;
        self.shared().buffer.dead_letters(limit)
    }

    /// Stops the background uploader; buffered events stay for the next start. Recording still
    /// works afterwards, and [`Backfill::flush`] still drains by hand.
    pub fn shutdown(&self) {
        stop_uploader(&self.inner.uploader);
    }

    /// Signs the user out (as `reset()` in PostHog, Segment, Amplitude, Mixpanel): forgets the
    /// profile id and the global properties and ends the client session, so the next event
    /// starts a new one. The device id stays, unless `new_device_id` asks for a fresh one
    /// (refused with [`Error::InvalidConfig`] when the config fixes the device id). Buffered
    /// events are kept and sent as recorded.
    pub fn reset(&self, new_device_id: bool) -> Result<(), Error> {
        let shared = self.shared();
        shared.ensure_open()?;
        if new_device_id && shared.config.device_id.is_some() {
            return Err(Error::InvalidConfig(
                "the device id is fixed by the config; reset cannot replace it".to_owned(),
            ));
        }
        let mut session = shared.session.lock().map_err(|_| poisoned())?;
        let mut profile = shared.profile_id.write().map_err(|_| poisoned())?;
        let fresh = new_device_id.then(|| uuid::Uuid::new_v4().to_string());
        shared.buffer.write(|tx| {
            clear_state(tx, SESSION_KEY)?;
            clear_state(tx, PROFILE_KEY)?;
            match &fresh {
                Some(id) => set_state(tx, DEVICE_KEY, id),
                None => Ok(()),
            }
        })?;
        *session = None;
        *profile = None;
        if let Some(id) = fresh {
            *shared.device_id.write().map_err(|_| poisoned())? = id;
        }
        shared.globals.write().map_err(|_| poisoned())?.clear();
        Ok(())
    }

    /// The user opts out: from now on, and across restarts until [`Backfill::opt_in`], nothing
    /// is recorded; recording calls return without error and are counted in
    /// [`Stats::opted_out_calls`]. Events recorded before are kept and still sent.
    pub fn opt_out(&self) -> Result<(), Error> {
        self.shared().ensure_open()?;
        self.shared().buffer.set_state(OPTED_OUT_KEY, "1")?;
        self.shared().opted_out.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The user opts in again (the default): recording resumes.
    pub fn opt_in(&self) -> Result<(), Error> {
        self.shared().ensure_open()?;
        self.shared()
            .buffer
            .write(|tx| clear_state(tx, OPTED_OUT_KEY))?;
        self.shared().opted_out.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the user has opted out.
    pub fn is_opted_out(&self) -> bool {
        self.shared().opted_out.load(Ordering::Relaxed)
    }

    /// The app goes to the background: drains now, on a thread of its own, and waits at most
    /// `deadline` (on iOS, the seconds `beginBackgroundTask` grants; keep a margin). Returns
    /// the drain's report when it ended in time, `None` when it was still running at the
    /// deadline: it goes on while the process lives, and whatever it had not settled stays
    /// buffered (every settle is one transaction, so a suspension or kill loses nothing).
    pub fn on_background(&self, deadline: Duration) -> Result<Option<DrainReport>, Error> {
        let shared = Arc::clone(&self.inner.shared);
        shared.ensure_open()?;
        let (done, report) = mpsc::channel();
        std::thread::Builder::new()
            .name("backfill-background-drain".to_owned())
            .spawn(move || {
                shared.retry_at_ms.store(0, Ordering::Relaxed);
                let _ = done.send(shared.drain());
            })
            .map_err(|e| Error::Storage(format!("cannot start the drain: {e}")))?;
        match report.recv_timeout(deadline) {
            Ok(result) => result.map(Some),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::Storage("the background drain stopped".to_owned()))
            }
        }
    }

    /// The app is back in the foreground: the background uploader drains what waits (when
    /// online and not backing off), without blocking the caller.
    pub fn on_foreground(&self) {
        self.shared().asked.store(true, Ordering::Relaxed);
        self.send(Command::Look);
    }

    /// Closes this SDK: stops the background uploader (waiting for a drain in progress),
    /// copies the WAL into the buffer file, and refuses every later call with
    /// [`Error::Closed`]. Buffered events stay for the next [`Backfill::open`]. Closing twice
    /// is harmless.
    pub fn close(&self) {
        stop_uploader(&self.inner.uploader);
        let shared = self.shared();
        // Taking the drain lock waits for a drain started by `flush` on another thread.
        let drain = shared.drain.lock();
        shared.closed.store(true, Ordering::Release);
        drop(drain);
        if let Err(e) = shared.buffer.checkpoint() {
            tracing::debug!(error = %e, "checkpoint on close failed");
        }
    }

    /// Whether [`Backfill::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared().closed.load(Ordering::Acquire)
    }
}
