package dev.backfill

import java.math.BigDecimal
import java.math.BigInteger

/**
 * Turns event properties into the JSON object text the core checks and stores.
 *
 * Accepted values, at any depth: `null`, [String] (and other [CharSequence]s), [Boolean], the
 * integer types ([Byte], [Short], [Int], [Long], [BigInteger]), finite [Float], [Double] and
 * [BigDecimal], [List]s and arrays of these, and [Map]s with [String] keys. Anything else (a
 * `Date`, an enum, a data class, NaN or infinity, a map with non-string keys, a string with a
 * lone UTF-16 surrogate) is an [IllegalArgumentException] naming the key path, e.g. `tags[2]` or
 * `device.model`, so the call site is easy to find. The core then applies the contract's rules
 * (SPEC §4: at most 16 levels, 256 KiB per event).
 */
internal object Properties {
    /** The JSON object text of [properties]; throws [IllegalArgumentException] naming a bad key. */
    fun toJson(properties: Map<String, Any?>): String =
        JsonWriter(64 + properties.size * 24).apply { writeProperties(properties) }.text()

    /** The JSON text of one value (for a registered property), checked like [toJson]. */
    fun valueToJson(value: Any?, key: String): String = JsonWriter(32).apply { writeValue(value, key) }.text()
}

/**
 * Writes JSON text as UTF-8 into a growable byte array (RFC 8259: quote, backslash and control
 * characters escaped, everything else as is). The key path of the value being written is kept
 * as it goes, and only turned into text for an error message.
 */
internal class JsonWriter(private val initialCapacity: Int) {
    /** The text written since [reset]: [size] bytes. */
    var bytes = ByteArray(initialCapacity)
        private set

    /** How many bytes of [bytes] hold the text. */
    var size = 0
        private set

    // The key path of the value being written: at each depth a map key, or a list index when
    // the key is null.
    private var pathKeys = arrayOfNulls<String>(16)
    private var pathIndices = IntArray(16)
    private var depth = 0

    /** Starts a new text. */
    fun reset() {
        size = 0
        depth = 0
    }

    /** Gives back memory grown past [retainedBytes] (a large event), once its text has been copied out. */
    fun shrink(retainedBytes: Int) {
        if (bytes.size > retainedBytes) bytes = ByteArray(initialCapacity)
    }

    /** The text as a String. */
    fun text(): String = String(bytes, 0, size, Charsets.UTF_8)

    /** [name] as UTF-8, unquoted (the event name). */
    fun writeName(name: String) {
        for (i in name.indices) {
            val c = name[i]
            if (c.code < 0x80) {
                ensure(1)
                bytes[size++] = c.code.toByte()
            } else {
                writeNonAscii(name, i) { "the event name \"$name\" has a lone UTF-16 surrogate at index $i" }
            }
        }
    }

    /** The JSON object of [properties]. */
    fun writeProperties(properties: Map<String, Any?>) = writeObject(properties)

    /** The JSON of [value], named [key] in an error. */
    fun writeValue(value: Any?, key: String) {
        push(key, 0)
        writeAny(value)
        depth--
    }

    private fun writeObject(map: Map<*, *>) {
        write('{')
        var first = true
        for ((key, value) in map) {
            if (key !is String) {
                val where = if (depth == 0) "the properties" else "property \"${path()}\""
                throw IllegalArgumentException("$where has a key of type ${typeName(key)}; map keys must be Strings")
            }
            if (!first) write(',')
            first = false
            push(key, 0)
            writeString(key)
            write(':')
            writeAny(value)
            depth--
        }
        write('}')
    }

    private fun writeArray(list: List<*>) {
        write('[')
        for (index in list.indices) {
            if (index > 0) write(',')
            push(null, index)
            writeAny(list[index])
            depth--
        }
        write(']')
    }

    private fun writeAny(value: Any?) {
        when (value) {
            null -> writeAscii("null")
            is String -> writeString(value)
            is Boolean -> writeAscii(if (value) "true" else "false")
            is Int -> writeLong(value.toLong())
            is Long -> writeLong(value)
            is Double -> writeFinite(value.isFinite(), value)
            is CharSequence -> writeString(value)
            is Short -> writeLong(value.toLong())
            is Byte -> writeLong(value.toLong())
            is Float -> writeFinite(value.isFinite(), value)
            is BigInteger, is BigDecimal -> writeAscii(value.toString())
            is Map<*, *> -> writeObject(value)
            is List<*> -> writeArray(value)
            is Array<*> -> writeArray(value.asList())
            is IntArray -> writeArray(value.asList())
            is LongArray -> writeArray(value.asList())
            is DoubleArray -> writeArray(value.asList())
            is FloatArray -> writeArray(value.asList())
            is BooleanArray -> writeArray(value.asList())
            else -> throw IllegalArgumentException(
                "property \"${path()}\" has unsupported type ${typeName(value)}; use a String, " +
                    "number, Boolean, null, List or Map (convert dates to ISO-8601 strings or " +
                    "epoch milliseconds)"
            )
        }
    }

    private fun writeFinite(finite: Boolean, value: Number) {
        require(finite) { "property \"${path()}\" is $value; JSON has no NaN or infinity" }
        // Kotlin prints 1.0E10 for large doubles, which is valid JSON; whole values keep ".0".
        writeAscii(value.toString())
    }

    private fun writeLong(value: Long) {
        if (value == Long.MIN_VALUE) return writeAscii(value.toString())
        ensure(20)
        var v = value
        if (v < 0) {
            bytes[size++] = '-'.code.toByte()
            v = -v
        }
        val start = size
        do {
            bytes[size++] = ('0'.code + (v % 10).toInt()).toByte()
            v /= 10
        } while (v != 0L)
        bytes.reverse(start, size)
    }

    private fun writeString(text: CharSequence) {
        ensure(text.length + 2)
        bytes[size++] = '"'.code.toByte()
        for (i in 0 until text.length) {
            val c = text[i]
            when {
                c == '"' -> writeAscii("\\\"")
                c == '\\' -> writeAscii("\\\\")
                c == '\n' -> writeAscii("\\n")
                c == '\r' -> writeAscii("\\r")
                c == '\t' -> writeAscii("\\t")
                c < ' ' -> {
                    writeAscii("\\u00")
                    write(HEX[c.code shr 4])
                    write(HEX[c.code and 0xf])
                }
                c.code < 0x80 -> {
                    ensure(1)
                    bytes[size++] = c.code.toByte()
                }
                else -> writeNonAscii(text, i) {
                    val what = if (depth == 0) "the properties" else "property \"${path()}\""
                    "$what has a string with a lone UTF-16 surrogate at index $i"
                }
            }
        }
        write('"')
    }

    /** The character at [i] of [text] (not ASCII) as UTF-8; a surrogate pair is written at its low half. */
    private inline fun writeNonAscii(text: CharSequence, i: Int, loneSurrogate: () -> String) {
        val c = text[i]
        ensure(4)
        when {
            c.code < 0x800 -> {
                bytes[size++] = (0xc0 or (c.code shr 6)).toByte()
                bytes[size++] = (0x80 or (c.code and 0x3f)).toByte()
            }
            c.isHighSurrogate() -> {
                val next = if (i + 1 < text.length) text[i + 1] else ' '
                require(next.isLowSurrogate(), loneSurrogate)
                // Written with the low half, which follows.
            }
            c.isLowSurrogate() -> {
                val high = if (i > 0) text[i - 1] else ' '
                require(high.isHighSurrogate(), loneSurrogate)
                val code = Character.toCodePoint(high, c)
                bytes[size++] = (0xf0 or (code shr 18)).toByte()
                bytes[size++] = (0x80 or ((code shr 12) and 0x3f)).toByte()
                bytes[size++] = (0x80 or ((code shr 6) and 0x3f)).toByte()
                bytes[size++] = (0x80 or (code and 0x3f)).toByte()
            }
            else -> {
                bytes[size++] = (0xe0 or (c.code shr 12)).toByte()
                bytes[size++] = (0x80 or ((c.code shr 6) and 0x3f)).toByte()
                bytes[size++] = (0x80 or (c.code and 0x3f)).toByte()
            }
        }
    }

    private fun writeAscii(text: String) {
        ensure(text.length)
        for (c in text) bytes[size++] = c.code.toByte()
    }

    private fun write(c: Char) {
        ensure(1)
        bytes[size++] = c.code.toByte()
    }

    private fun ensure(more: Int) {
        if (size + more > bytes.size) bytes = bytes.copyOf(maxOf(size + more, 2 * bytes.size))
    }

    private fun push(key: String?, index: Int) {
        if (depth == MAX_DEPTH) {
            throw IllegalArgumentException(
                "property \"${path()}\" nests more than $MAX_DEPTH levels (a map or list that contains itself?)"
            )
        }
        if (depth == pathKeys.size) {
            pathKeys = pathKeys.copyOf(2 * depth)
            pathIndices = pathIndices.copyOf(2 * depth)
        }
        pathKeys[depth] = key
        pathIndices[depth] = index
        depth++
    }

    /** The key path being written, e.g. `device.tags[2]`. */
    private fun path(): String = buildString {
        for (d in 0 until depth) {
            val key = pathKeys[d]
            if (key == null) {
                append('[').append(pathIndices[d]).append(']')
            } else {
                if (d > 0) append('.')
                append(key)
            }
        }
    }

    private fun typeName(value: Any?): String = value?.let { it::class.qualifiedName ?: it.javaClass.name } ?: "null"

    private companion object {
        const val HEX = "0123456789abcdef"

        /** Far past the contract's 16 levels (which the core enforces): only a cycle gets here. */
        const val MAX_DEPTH = 256
    }
}
