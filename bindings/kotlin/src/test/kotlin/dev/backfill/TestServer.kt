package dev.backfill

import java.io.File
import java.net.HttpURLConnection
import java.net.URI
import java.net.URLEncoder
import java.nio.file.Files
import java.util.UUID
import java.util.concurrent.TimeUnit
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive

/**
 * A real `backfill-server` process on 127.0.0.1:0 with its own data directory and one project,
 * for the length of a test. Its binary is `-Dbackfill.server.bin` (set by the pom).
 */
class TestServer : AutoCloseable {
    val clientId: String = UUID.randomUUID().toString()
    val clientSecret: String = "secret-" + UUID.randomUUID()
    val dataDir: File = Files.createTempDirectory("backfill-server").toFile()
    private val process: Process
    val url: String

    init {
        val bin = System.getProperty("backfill.server.bin")
            ?: error("set -Dbackfill.server.bin to the backfill-server binary")
        check(File(bin).canExecute()) { "$bin is not an executable; run `cargo build -p backfill-server`" }
        process = ProcessBuilder(
            bin, "--listen", "127.0.0.1:0", "--data-dir", dataDir.path,
            "--project", "$clientId:$clientSecret",
        ).redirectError(ProcessBuilder.Redirect.INHERIT).start()
        val stdout = process.inputStream.bufferedReader()
        val first = stdout.readLine() ?: error("backfill-server exited before listening")
        url = first.removePrefix("listening on ").trim()
        check(url.startsWith("http://")) { "unexpected first line from backfill-server: $first" }
        // Keep reading so the server never blocks on a full pipe.
        Thread { stdout.forEachLine { } }.apply { isDaemon = true }.start()
    }

    /**
     * The project's stored events through the read API (SPEC §8), in (created_at, id) order,
     * without the `session_start` events the server adds (SPEC §6).
     */
    fun events(): List<JsonObject> = allEvents().filter { it["name"]?.jsonPrimitive?.content != "session_start" }

    private fun allEvents(): List<JsonObject> {
        val all = ArrayList<JsonObject>()
        var cursor: String? = null
        do {
            val query = "limit=1000" + (cursor?.let { "&cursor=" + URLEncoder.encode(it, "UTF-8") } ?: "")
            val page = Json.parseToJsonElement(get("/api/events?$query")).jsonObject
            page.getValue("events").jsonArray.mapTo(all) { it.jsonObject }
            cursor = page["next_cursor"]?.jsonPrimitive?.takeIf { it.isString }?.content
        } while (cursor != null)
        return all
    }

    private fun get(path: String): String {
        val connection = URI(url + path).toURL().openConnection() as HttpURLConnection
        connection.setRequestProperty("openpanel-client-id", clientId)
        connection.setRequestProperty("openpanel-client-secret", clientSecret)
        val status = connection.responseCode
        check(status == 200) { "GET $path: HTTP $status ${connection.errorStream?.reader()?.readText()}" }
        return connection.inputStream.use { it.reader().readText() }
    }

    override fun close() {
        process.destroy()
        if (!process.waitFor(10, TimeUnit.SECONDS)) process.destroyForcibly().waitFor()
        dataDir.deleteRecursively()
    }
}
