package dev.backfill

/**
 * How to reach the server and where to buffer. Only [endpoint], [clientId], [clientSecret] and
 * [databasePath] are required; every other setting is `null` for the core's default (given in
 * each doc). Times are in milliseconds, sizes in bytes. Checked when the client opens: a value out
 * of range is an [IllegalArgumentException] naming it.
 */
data class BackfillConfig(
    /** Base URL of the server, e.g. `https://ingest.example.com`. */
    val endpoint: String,
    /** The project's client id (a UUID; SPEC §1). */
    val clientId: String,
    /** The project's client secret, for a client in `write` mode. */
    val clientSecret: String,
    /**
     * Path of the SQLite buffer file, created with its folder when missing. On Android, a file in
     * the app's private storage: `File(context.filesDir, "backfill/events.db").path`.
     */
    val databasePath: String,
    /** This device's id (1 to 64 characters); default: a random id generated once and kept. */
    val deviceId: String? = null,
    /** Buffered events that start a background drain. Default 200. */
    val flushThreshold: Long? = null,
    /** Time between background drains while events wait, in ms. Default 30,000. */
    val flushIntervalMs: Long? = null,
    /** Most events per request, 1 to 2000. Default 2000. */
    val maxBatchEvents: Int? = null,
    /** Most JSON bytes per request before compression, 1 KiB to 10 MiB. Default 10 MiB. */
    val maxBatchBytes: Int? = null,
    /** Most buffered events; past it the oldest are evicted and counted. Default 1,000,000. */
    val maxBufferEvents: Long? = null,
    /** Most buffered bytes; past it the oldest are evicted and counted. Default 512 MiB. */
    val maxBufferBytes: Long? = null,
    /** Hard cap on the buffer file's size; recording fails with a storage error past it. */
    val maxDatabaseBytes: Long? = null,
    /** Gzip request bodies. Default true. */
    val compress: Boolean? = null,
    /** A client session ends after this long without events, in ms. Default 30 minutes. */
    val sessionTimeoutMs: Long? = null,
    /** First retry delay in ms (doubling per attempt, with full jitter). Default 1,000. */
    val retryBaseMs: Long? = null,
    /** Longest retry delay in ms. Default 300,000. */
    val retryCapMs: Long? = null,
    /**
     * Drain in the background (past [flushThreshold], every [flushIntervalMs], when back online).
     * Default true; false for tools that drain by hand with [Backfill.flush].
     */
    val backgroundUpload: Boolean? = null,
) {
    /** The secret is left out, so a config can be logged. */
    override fun toString(): String =
        "BackfillConfig(endpoint=$endpoint, clientId=$clientId, clientSecret=<redacted>, " +
            "databasePath=$databasePath, deviceId=$deviceId)"
}
