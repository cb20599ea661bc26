//! [`BackfillClient`]: the SDK object an app holds, one per buffer file.

use std::sync::Arc;
use std::time::Duration;

use backfill_core::event::{properties_from_json, value_from_json};
use backfill_core::{Backfill, Event};

use crate::error::BackfillError;
use crate::http::{Host, HttpClient};
use crate::records::{BackfillConfig, BackfillStats, DrainReport};

/// The device SDK. Every method may be called from any thread. Recording calls commit the
/// event to the on-device SQLite buffer before they return; uploads happen in the background
/// (or through `flush`). Properties are JSON object text (`"{}"` or empty for none).
#[derive(uniffi::Object)]
pub struct BackfillClient {
    inner: Backfill,
}

#[cfg(feature = "http")]
fn open_builtin(config: BackfillConfig) -> Result<Backfill, BackfillError> {
    Ok(Backfill::open(config.into())?)
}

#[cfg(not(feature = "http"))]
fn open_builtin(_config: BackfillConfig) -> Result<Backfill, BackfillError> {
    Err(BackfillError::InvalidArgument(
        "this build has no built-in HTTP transport: pass an http_client".to_owned(),
    ))
}

type Result<T, E = BackfillError> = std::result::Result<T, E>;

#[uniffi::export]
impl BackfillClient {
    /// Opens the buffer at `config.database_path` and starts the background uploader.
    /// Uploads go through `http_client` when given (the platform's HTTP stack), else through
    /// the built-in transport (builds with the `http` feature: Python, desktop).
    /// Raises `InvalidArgument` for a bad config, `Storage` when the buffer cannot be opened.
    #[uniffi::constructor(default(http_client = None))]
    pub fn new(
        config: BackfillConfig,
        http_client: Option<Arc<dyn HttpClient>>,
    ) -> Result<Arc<Self>> {
        let inner = match http_client {
            Some(http) => Backfill::open_with_http_client(config.into(), Host(http))?,
            None => open_builtin(config)?,
        };
        Ok(Arc::new(Self { inner }))
    }

    /// Records an event: now, or at `timestamp_ms` (epoch ms: a reading taken earlier); for
    /// this device, or for `device_id` (a gateway's sensor: the server's 30-minute sessions
    /// apply); with its own `insert_id` (1 to 64 characters, SPEC §5: the server stores an
    /// event of an insert id it has once, so a reading recorded twice, say read again from a
    /// log, is a duplicate), or a fresh UUIDv7. Returns the event's insert id (empty while
    /// opted out). Raises `InvalidArgument` for an event the server would refuse (SPEC §4).
    #[uniffi::method(default(
        properties_json = "{}",
        timestamp_ms = None,
        device_id = None,
        insert_id = None
    ))]
    pub fn track(
        &self,
        name: String,
        properties_json: String,
        timestamp_ms: Option<i64>,
        device_id: Option<String>,
        insert_id: Option<String>,
    ) -> Result<String> {
        let mut event = Event::from_json(name, &properties_json, timestamp_ms, device_id)?;
        event.insert_id = insert_id;
        Ok(self.inner.track_event(event)?)
    }

    /// Records an event now, for this device: `track` without `timestamp_ms` or `device_id`,
    /// with the name and the properties' JSON object text (empty for none) as UTF-8 bytes.
    /// The bytes are borrowed for the call (Kotlin passes direct `ByteBuffer`s, Python
    /// `bytes`, Swift `Data`) instead of copied into a buffer Rust allocates for each argument,
    /// which makes this the cheap path for a binding's hot loop (Python's and Kotlin's `track`
    /// use it). Returns the insert id (empty while opted out). Raises `InvalidArgument` as
    /// `track` does (SPEC §4), and for bytes that are not UTF-8.
    pub fn track_utf8(&self, name: &[u8], properties_json: &[u8]) -> Result<String> {
        Ok(self
            .inner
            .track_event(Event::from_utf8(name, properties_json)?)?)
    }

    /// Names the user; later events of this device carry the profile id. `traits_json` may
    /// hold `firstName`, `lastName`, `email`, `avatar` and any other properties.
    #[uniffi::method(default(traits_json = "{}"))]
    pub fn identify(&self, profile_id: String, traits_json: String) -> Result<String> {
        Ok(self
            .inner
            .identify(&profile_id, properties_from_json(&traits_json)?)?)
    }

    /// Sets a property (`value_json`: any JSON value) merged into every later event; the
    /// event's own value wins.
    pub fn register(&self, key: String, value_json: String) -> Result<()> {
        Ok(self.inner.register(&key, value_from_json(&value_json)?)?)
    }

    /// Removes a property set by `register`.
    pub fn unregister(&self, key: String) {
        self.inner.unregister(&key)
    }

    /// Tells the SDK whether the network is up; going online starts a drain at once.
    pub fn set_online(&self, online: bool) {
        self.inner.set_online(online)
    }

    /// Whether the network is up, as last told (up at start).
    pub fn is_online(&self) -> bool {
        self.inner.is_online()
    }

    /// Drains now on the calling thread (blocking: not on a UI thread) and reports what
    /// happened. Raises `InvalidArgument` when the server refuses the credentials.
    pub fn flush(&self) -> Result<DrainReport> {
        Ok(self.inner.flush()?.into())
    }

    /// The buffer and upload figures.
    pub fn stats(&self) -> Result<BackfillStats> {
        Ok(self.inner.stats()?.into())
    }

    /// This device's id, sent with its own events.
    pub fn device_id(&self) -> String {
        self.inner.device_id()
    }

    /// Signs the user out: forgets the profile and the registered properties, and starts a
    /// new session with the next event. The device id stays unless `new_device_id`.
    #[uniffi::method(default(new_device_id = false))]
    pub fn reset(&self, new_device_id: bool) -> Result<()> {
        Ok(self.inner.reset(new_device_id)?)
    }

    /// The user opts out: nothing is recorded from now on, across restarts, until `opt_in`.
    pub fn opt_out(&self) -> Result<()> {
        Ok(self.inner.opt_out()?)
    }

    /// The user opts in again (the default).
    pub fn opt_in(&self) -> Result<()> {
        Ok(self.inner.opt_in()?)
    }

    /// Whether the user has opted out.
    pub fn is_opted_out(&self) -> bool {
        self.inner.is_opted_out()
    }

    /// The app goes to the background: drains, waiting at most `deadline_ms` (on iOS, within
    /// the time `beginBackgroundTask` grants). Returns the report, or null when the drain
    /// was still running at the deadline (nothing is lost if the app is then suspended).
    pub fn on_background(&self, deadline_ms: u64) -> Result<Option<DrainReport>> {
        let report = self
            .inner
            .on_background(Duration::from_millis(deadline_ms))?;
        Ok(report.map(DrainReport::from))
    }

    /// The app is back in the foreground: drains what waits, in the background.
    pub fn on_foreground(&self) {
        self.inner.on_foreground()
    }

    /// Stops the uploader and closes the buffer; every later call raises `Closed`. Buffered
    /// events stay for the next client on the same file.
    pub fn close(&self) {
        self.inner.close()
    }
}
