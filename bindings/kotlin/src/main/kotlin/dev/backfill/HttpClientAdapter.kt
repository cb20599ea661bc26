package dev.backfill

import dev.backfill.internal.HttpClient as FfiHttpClient
import dev.backfill.internal.HttpException as FfiHttpException
import dev.backfill.internal.HttpResponse as FfiHttpResponse

/**
 * An app's [HttpClient] as the core's foreign transport. Whatever the app's client throws becomes
 * the transport's network failure (the drain backs off and retries; the events stay buffered),
 * never a crash of the drain thread.
 */
internal class HttpClientAdapter(private val http: HttpClient) : FfiHttpClient {
    override fun post(url: String, headers: Map<String, String>, body: ByteArray): FfiHttpResponse =
        send(HttpRequest("POST", url, headers, body))

    override fun get(url: String, headers: Map<String, String>): FfiHttpResponse =
        send(HttpRequest("GET", url, headers, EMPTY))

    private fun send(request: HttpRequest): FfiHttpResponse {
        val response = try {
            http.execute(request)
        } catch (e: Throwable) {
            if (e is VirtualMachineError) throw e
            throw FfiHttpException.Failed("${request.method} ${request.url}: ${e.javaClass.name}: ${e.message}")
        }
        if (response.status !in 100..599) {
            throw FfiHttpException.Failed("${request.method} ${request.url}: HTTP client returned status ${response.status}")
        }
        return FfiHttpResponse(response.status.toUShort(), response.headers, response.body)
    }

    private companion object {
        val EMPTY = ByteArray(0)
    }
}
