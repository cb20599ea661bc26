package dev.backfill

/** How a drain ended. */
sealed class DrainEnd {
    /** Nothing left to send. */
    data object Empty : DrainEnd()

    /**
     * The server or the network asked to wait (`429`, `503`, a network failure; SPEC §9); the rest
     * stays buffered and the background uploader retries after [waitMs] milliseconds.
     */
    data class RetryLater(val waitMs: Long) : DrainEnd()

    /**
     * The server refused the configuration ([status] `401`/`403`: wrong credentials or mode);
     * uploads are paused and the events kept until a client opens with a working config.
     */
    data class Stopped(val status: Int) : DrainEnd()

    /**
     * The answers say the endpoint is wrong (`404`, `405`, `410`, or a body that is not the
     * contract's; SPEC §9): uploads are paused and the events kept until a client opens with a
     * working endpoint. [reason] is what the server answered.
     */
    data class Misconfigured(val reason: String) : DrainEnd()
}

/** What one drain did. Counts are events unless said otherwise. */
data class DrainReport(
    /** Events the server accepted (duplicates included); they are deleted from the buffer. */
    val sent: Long,
    /** Of those, events the server already had (SPEC §5). */
    val duplicates: Long,
    /** Events refused for good and kept in the bounded dead-letter table. */
    val deadLettered: Long,
    /** Events dropped for being older than the server's age window. */
    val expired: Long,
    /** Requests made. */
    val requests: Long,
    /** Request body bytes on the wire (after compression). */
    val bytesSent: Long,
    /** How it ended. */
    val end: DrainEnd,
)

/** A snapshot of the buffer and the uploads. Counters run since the buffer file was created. */
data class Stats(
    /** Events waiting in the buffer. */
    val buffered: Long,
    /** Bytes of event JSON waiting in the buffer. */
    val bufferedBytes: Long,
    /** Time of the oldest buffered event (epoch ms), if any. */
    val oldestEventMs: Long?,
    /** Time of the newest buffered event (epoch ms), if any. */
    val newestEventMs: Long?,
    /** Events the server accepted (duplicates included). */
    val sent: Long,
    /** Of those, events the server already had. */
    val duplicates: Long,
    /** Events the server refused for good. */
    val deadLettered: Long,
    /** Dead letters dropped to keep the dead-letter table within its bound (counted, never silently). */
    val deadLettersEvicted: Long,
    /** Events dropped for falling out of the server's age window. */
    val expired: Long,
    /** Events dropped to keep the buffer within its bounds. */
    val evicted: Long,
    /** Requests sent. */
    val requests: Long,
    /** Request body bytes sent on the wire. */
    val bytesSent: Long,
    /** Uploads are paused: the server refused the credentials. */
    val unauthorized: Boolean,
    /** Uploads are paused: the answers say the endpoint is wrong ([lastError] says why). */
    val misconfigured: Boolean,
    /** The user has opted out: nothing is recorded. */
    val optedOut: Boolean,
    /** Recording calls that recorded nothing because the user had opted out (since open). */
    val optedOutCalls: Long,
    /** The last error of an upload or of the storage, if any. */
    val lastError: String?,
)
