import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// One request the SDK wants sent: `POST {endpoint}/track/batch` with a JSON body (gzip-compressed
/// when the headers say `content-encoding: gzip`; SPEC §2), or `GET {endpoint}/healthz`.
public struct HTTPRequest: Sendable {
    /// `POST` or `GET`.
    public var method: String
    /// The absolute URL.
    public var url: URL
    /// Header names (lower case) to values: content type, credentials, SDK name and version.
    public var headers: [String: String]
    /// The body, already encoded; empty for `GET`.
    public var body: Data
}

/// The server's answer.
public struct HTTPResponse: Sendable {
    /// The HTTP status code.
    public var status: Int
    /// Header names to values; the SDK reads `retry-after` and `backfill-max-event-age`.
    public var headers: [String: String]
    /// The body.
    public var body: Data

    public init(status: Int, headers: [String: String], body: Data) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// How the SDK reaches the server; the default is ``URLSessionHTTPClient``. Give your own to route
/// uploads through your app's networking (pinning, proxies, a background `URLSession`).
///
/// `send` is called from the SDK's drain threads, several at once (one per request in flight),
/// never from the main thread; it blocks until the answer is read. Throw when no answer came: the
/// SDK keeps the events and retries after a backoff. Any answer with a status, even 500, is a
/// return value.
public protocol HTTPClient: AnyObject, Sendable {
    /// Sends `request` and returns the answer; throws when there is none.
    func send(_ request: HTTPRequest) throws -> HTTPResponse
}

/// The platform's HTTP stack: `URLSession`, with its connection reuse, proxies and ATS rules.
public final class URLSessionHTTPClient: HTTPClient, @unchecked Sendable {
    private let session: URLSession
    private let timeout: TimeInterval

    /// - Parameters:
    ///   - session: the session to send with (default: an ephemeral one: no cookies, no cache).
    ///   - timeout: seconds before a request without an answer fails.
    public init(session: URLSession = URLSession(configuration: .ephemeral), timeout: TimeInterval = 60) {
        self.session = session
        self.timeout = timeout
    }

    public func send(_ request: HTTPRequest) throws -> HTTPResponse {
        var urlRequest = URLRequest(url: request.url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: timeout)
        urlRequest.httpMethod = request.method
        for (name, value) in request.headers {
            urlRequest.setValue(value, forHTTPHeaderField: name)
        }
        if request.method == "POST" {
            urlRequest.httpBody = request.body
        }
        let outcome = Outcome()
        let task = session.dataTask(with: urlRequest) { data, response, error in
            defer { outcome.done.signal() }
            if let error {
                outcome.result = .failure(error)
            } else if let http = response as? HTTPURLResponse {
                var headers: [String: String] = [:]
                for (name, value) in http.allHeaderFields {
                    if let name = name as? String { headers[name.lowercased()] = "\(value)" }
                }
                outcome.result = .success(HTTPResponse(status: http.statusCode, headers: headers, body: data ?? Data()))
            } else {
                outcome.result = .failure(URLError(.badServerResponse))
            }
        }
        task.resume()
        // Blocking is right here: this runs on one of the SDK's own drain threads.
        outcome.done.wait()
        return try outcome.result.get()
    }

    /// The completion handler's result, handed to the waiting thread (the semaphore orders the
    /// write before the read).
    private final class Outcome: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        var result: Result<HTTPResponse, Error> = .failure(URLError(.unknown))
    }
}
