package dev.backfill

import dev.backfill.internal.BackfillClient
import dev.backfill.internal.BackfillStats
import java.util.concurrent.atomic.AtomicBoolean
import kotlinx.coroutines.CoroutineDispatcher
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import dev.backfill.internal.BackfillConfig as FfiConfig
import dev.backfill.internal.BackfillException as FfiException
import dev.backfill.internal.DrainEnd as FfiDrainEnd
import dev.backfill.internal.DrainReport as FfiDrainReport

/**
 * Backfill's device SDK: records events offline for days, keeps every one in an on-device SQLite
 * buffer, and drains the backlog to the server in a few large requests when a network is there.
 *
 * ```kotlin
 * val backfill = Backfill(BackfillConfig(endpoint = "https://ingest.example.com",
 *     clientId = ID, clientSecret = SECRET, databasePath = File(filesDir, "events.db").path))
 * backfill.track("reading", mapOf("temp" to 21.5, "ok" to true, "tags" to listOf("a", "b")))
 * val report = backfill.flush()   // suspend: drains on Dispatchers.IO
 * backfill.close()
 * ```
 *
 * Every method may be called from any thread. Recording calls ([track], [identify]) commit the
 * event to the buffer before they return (a fraction of a millisecond: fine on the main thread);
 * calls that talk to the network ([flush], [onBackground]) are `suspend` functions that run on
 * [Dispatchers.IO], never on the caller's thread. Uploads go through [httpClient], by default the
 * platform's `HttpURLConnection`.
 *
 * Errors: an event the server would refuse, or properties of an unsupported type, throw
 * [IllegalArgumentException] naming what to fix; any call after [close] throws
 * [IllegalStateException]; a storage failure throws [BackfillException.Storage].
 *
 * @throws IllegalArgumentException when the config is out of range.
 * @throws BackfillException.Storage when the buffer file cannot be opened.
 */
class Backfill @JvmOverloads constructor(
    config: BackfillConfig,
    httpClient: HttpClient = UrlConnectionHttpClient(),
    private val ioDispatcher: CoroutineDispatcher = Dispatchers.IO,
) : AutoCloseable {
    // Before [client]: its construction goes through [call], which reads it.
    private val closed = AtomicBoolean(false)
    private val client: BackfillClient = call { BackfillClient(config.toFfi(), HttpClientAdapter(httpClient)) }
    private val nativeTrack = NativeTrack(client)

    /** This device's id, sent as `__deviceId` with its own events. */
    val deviceId: String
        get() = call { client.deviceId() }

    /**
     * Records event [name] now with [properties] (see [track] rules below). Returns the event's
     * insert id (a UUIDv7; empty while the user has opted out).
     *
     * [properties] may hold `String`, numbers, `Boolean`, `null`, lists and nested maps; anything
     * else is an [IllegalArgumentException] naming the key. The name is 1 to 80 characters
     * without line breaks (SPEC §4).
     */
    fun track(name: String, properties: Map<String, Any?> = emptyMap()): String =
        call { nativeTrack.track(name, properties) }

    /**
     * Records event [name] that happened at [timestampMs] (epoch ms), e.g. a reading taken while
     * the app was not running; it keeps its own time on the server. [insertId] (1 to 64
     * characters) is the event's own idempotency key: the server stores one event per insert id
     * (SPEC §5), so a reading recorded twice is stored once; a fresh UUIDv7 when null.
     */
    fun trackAt(
        name: String,
        timestampMs: Long,
        properties: Map<String, Any?> = emptyMap(),
        insertId: String? = null,
    ): String = call { client.track(name, Properties.toJson(properties), timestampMs, null, insertId) }

    /**
     * Records event [name] for another device ([deviceId], 1 to 64 characters), e.g. a sensor
     * behind this gateway, at [timestampMs] (epoch ms; now when null), with [insertId] as in
     * [trackAt]. The server's 30-minute sessions apply to it (SPEC §6).
     */
    fun trackForDevice(
        deviceId: String,
        name: String,
        properties: Map<String, Any?> = emptyMap(),
        timestampMs: Long? = null,
        insertId: String? = null,
    ): String = call { client.track(name, Properties.toJson(properties), timestampMs, deviceId, insertId) }

    /**
     * Names the user: later events of this device carry [profileId]. [traits] may hold
     * `firstName`, `lastName`, `email`, `avatar` and any other properties. Returns the insert id.
     */
    fun identify(profileId: String, traits: Map<String, Any?> = emptyMap()): String =
        call { client.identify(profileId, Properties.toJson(traits)) }

    /**
     * Sets a property merged into every later event (the event's own value wins), e.g. the app
     * version. [value] follows the same type rules as [track]'s properties.
     */
    fun register(key: String, value: Any?) {
        val valueJson = Properties.valueToJson(value, key)
        call { client.register(key, valueJson) }
    }

    /** Removes a property set by [register]. */
    fun unregister(key: String) = call { client.unregister(key) }

    /**
     * Signs the user out: forgets the profile and the registered properties, and starts a new
     * session with the next event. The device id stays unless [newDeviceId].
     */
    fun reset(newDeviceId: Boolean = false) = call { client.reset(newDeviceId) }

    /** The user opts out: nothing is recorded from now on, across restarts, until [optIn]. */
    fun optOut() = call { client.optOut() }

    /** The user opts in again (the default). */
    fun optIn() = call { client.optIn() }

    /** Whether the user has opted out. */
    val isOptedOut: Boolean
        get() = call { client.isOptedOut() }

    /**
     * Tells the SDK whether the network is up (on Android, from a `ConnectivityManager` callback).
     * Going online starts a drain in the background at once; while offline nothing is sent.
     */
    fun setOnline(online: Boolean) = call { client.setOnline(online) }

    /** Whether the network is up, as last told (up at start). */
    val isOnline: Boolean
        get() = call { client.isOnline() }

    /**
     * Drains the buffer now, on [Dispatchers.IO], and reports what happened. A drain that has to
     * wait (server busy, network down) ends with [DrainEnd.RetryLater] rather than throwing; the
     * events stay buffered. Cancelling the coroutine does not stop a drain already sending.
     *
     * @throws IllegalArgumentException when the server refuses the credentials.
     */
    suspend fun flush(): DrainReport = withContext(ioDispatcher) { flushBlocking() }

    /** [flush] on the calling thread, for Java callers and worker threads. Never on a UI thread. */
    fun flushBlocking(): DrainReport = call { client.flush() }.toPublic()

    /** The buffer and upload figures. */
    fun stats(): Stats = call { client.stats() }.toPublic()

    /**
     * The app went to the background: drains on [Dispatchers.IO], waiting at most [deadlineMs].
     * Returns the report, or `null` when the drain was still running at the deadline (nothing is
     * lost if the process is then frozen or killed).
     */
    suspend fun onBackground(deadlineMs: Long = 20_000): DrainReport? = withContext(ioDispatcher) {
        require(deadlineMs >= 0) { "deadlineMs must not be negative, got $deadlineMs" }
        call { client.onBackground(deadlineMs.toULong()) }?.toPublic()
    }

    /** The app is back in the foreground: drains what waits, in the background. */
    fun onForeground() = call { client.onForeground() }

    /**
     * Stops the background uploader (waiting for a drain in progress) and closes the buffer.
     * Buffered events stay for the next client on the same file. Every later call throws
     * [IllegalStateException]; closing twice is harmless.
     */
    override fun close() {
        closed.set(true)
        client.shutdown()
        nativeTrack.close()
    }

    /** [block], after [close] an [IllegalStateException] (every call, [deviceId] and [setOnline] included). */
    private inline fun <T> call(block: () -> T): T {
        check(!closed.get()) { "the Backfill client is closed" }
        return try {
            block()
        } catch (e: FfiException) {
            throw e.toPublic()
        }
    }
}

/** The core's error as what a Kotlin caller expects (see [Backfill]'s doc). */
internal fun FfiException.toPublic(): RuntimeException = when (this) {
    is FfiException.InvalidArgument -> IllegalArgumentException(message, this)
    is FfiException.Closed -> IllegalStateException("the Backfill client is closed", this)
    is FfiException.Storage -> BackfillException.Storage(message ?: "storage error").also { it.initCause(this) }
    is FfiException.Network -> BackfillException.Network(message ?: "network error").also { it.initCause(this) }
    is FfiException.Other -> BackfillException.Other(message ?: "error").also { it.initCause(this) }
}

private fun nonNegative(name: String, value: Long?): ULong? = value?.let {
    require(it >= 0) { "$name must not be negative, got $it" }
    it.toULong()
}

private fun BackfillConfig.toFfi(): FfiConfig = FfiConfig(
    endpoint = endpoint,
    clientId = clientId,
    clientSecret = clientSecret,
    databasePath = databasePath,
    deviceId = deviceId,
    flushThreshold = nonNegative("flushThreshold", flushThreshold),
    flushIntervalMs = nonNegative("flushIntervalMs", flushIntervalMs),
    maxBatchEvents = nonNegative("maxBatchEvents", maxBatchEvents?.toLong())?.toUInt(),
    maxBatchBytes = nonNegative("maxBatchBytes", maxBatchBytes?.toLong())?.toUInt(),
    maxBufferEvents = nonNegative("maxBufferEvents", maxBufferEvents),
    maxBufferBytes = nonNegative("maxBufferBytes", maxBufferBytes),
    maxDatabaseBytes = nonNegative("maxDatabaseBytes", maxDatabaseBytes),
    compress = compress,
    sessionTimeoutMs = nonNegative("sessionTimeoutMs", sessionTimeoutMs),
    retryBaseMs = nonNegative("retryBaseMs", retryBaseMs),
    retryCapMs = nonNegative("retryCapMs", retryCapMs),
    requestTimeoutMs = null,
    backgroundUpload = backgroundUpload,
)

/** Counts past Long.MAX_VALUE do not happen in practice; saturate rather than wrap. */
private fun ULong.toLongSaturated(): Long = if (this > Long.MAX_VALUE.toULong()) Long.MAX_VALUE else toLong()

private fun FfiDrainReport.toPublic() = DrainReport(
    sent = sent.toLongSaturated(),
    duplicates = duplicates.toLongSaturated(),
    deadLettered = deadLettered.toLongSaturated(),
    expired = expired.toLongSaturated(),
    requests = requests.toLongSaturated(),
    bytesSent = bytesSent.toLongSaturated(),
    end = when (val e = end) {
        is FfiDrainEnd.Empty -> DrainEnd.Empty
        is FfiDrainEnd.RetryLater -> DrainEnd.RetryLater(e.waitMs.toLongSaturated())
        is FfiDrainEnd.Stopped -> DrainEnd.Stopped(e.status.toInt())
        is FfiDrainEnd.Misconfigured -> DrainEnd.Misconfigured(e.reason)
    },
)

private fun BackfillStats.toPublic() = Stats(
    buffered = buffered.toLongSaturated(),
    bufferedBytes = bufferedBytes.toLongSaturated(),
    oldestEventMs = oldestEventMs,
    newestEventMs = newestEventMs,
    sent = sent.toLongSaturated(),
    duplicates = duplicates.toLongSaturated(),
    deadLettered = deadLettered.toLongSaturated(),
    deadLettersEvicted = deadLettersEvicted.toLongSaturated(),
    expired = expired.toLongSaturated(),
    evicted = evicted.toLongSaturated(),
    requests = requests.toLongSaturated(),
    bytesSent = bytesSent.toLongSaturated(),
    unauthorized = unauthorized,
    misconfigured = misconfigured,
    optedOut = optedOut,
    optedOutCalls = optedOutCalls.toLongSaturated(),
    lastError = lastError,
)
