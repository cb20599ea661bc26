package dev.backfill

/**
 * An SDK call failed for a reason outside the caller's arguments. Nothing is lost by an error: an
 * event either was committed to the buffer (the call returned) or was not (it threw).
 *
 * A bad argument (an event the server would refuse, a setting out of range, credentials the
 * server refused) is an [IllegalArgumentException] instead, and a call on a closed client an
 * [IllegalStateException], as Kotlin's `require` and `check` would throw.
 */
sealed class BackfillException(message: String) : RuntimeException(message) {
    /**
     * The on-device buffer could not be written or read (disk full, damaged file). Recording works
     * again once space is freed.
     */
    class Storage(message: String) : BackfillException(message)

    /** The network or the HTTP client failed during a call that sends. */
    class Network(message: String) : BackfillException(message)

    /** Anything else; the message says what. */
    class Other(message: String) : BackfillException(message)
}
