package dev.backfill

import com.sun.jna.Native
import com.sun.jna.Pointer
import dev.backfill.internal.BackfillClient
import dev.backfill.internal.FfiConverterString
import dev.backfill.internal.ForeignBytes
import dev.backfill.internal.InternalException
import dev.backfill.internal.UniffiLib
import dev.backfill.internal.UniffiRustCallStatus
import java.nio.ByteBuffer
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicLong
import dev.backfill.internal.BackfillException as FfiException

/**
 * [Backfill.track]'s path into the core: backfill-ffi's `track_utf8` (the name and the JSON
 * properties as UTF-8 bytes the call borrows), called with structures each thread reuses from
 * one event to the next.
 *
 * Why not the generated `BackfillClient.trackUtf8`: uniffi 0.32's generated Kotlin allocates JNA
 * structures on every call (a call status, a `ForeignBytes` per argument, and another status for
 * the handle clone each method call starts with and for freeing the returned buffer). JNA backs
 * each structure with native memory that it records in a global map and frees from its cleaner
 * thread after a garbage collection; at thousands of events a second that bookkeeping, and the
 * GC pauses it caused, took most of `track`'s time (`bindings/kotlin/bench.sh`). Here one call
 * status and two `ForeignBytes` per thread serve every event; the one structure allocated per
 * event is the buffer of the returned insert id, which JNA creates for a by-value return.
 *
 * It follows uniffi 0.32's call protocol exactly as the generated code does, through the same
 * generated declarations (`UniffiLib`, the structures, the error's lifting), so a change of a
 * signature fails to compile: a method call consumes a clone of the object's handle; the caller
 * frees a returned buffer; the status code is 0 (success), 1 (the method's error, serialised in
 * `error_buf`) or 2 (a panic, its message in `error_buf`). This object holds its own clone of
 * the client's handle, freed by [close] once no call is using it, or by the generated cleaner if
 * the [Backfill] is never closed.
 */
internal class NativeTrack(client: BackfillClient) : AutoCloseable {
    private val handle: Long = client.uniffiCloneHandle()
    private val cleanable = UniffiLib.CLEANER.register(this, FreeHandle(handle))

    // 1 until close(), plus 1 per call in flight: the handle is freed when it falls to 0.
    private val holds = AtomicLong(1)
    private val closed = AtomicBoolean(false)

    /**
     * Records event [name] with [properties] now; returns its insert id. Throws
     * [IllegalArgumentException] for a property that cannot be encoded, the core's
     * [FfiException] for an event it refuses, [IllegalStateException] after [close].
     */
    fun track(name: String, properties: Map<String, Any?>): String {
        hold()
        try {
            return CallBuffers.use { it.track(handle, name, properties) }
        } finally {
            release()
        }
    }

    /** Frees this object's handle once the calls in flight are done; later calls throw. */
    override fun close() {
        if (closed.compareAndSet(false, true)) release()
    }

    private fun hold() {
        while (true) {
            val n = holds.get()
            check(n > 0L) { "the Backfill client is closed" }
            if (holds.compareAndSet(n, n + 1)) return
        }
    }

    private fun release() {
        if (holds.decrementAndGet() == 0L) cleanable.clean()
    }

    /** Frees the handle (a static class: the cleaner must not hold the [NativeTrack]). */
    private class FreeHandle(private val handle: Long) : Runnable {
        override fun run() {
            UniffiLib.uniffi_backfill_ffi_fn_free_backfillclient(handle, UniffiRustCallStatus())
        }
    }
}

/**
 * One thread's encoder, direct buffers and call structures for [NativeTrack], reused from one
 * event to the next. The buffers are only read by the native call, while the thread waits in it.
 */
private class CallBuffers {
    private val json = JsonWriter(INITIAL_PROPERTIES)
    private var name = DirectBuffer(INITIAL_NAME)
    private var properties = DirectBuffer(INITIAL_PROPERTIES)
    private val status = UniffiRustCallStatus()
    private val nameBytes = ForeignBytes.ByValue()
    private val propertiesBytes = ForeignBytes.ByValue()
    private var busy = false

    fun track(handle: Long, name: String, properties: Map<String, Any?>): String {
        // The buffers stay in fields until the call returns: the native side reads them by
        // address, and a direct buffer no longer referenced may be freed by the GC.
        try {
            json.reset()
            json.writeName(name)
            this.name = copy(this.name)
            json.reset()
            json.writeProperties(properties)
            this.properties = copy(this.properties)
            nameBytes.borrow(this.name)
            propertiesBytes.borrow(this.properties)
            return record(handle)
        } finally {
            this.name = this.name.retained(INITIAL_NAME)
            this.properties = this.properties.retained(INITIAL_PROPERTIES)
            json.shrink(RETAINED_BYTES)
        }
    }

    /** The `track_utf8` call with [nameBytes] and [propertiesBytes]: the insert id. */
    private fun record(handle: Long): String {
        val clone = call { UniffiLib.uniffi_backfill_ffi_fn_clone_backfillclient(handle, it) }
        val insertId = call {
            UniffiLib.uniffi_backfill_ffi_fn_method_backfillclient_track_utf8(clone, nameBytes, propertiesBytes, it)
        }
        try {
            val bytes = ByteArray(insertId.len.toInt())
            if (bytes.isNotEmpty()) insertId.data!!.read(0, bytes, 0, bytes.size)
            return String(bytes, Charsets.UTF_8)
        } finally {
            call { UniffiLib.ffi_backfill_ffi_rustbuffer_free(insertId, it) }
        }
    }

    /** [json]'s text in [into], or in a larger buffer when it does not fit. */
    private fun copy(into: DirectBuffer): DirectBuffer {
        val size = json.size
        val target = if (into.capacity >= size) into else DirectBuffer(maxOf(size, 2 * into.capacity))
        // Through Buffer: ByteBuffer.clear() returning ByteBuffer is Java 9 (and Android 28+).
        (target.buffer as java.nio.Buffer).clear()
        target.buffer.put(json.bytes, 0, size)
        target.size = size
        return target
    }

    /** This buffer if small enough to keep for the next event, else a fresh one of [initial] bytes. */
    private fun DirectBuffer.retained(initial: Int): DirectBuffer =
        if (capacity <= RETAINED_BYTES) this else DirectBuffer(initial)

    /** Points at [direct]'s bytes, as the generated `FfiConverterByRefBytes` does (null when empty). */
    private fun ForeignBytes.borrow(direct: DirectBuffer) {
        len = direct.size
        data = if (direct.size == 0) null else direct.address
    }

    /** [block] with the reset call status, then the status checked as the generated code checks it. */
    private inline fun <T> call(block: (UniffiRustCallStatus) -> T): T {
        status.code = 0
        status.error_buf.capacity = 0
        status.error_buf.len = 0
        status.error_buf.data = null
        val result = block(status)
        when (status.code.toInt()) {
            0 -> return result
            1 -> throw FfiException.lift(status.error_buf)
            2 -> throw InternalException(
                if (status.error_buf.len > 0) FfiConverterString.lift(status.error_buf) else "Rust panic"
            )
            else -> throw InternalException("Unknown rust call status: ${status.code}")
        }
    }

    companion object {
        private const val INITIAL_NAME = 256
        private const val INITIAL_PROPERTIES = 4096

        /** A buffer grown past this (an event near the 256 KiB limit, or over it) is not kept. */
        private const val RETAINED_BYTES = 64 * 1024

        // Not ThreadLocal.withInitial: Android has it from API 26, the library supports 24.
        private val perThread = object : ThreadLocal<CallBuffers>() {
            override fun initialValue() = CallBuffers()
        }

        /**
         * [block] with the calling thread's buffers, or fresh ones if the thread is already in
         * this call (a property map whose own code records an event).
         */
        inline fun <T> use(block: (CallBuffers) -> T): T {
            val buffers = perThread.get()!!
            if (buffers.busy) return block(CallBuffers())
            buffers.busy = true
            try {
                return block(buffers)
            } finally {
                buffers.busy = false
            }
        }
    }
}

/** A direct buffer, its native address (looked up once) and how many of its bytes are in use. */
private class DirectBuffer(val capacity: Int) {
    val buffer: ByteBuffer = ByteBuffer.allocateDirect(capacity)
    val address: Pointer = Native.getDirectBufferPointer(buffer)
    var size = 0
}
