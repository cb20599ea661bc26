package dev.backfill

import java.io.IOException
import java.nio.file.Path
import java.time.Instant
import java.util.Date
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.CountDownLatch
import java.util.concurrent.CyclicBarrier
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertIs
import kotlin.test.assertNotEquals
import kotlin.test.assertTrue
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.serialization.json.double
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import org.junit.jupiter.api.io.TempDir

/** The Kotlin API over the real native library, against a real `backfill-server` where it sends. */
class BackfillTest {
    @TempDir
    lateinit var dir: Path

    private val opened = ArrayList<AutoCloseable>()

    @AfterTest
    fun closeAll() = opened.asReversed().forEach { it.close() }

    private fun <T : AutoCloseable> T.closing(): T = also { opened += it }

    private fun config(server: TestServer?, name: String = "events.db") = BackfillConfig(
        endpoint = server?.url ?: "http://127.0.0.1:9",
        clientId = server?.clientId ?: "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f",
        clientSecret = server?.clientSecret ?: "secret",
        databasePath = dir.resolve(name).toString(),
    )

    @Test
    fun `eight threads track offline, then one flush stores every event once at its own time`() {
        val server = TestServer().closing()
        val backfill = Backfill(config(server)).closing()
        backfill.setOnline(false)

        val threads = 8
        val perThread = 250
        val base = System.currentTimeMillis() - 3_600_000
        val insertIds = ConcurrentHashMap<String, Long>()
        val start = CyclicBarrier(threads)
        val failures = ConcurrentHashMap.newKeySet<Throwable>()
        (0 until threads).map { t ->
            thread(name = "tracker-$t") {
                try {
                    start.await()
                    for (i in 0 until perThread) {
                        val at = base + t * 100_000L + i * 13L
                        val props = mapOf("thread" to t, "seq" to i, "ok" to (i % 2 == 0), "tags" to listOf("a", "b"))
                        insertIds[backfill.trackAt("reading", at, props)] = at
                    }
                } catch (e: Throwable) {
                    failures += e
                }
            }
        }.forEach { it.join() }
        assertEquals(emptySet(), failures)
        assertEquals(threads * perThread, insertIds.size, "every track returned its own insert id")

        // Offline: everything waits on the device, nothing reached the server.
        assertEquals(threads * perThread.toLong(), backfill.stats().buffered)
        assertEquals(0, server.events().size)

        // One more, recorded now, while still offline.
        val before = System.currentTimeMillis()
        val lastId = backfill.track("app_closed", mapOf("reason" to null))
        val after = System.currentTimeMillis()

        backfill.setOnline(true)
        val report = runBlocking { backfill.flush() }
        assertEquals(DrainEnd.Empty, report.end)
        val stats = backfill.stats()
        assertEquals(0, stats.buffered)
        assertEquals(threads * perThread + 1L, stats.sent)
        assertEquals(0, stats.duplicates)

        val stored = server.events()
        assertEquals(threads * perThread + 1, stored.size)
        val byInsertId = stored.associateBy { it.getValue("insert_id").jsonPrimitive.content }
        assertEquals(stored.size, byInsertId.size, "no event is stored twice")
        for ((id, at) in insertIds) {
            val event = byInsertId[id] ?: error("event $id is missing")
            assertEquals(at, Instant.parse(event.getValue("created_at").jsonPrimitive.content).toEpochMilli())
            assertEquals(backfill.deviceId, event.getValue("device_id").jsonPrimitive.content)
            val props = event.getValue("properties").jsonObject
            assertEquals(at, base + props.getValue("thread").jsonPrimitive.int * 100_000L + props.getValue("seq").jsonPrimitive.int * 13L)
        }
        val closed = byInsertId.getValue(lastId)
        assertEquals("app_closed", closed.getValue("name").jsonPrimitive.content)
        val closedAt = Instant.parse(closed.getValue("created_at").jsonPrimitive.content).toEpochMilli()
        assertTrue(closedAt in before..after, "$closedAt is the time track was called ($before..$after)")
    }

    @Test
    fun `threads tracking at once each send their own name and properties, large or small`() {
        val server = TestServer().closing()
        val backfill = Backfill(config(server).copy(backgroundUpload = false)).closing()
        backfill.setOnline(false)

        val threads = 8
        val perThread = 100
        // Sizes around the reused buffers' capacity (4 KiB) and past what they keep (64 KiB).
        val sizes = intArrayOf(0, 10, 4_000, 5_000, 70_000)
        fun properties(t: Int, i: Int): Map<String, Any?> = mapOf(
            "thread" to t,
            "seq" to i,
            "text" to "t$t é 𝄞 \"$i\"\n",
            "pad" to "x".repeat(sizes[(t + i) % sizes.size]),
            "nested" to mapOf("values" to List(i % 4) { it * 1.5 + 0.25 }),
        )
        val start = CyclicBarrier(threads)
        val failures = ConcurrentHashMap.newKeySet<Throwable>()
        val insertIds = ConcurrentHashMap<String, Pair<Int, Int>>()
        (0 until threads).map { t ->
            thread(name = "tracker-$t") {
                try {
                    start.await()
                    for (i in 0 until perThread) insertIds[backfill.track("reading-$t-é", properties(t, i))] = t to i
                } catch (e: Throwable) {
                    failures += e
                }
            }
        }.forEach { it.join() }
        assertEquals(emptySet(), failures)
        assertEquals(threads * perThread, insertIds.size, "every track returned its own insert id")

        backfill.setOnline(true)
        assertEquals(DrainEnd.Empty, runBlocking { backfill.flush() }.end)
        val stored = server.events().associateBy { it.getValue("insert_id").jsonPrimitive.content }
        assertEquals(threads * perThread, stored.size)
        for ((id, ti) in insertIds) {
            val (t, i) = ti
            val event = stored[id] ?: error("event $id is missing")
            assertEquals("reading-$t-é", event.getValue("name").jsonPrimitive.content)
            val props = event.getValue("properties").jsonObject
            val expected = properties(t, i)
            assertEquals(t, props.getValue("thread").jsonPrimitive.int)
            assertEquals(i, props.getValue("seq").jsonPrimitive.int)
            assertEquals(expected["text"], props.getValue("text").jsonPrimitive.content)
            assertEquals(expected["pad"], props.getValue("pad").jsonPrimitive.content)
            val values = props.getValue("nested").jsonObject.getValue("values").jsonArray.map { it.jsonPrimitive.double }
            assertEquals(List(i % 4) { it * 1.5 + 0.25 }, values)
        }
    }

    @Test
    fun `invalid properties and events raise IllegalArgumentException and record nothing`() {
        val backfill = Backfill(config(null).copy(backgroundUpload = false)).closing()

        val type = assertFailsWith<IllegalArgumentException> { backfill.track("reading", mapOf("when" to Date())) }
        assertTrue(type.message!!.contains("\"when\""), type.message)
        val nested = assertFailsWith<IllegalArgumentException> {
            backfill.track("reading", mapOf("sensor" to mapOf("values" to listOf(1.0, Double.NaN))))
        }
        assertTrue(nested.message!!.contains("sensor.values[1]"), nested.message)
        // The core's own rules (SPEC §4) surface the same way.
        val name = assertFailsWith<IllegalArgumentException> { backfill.track("two\nlines") }
        assertTrue(name.message!!.contains("line"), name.message)
        assertFailsWith<IllegalArgumentException> { backfill.track("") }
        val surrogate = assertFailsWith<IllegalArgumentException> { backfill.track("reading", mapOf("note" to "a\uD800b")) }
        assertTrue(surrogate.message!!.contains("\"note\""), surrogate.message)

        assertEquals(0, backfill.stats().buffered)
    }

    @Test
    fun `a config out of range names the setting`() {
        val e = assertFailsWith<IllegalArgumentException> { Backfill(config(null).copy(endpoint = "ftp://example")) }
        assertTrue(e.message!!.contains("endpoint"), e.message)
        assertFailsWith<IllegalArgumentException> { Backfill(config(null).copy(flushThreshold = -1)) }
    }

    @Test
    fun `every call after close raises IllegalStateException, and the events stay for the next client`() {
        val first = Backfill(config(null).copy(backgroundUpload = false))
        first.setOnline(false)
        first.track("kept", mapOf("n" to 1))
        first.close()
        first.close() // twice is harmless

        assertFailsWith<IllegalStateException> { first.track("late") }
        assertFailsWith<IllegalStateException> { first.stats() }
        assertFailsWith<IllegalStateException> { runBlocking { first.flush() } }
        assertFailsWith<IllegalStateException> { first.deviceId }
        assertFailsWith<IllegalStateException> { first.setOnline(true) }
        assertFailsWith<IllegalStateException> { first.isOnline }

        val second = Backfill(config(null).copy(backgroundUpload = false)).closing()
        assertEquals(1, second.stats().buffered)
    }

    @Test
    fun `an HttpClient that throws is a network failure, the events stay and the drain backs off`() {
        var calls = 0
        val failing = HttpClient { calls++; throw IOException("no route to host (test)") }
        val backfill = Backfill(config(null).copy(backgroundUpload = false), failing).closing()
        backfill.track("reading", mapOf("temp" to 21.5))

        val report = runBlocking { backfill.flush() }
        assertIs<DrainEnd.RetryLater>(report.end)
        assertEquals(0, report.sent)
        assertTrue(calls > 0, "the HTTP client was used")
        val stats = backfill.stats()
        assertEquals(1, stats.buffered)
        assertTrue(stats.lastError.orEmpty().contains("no route to host (test)"), stats.lastError)

        // Not only IOExceptions: any exception from the app's client is read the same way.
        val buggy = Backfill(config(null, "buggy.db").copy(backgroundUpload = false), HttpClient { error("bug in the app's client") }).closing()
        buggy.track("reading")
        assertIs<DrainEnd.RetryLater>(buggy.flushBlocking().end)
        assertEquals(1, buggy.stats().buffered)
        assertTrue(buggy.stats().lastError.orEmpty().contains("bug in the app's client"), buggy.stats().lastError)
    }

    @Test
    fun `a foreign transport raising an exception uniffi does not know becomes a network error in Rust`() {
        // The generated interface, implemented without the adapter: the exception crosses the
        // boundary as an unexpected callback error, which the FFI crate turns into a network error.
        val raw = object : dev.backfill.internal.HttpClient {
            override fun post(url: String, headers: Map<String, String>, body: ByteArray) = throw IllegalStateException("raw failure")
            override fun get(url: String, headers: Map<String, String>) = throw IllegalStateException("raw failure")
        }
        val ffiConfig = dev.backfill.internal.BackfillConfig(
            endpoint = "http://127.0.0.1:9", clientId = "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f",
            clientSecret = "secret", databasePath = dir.resolve("raw.db").toString(), backgroundUpload = false,
        )
        val client = dev.backfill.internal.BackfillClient(ffiConfig, raw)
        try {
            client.track("reading", "{}", null, null)
            val report = client.flush()
            assertIs<dev.backfill.internal.DrainEnd.RetryLater>(report.end)
            assertEquals(1uL, client.stats().buffered)
            assertTrue(client.stats().lastError.orEmpty().contains("raw failure"), client.stats().lastError)
        } finally {
            client.shutdown()
            client.destroy()
        }
    }

    @Test
    fun `the coroutine flush runs on the IO dispatcher, never on the calling thread`() {
        val server = TestServer().closing()
        val entered = CountDownLatch(1)
        val release = CountDownLatch(1)
        val httpThreads = ConcurrentHashMap.newKeySet<Thread>()
        val platform = UrlConnectionHttpClient()
        val gated = HttpClient { request ->
            httpThreads += Thread.currentThread()
            if (request.method == "POST") {
                entered.countDown()
                // Waits for the caller's thread to prove it is free; bounded so a regression
                // fails the test instead of hanging it.
                check(release.await(60, TimeUnit.SECONDS)) { "the calling thread stayed blocked" }
            }
            platform.execute(request)
        }
        val backfill = Backfill(config(server).copy(backgroundUpload = false), gated).closing()
        backfill.track("reading", mapOf("temp" to 20))

        // runBlocking has one thread: if flush ran on it, the second coroutine below could not
        // run until the drain ended, and the drain waits for that coroutine.
        val caller = Thread.currentThread()
        val report = runBlocking {
            val flushing = async { backfill.flush() }
            withContext(Dispatchers.IO) { check(entered.await(60, TimeUnit.SECONDS)) { "no request was sent" } }
            assertEquals(caller, Thread.currentThread(), "back on the caller's thread while the drain is sending")
            release.countDown()
            flushing.await()
        }
        assertEquals(1, report.sent)
        assertTrue(caller !in httpThreads)
        assertEquals(1, server.events().size)
    }

    @Test
    fun `wrong credentials stop uploads with IllegalArgumentException and keep the events`() {
        val server = TestServer().closing()
        val backfill = Backfill(config(server).copy(clientSecret = "wrong", backgroundUpload = false)).closing()
        backfill.track("reading")
        val e = assertFailsWith<IllegalArgumentException> { runBlocking { backfill.flush() } }
        assertTrue(e.message!!.contains("401"), e.message)
        val stats = backfill.stats()
        assertEquals(1, stats.buffered)
        assertTrue(stats.unauthorized)
        assertEquals(0, server.events().size)
    }

    @Test
    fun `a given insert id makes a reading recorded twice one stored event`() {
        val server = TestServer().closing()
        val backfill = Backfill(config(server).copy(backgroundUpload = false)).closing()
        val at = System.currentTimeMillis() - 3_600_000
        assertEquals("gw-1:log:7", backfill.trackAt("log-line", at, mapOf("line" to 7), insertId = "gw-1:log:7"))
        backfill.flushBlocking()
        // Read again from the gateway's log after a restart: the same line, the same key.
        backfill.trackForDevice("sensor-1", "log-line", mapOf("line" to 7), at, insertId = "gw-1:log:7")
        val report = backfill.flushBlocking()
        assertEquals(1L to 1L, report.sent to report.duplicates)
        assertFailsWith<IllegalArgumentException> { backfill.trackAt("log-line", at, insertId = "") }
        val stored = server.events()
        assertEquals(listOf("gw-1:log:7"), stored.map { it.getValue("insert_id").jsonPrimitive.content })
    }

    @Test
    fun `identify, register and opt-out reach the server as a user expects`() {
        val server = TestServer().closing()
        val backfill = Backfill(config(server).copy(backgroundUpload = false)).closing()
        backfill.identify("user-42", mapOf("plan" to "pro"))
        backfill.register("app_version", "1.2.3")
        backfill.track("opened")
        backfill.optOut()
        assertEquals("", backfill.track("while_opted_out"))
        assertTrue(backfill.isOptedOut)
        backfill.optIn()
        backfill.unregister("app_version")
        backfill.track("closed")
        runBlocking { backfill.flush() }

        val events = server.events().associateBy { it.getValue("name").jsonPrimitive.content }
        assertEquals(setOf("opened", "closed"), events.keys)
        val opened = events.getValue("opened")
        assertEquals("user-42", opened.getValue("profile_id").jsonPrimitive.content)
        assertEquals("1.2.3", opened.getValue("properties").jsonObject.getValue("app_version").jsonPrimitive.content)
        assertTrue("app_version" !in events.getValue("closed").getValue("properties").jsonObject)
        assertNotEquals(0, backfill.stats().optedOutCalls)
    }
}
