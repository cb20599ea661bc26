package dev.backfill

import java.math.BigDecimal
import java.math.BigInteger

/**
 * Turns event properties into the JSON object text the core checks and stores.
 *
 * Accepted values, at any depth: `null`, [String] (and other [CharSequence]s), [Boolean], the
 * integer types ([Byte], [Short], [Int], [Long], [BigInteger]), finite [Float], [Double] and
 * [BigDecimal], [List]s and arrays of these, and [Map]s with [String] keys. Anything else (a
 * `Date`, an enum, a data class, NaN or infinity, a map with non-string keys) is an
 * [IllegalArgumentException] naming the key path, e.g. `tags[2]` or `device.model`, so the call
 * site is easy to find. The core then applies the contract's rules (SPEC §4: at most 16 levels,
 * 256 KiB per event).
 */
internal object Properties {
    /** The JSON object text of [properties]; throws [IllegalArgumentException] naming a bad key. */
    fun toJson(properties: Map<String, Any?>): String {
        val out = StringBuilder(64 + properties.size * 24)
        writeObject(out, properties, path = "")
        return out.toString()
    }

    /** The JSON text of one value (for a registered property), checked like [toJson]. */
    fun valueToJson(value: Any?, key: String): String = StringBuilder().also { writeValue(it, value, key) }.toString()

    private fun writeObject(out: StringBuilder, map: Map<*, *>, path: String) {
        out.append('{')
        var first = true
        for ((key, value) in map) {
            if (key !is String) {
                val where = if (path.isEmpty()) "the properties" else "property \"$path\""
                throw IllegalArgumentException(
                    "$where has a key of type ${typeName(key)}; map keys must be Strings"
                )
            }
            if (!first) out.append(',')
            first = false
            writeString(out, key)
            out.append(':')
            writeValue(out, value, if (path.isEmpty()) key else "$path.$key")
        }
        out.append('}')
    }

    private fun writeValue(out: StringBuilder, value: Any?, path: String) {
        when (value) {
            null -> out.append("null")
            is CharSequence -> writeString(out, value)
            is Boolean -> out.append(if (value) "true" else "false")
            is Int, is Long, is Short, is Byte, is BigInteger -> out.append(value.toString())
            is Double -> writeFinite(out, value, value.isFinite(), path)
            is Float -> writeFinite(out, value, value.isFinite(), path)
            is BigDecimal -> out.append(value.toString())
            is Map<*, *> -> writeObject(out, value, path)
            is List<*> -> writeArray(out, value, path)
            is Array<*> -> writeArray(out, value.asList(), path)
            is IntArray -> writeArray(out, value.asList(), path)
            is LongArray -> writeArray(out, value.asList(), path)
            is DoubleArray -> writeArray(out, value.asList(), path)
            is FloatArray -> writeArray(out, value.asList(), path)
            is BooleanArray -> writeArray(out, value.asList(), path)
            else -> throw IllegalArgumentException(
                "property \"$path\" has unsupported type ${typeName(value)}; use a String, " +
                    "number, Boolean, null, List or Map (convert dates to ISO-8601 strings or " +
                    "epoch milliseconds)"
            )
        }
    }

    private fun writeFinite(out: StringBuilder, value: Number, finite: Boolean, path: String) {
        require(finite) { "property \"$path\" is $value; JSON has no NaN or infinity" }
        // Kotlin prints 1.0E10 for large doubles, which is valid JSON; whole values keep ".0".
        out.append(value.toString())
    }

    private fun writeArray(out: StringBuilder, list: List<*>, path: String) {
        out.append('[')
        list.forEachIndexed { index, item ->
            if (index > 0) out.append(',')
            writeValue(out, item, "$path[$index]")
        }
        out.append(']')
    }

    /** RFC 8259 §7: quote, backslash and control characters are escaped; the rest is UTF-16 as is. */
    private fun writeString(out: StringBuilder, text: CharSequence) {
        out.append('"')
        for (c in text) {
            when {
                c == '"' -> out.append("\\\"")
                c == '\\' -> out.append("\\\\")
                c == '\n' -> out.append("\\n")
                c == '\r' -> out.append("\\r")
                c == '\t' -> out.append("\\t")
                c < ' ' -> out.append("\\u").append(HEX[c.code shr 12 and 0xf])
                    .append(HEX[c.code shr 8 and 0xf]).append(HEX[c.code shr 4 and 0xf])
                    .append(HEX[c.code and 0xf])
                else -> out.append(c)
            }
        }
        out.append('"')
    }

    private fun typeName(value: Any?): String = value?.let { it::class.qualifiedName ?: it.javaClass.name } ?: "null"

    private const val HEX = "0123456789abcdef"
}
