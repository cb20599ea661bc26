package dev.backfill

import java.io.IOException
import java.io.InputStream
import java.net.HttpURLConnection
import java.net.URI

/**
 * One request the SDK wants sent: `POST {endpoint}/track/batch` with a JSON body (gzip-compressed
 * when `content-encoding: gzip` is among the headers; SPEC §2), or `GET {endpoint}/healthz`
 * without credentials, whose answer says the server's age window.
 */
class HttpRequest(
    /** `POST` or `GET`. */
    val method: String,
    /** Absolute URL, e.g. `https://ingest.example.com/track/batch`. */
    val url: String,
    /** Header names (lower case) to values: content type, credentials, SDK name and version. */
    val headers: Map<String, String>,
    /** The request body, already encoded; empty for `GET`. */
    val body: ByteArray,
)

/** The server's answer to an [HttpRequest]. */
class HttpResponse(
    /** The HTTP status code. */
    val status: Int,
    /** Header names, in lower case, to values; the SDK reads `retry-after` and `backfill-max-event-age`. */
    val headers: Map<String, String>,
    /** The response body (the contract's JSON). */
    val body: ByteArray,
)

/**
 * How the SDK reaches the server: give your app's own HTTP stack (OkHttp, Ktor, Cronet) so uploads
 * use its proxies, certificates and interceptors. The default is [UrlConnectionHttpClient].
 *
 * A drain calls [execute] from several threads at once (one per request in flight), so an
 * implementation must be thread-safe. Throw an [IOException] (or any exception) when no answer
 * came: the SDK counts it as a network failure, keeps the events and retries after a backoff.
 * Any answer with a status, even 500, is a return value, not an exception.
 */
fun interface HttpClient {
    /** Sends [request] and returns the server's answer; throws when there is none. */
    @Throws(IOException::class)
    fun execute(request: HttpRequest): HttpResponse
}

/** The most of an answer's body read (the Rust core's `MAX_ANSWER_BYTES`). */
internal const val MAX_ANSWER_BYTES = 4 * 1024 * 1024

/** The first [limit] bytes of [stream] (all of it when shorter); works on every Android level. */
internal fun readAtMost(stream: InputStream, limit: Int): ByteArray {
    val out = java.io.ByteArrayOutputStream()
    val chunk = ByteArray(64 * 1024)
    while (out.size() < limit) {
        val n = stream.read(chunk, 0, minOf(chunk.size, limit - out.size()))
        if (n < 0) break
        out.write(chunk, 0, n)
    }
    return out.toByteArray()
}

/**
 * The platform's HTTP stack, `java.net.HttpURLConnection` (on Android, OkHttp underneath), with
 * its connection reuse. Times are in milliseconds.
 */
class UrlConnectionHttpClient(
    private val connectTimeoutMs: Int = 15_000,
    private val readTimeoutMs: Int = 60_000,
) : HttpClient {
    override fun execute(request: HttpRequest): HttpResponse {
        val connection = URI(request.url).toURL().openConnection() as HttpURLConnection
        try {
            connection.requestMethod = request.method
            connection.connectTimeout = connectTimeoutMs
            connection.readTimeout = readTimeoutMs
            connection.instanceFollowRedirects = false
            connection.useCaches = false
            for ((name, value) in request.headers) connection.setRequestProperty(name, value)
            if (request.method == "POST") {
                connection.doOutput = true
                connection.setFixedLengthStreamingMode(request.body.size)
                connection.outputStream.use { it.write(request.body) }
            }
            val status = connection.responseCode
            // Error statuses carry their body on the error stream; either may be absent.
            val stream: InputStream? = if (status >= 400) connection.errorStream else connection.inputStream
            // At most MAX_ANSWER_BYTES: the contract's largest answer is well under 1 MiB, and a
            // proxy's endless page must not exhaust the device's memory.
            val body = stream?.use { readAtMost(it, MAX_ANSWER_BYTES) } ?: ByteArray(0)
            val headers = HashMap<String, String>()
            for ((name, values) in connection.headerFields) {
                if (name != null && values.isNotEmpty()) headers[name.lowercase()] = values.last()
            }
            return HttpResponse(status, headers, body)
        } catch (e: Throwable) {
            // Only a failed exchange drops its socket; a fully read one goes back to the
            // keep-alive pool, which disconnect() would close.
            connection.disconnect()
            throw e
        }
    }
}
