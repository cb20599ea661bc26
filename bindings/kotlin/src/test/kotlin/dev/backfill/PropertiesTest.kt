package dev.backfill

import java.math.BigDecimal
import java.util.Date
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

class PropertiesTest {
    @Test
    fun `every accepted type becomes its JSON`() {
        val json = Properties.toJson(
            linkedMapOf(
                "s" to "a\"b\\c\n\u0001é",
                "i" to 42,
                "l" to 9_007_199_254_740_993L,
                "d" to 21.5,
                "f" to 1.5f,
                "big" to BigDecimal("12345678901234567890.5"),
                "t" to true,
                "n" to null,
                "list" to listOf("a", 1, null),
                "array" to arrayOf(false),
                "ints" to intArrayOf(1, 2),
                "nested" to mapOf("deeper" to mapOf("x" to emptyList<Any>())),
            )
        )
        assertEquals(
            """{"s":"a\"b\\c\n\u0001é","i":42,"l":9007199254740993,"d":21.5,"f":1.5,""" +
                """"big":12345678901234567890.5,"t":true,"n":null,"list":["a",1,null],""" +
                """"array":[false],"ints":[1,2],"nested":{"deeper":{"x":[]}}}""",
            json,
        )
    }

    @Test
    fun `an unsupported value names its key path`() {
        val top = assertFailsWith<IllegalArgumentException> { Properties.toJson(mapOf("when" to Date())) }
        assertTrue(top.message!!.contains("\"when\""), top.message)
        assertTrue(top.message!!.contains("java.util.Date"), top.message)

        val deep = assertFailsWith<IllegalArgumentException> {
            Properties.toJson(mapOf("device" to mapOf("tags" to listOf("a", Any()))))
        }
        assertTrue(deep.message!!.contains("\"device.tags[1]\""), deep.message)
    }

    @Test
    fun `text is UTF-8 and numbers keep every digit`() {
        val json = Properties.toJson(
            linkedMapOf("clef" to "𝄞", "min" to Long.MIN_VALUE, "neg" to -120, "zero" to 0, "max" to Long.MAX_VALUE)
        )
        assertEquals(""" {"clef":"𝄞","min":-9223372036854775808,"neg":-120,"zero":0,"max":9223372036854775807}""".trim(), json)
        assertEquals("[1,\"é\"]", Properties.valueToJson(listOf(1, "é"), "k"))
    }

    @Test
    fun `a lone surrogate or a map that contains itself names its key`() {
        val lone = assertFailsWith<IllegalArgumentException> { Properties.toJson(mapOf("a" to listOf("ok", "\uDC00"))) }
        assertTrue(lone.message!!.contains("\"a[1]\""), lone.message)
        val cycle = HashMap<String, Any?>()
        cycle["self"] = cycle
        val deep = assertFailsWith<IllegalArgumentException> { Properties.toJson(cycle) }
        assertTrue(deep.message!!.contains("self.self"), deep.message?.take(200))
    }

    @Test
    fun `NaN, infinity and non-string keys are refused`() {
        val nan = assertFailsWith<IllegalArgumentException> { Properties.toJson(mapOf("temp" to Double.NaN)) }
        assertTrue(nan.message!!.contains("\"temp\""), nan.message)
        assertFailsWith<IllegalArgumentException> { Properties.toJson(mapOf("x" to Float.POSITIVE_INFINITY)) }
        val key = assertFailsWith<IllegalArgumentException> { Properties.toJson(mapOf("m" to mapOf(1 to "one"))) }
        assertTrue(key.message!!.contains("\"m\""), key.message)
    }
}
