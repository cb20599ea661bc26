package dev.backfill

import java.io.ByteArrayInputStream
import kotlin.test.Test
import kotlin.test.assertContentEquals

/** The built-in HTTP client reads at most MAX_ANSWER_BYTES of an answer. */
class HttpClientTest {
    @Test
    fun `an answer is read up to the limit and no further`() {
        val answer = ByteArray(200_000) { (it % 251).toByte() }
        assertContentEquals(answer.copyOf(70_000), readAtMost(ByteArrayInputStream(answer), 70_000))
        assertContentEquals(answer, readAtMost(ByteArrayInputStream(answer), MAX_ANSWER_BYTES))
        assertContentEquals(ByteArray(0), readAtMost(ByteArrayInputStream(ByteArray(0)), 10))
    }
}
