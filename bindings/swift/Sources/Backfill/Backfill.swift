import BackfillBindings
import Foundation

/// Backfill's device SDK: records events offline for days, keeps every one in an on-device SQLite
/// buffer, and drains the backlog to the server in a few large requests when a network is there.
///
/// ```swift
/// let backfill = try Backfill(config: BackfillConfig(endpoint: "https://ingest.example.com",
///     clientId: id, clientSecret: secret, databasePath: dbURL.path))
/// try backfill.track("reading", ["temp": 21.5, "ok": true])
/// let report = try await backfill.flush()
/// ```
///
/// Every method may be called from any thread. Recording calls commit the event to the buffer
/// before they return (a fraction of a millisecond: fine on the main thread); calls that talk to
/// the network (``flush()``, ``onBackground(deadline:)``) are `async` and run on a background
/// queue, never on the caller's thread nor on Swift's cooperative pool.
public final class Backfill: @unchecked Sendable {
    private let client: BackfillClient
    private static let queue = DispatchQueue(label: "dev.backfill.drain", qos: .utility, attributes: .concurrent)

    /// Opens the buffer at `config.databasePath` and starts the background uploader. Uploads go
    /// through `httpClient`, by default `URLSession`.
    ///
    /// - Throws: ``BackfillError/invalidArgument(_:)`` for a setting out of range,
    ///   ``BackfillError/storage(_:)`` when the buffer cannot be opened.
    public init(config: BackfillConfig, httpClient: HTTPClient = URLSessionHTTPClient()) throws {
        let ffiConfig = BackfillBindings.BackfillConfig(
            endpoint: config.endpoint, clientId: config.clientId, clientSecret: config.clientSecret,
            databasePath: config.databasePath, deviceId: config.deviceId,
            flushThreshold: config.flushThreshold, flushIntervalMs: config.flushIntervalMs,
            maxBatchEvents: config.maxBatchEvents, maxBatchBytes: nil,
            maxBufferEvents: config.maxBufferEvents, maxBufferBytes: config.maxBufferBytes,
            maxDatabaseBytes: config.maxDatabaseBytes, compress: nil,
            sessionTimeoutMs: config.sessionTimeoutMs, retryBaseMs: nil, retryCapMs: nil,
            requestTimeoutMs: nil, backgroundUpload: config.backgroundUpload)
        client = try Self.call { try BackfillClient(config: ffiConfig, httpClient: HTTPClientAdapter(httpClient)) }
    }

    /// This device's id, sent as `__deviceId` with its own events.
    public var deviceId: String { client.deviceId() }

    /// Records event `name` now. Returns its insert id (empty while the user has opted out).
    ///
    /// `properties` may hold `String`, numbers, `Bool`, `nil`, arrays and `[String: Any]`
    /// dictionaries; anything else throws ``BackfillError/invalidArgument(_:)`` naming the key.
    /// The name is 1 to 80 characters without line breaks (SPEC §4).
    @discardableResult
    public func track(_ name: String, _ properties: [String: Any?] = [:]) throws -> String {
        let json = try Properties.json(properties)
        return try Self.call {
            try client.track(name: name, propertiesJson: json, timestampMs: nil, deviceId: nil, insertId: nil)
        }
    }

    /// Records event `name` that happened at `date` (a reading taken earlier); it keeps its own
    /// time on the server. `insertId` (1 to 64 characters) is the event's own idempotency key:
    /// the server stores one event per insert id (SPEC §5), so a reading recorded twice is stored
    /// once; a fresh UUIDv7 when `nil`.
    @discardableResult
    public func track(
        _ name: String, at date: Date, _ properties: [String: Any?] = [:], insertId: String? = nil
    ) throws -> String {
        let json = try Properties.json(properties)
        return try Self.call {
            try client.track(
                name: name, propertiesJson: json, timestampMs: Self.epochMs(date), deviceId: nil,
                insertId: insertId)
        }
    }

    /// Records event `name` for another device (a sensor behind this gateway), at `date` (now when
    /// `nil`), with `insertId` as above. The server's 30-minute sessions apply to it (SPEC §6).
    @discardableResult
    public func track(
        _ name: String, forDevice deviceId: String, at date: Date? = nil, _ properties: [String: Any?] = [:],
        insertId: String? = nil
    ) throws -> String {
        let json = try Properties.json(properties)
        return try Self.call {
            try client.track(
                name: name, propertiesJson: json, timestampMs: date.map(Self.epochMs), deviceId: deviceId,
                insertId: insertId)
        }
    }

    /// Names the user: later events of this device carry `profileId`. `traits` may hold
    /// `firstName`, `lastName`, `email`, `avatar` and any other properties.
    @discardableResult
    public func identify(_ profileId: String, _ traits: [String: Any?] = [:]) throws -> String {
        let json = try Properties.json(traits)
        return try Self.call { try client.identify(profileId: profileId, traitsJson: json) }
    }

    /// Sets a property merged into every later event (the event's own value wins).
    public func register(_ key: String, _ value: Any?) throws {
        let valueJson = try Properties.json(value: value, key: key)
        try Self.call { try client.register(key: key, valueJson: valueJson) }
    }

    /// Removes a property set by ``register(_:_:)``.
    public func unregister(_ key: String) {
        client.unregister(key: key)
    }

    /// Signs the user out: forgets the profile and the registered properties, and starts a new
    /// session with the next event. The device id stays unless `newDeviceId`.
    public func reset(newDeviceId: Bool = false) throws {
        try Self.call { try client.reset(newDeviceId: newDeviceId) }
    }

    /// The user opts out: nothing is recorded from now on, across restarts, until ``optIn()``.
    public func optOut() throws { try Self.call { try client.optOut() } }

    /// The user opts in again (the default).
    public func optIn() throws { try Self.call { try client.optIn() } }

    /// Whether the user has opted out.
    public var isOptedOut: Bool { client.isOptedOut() }

    /// Tells the SDK whether the network is up (``NetworkMonitor`` does it from `NWPathMonitor`).
    /// Going online starts a drain in the background; while offline nothing is sent.
    public func setOnline(_ online: Bool) {
        client.setOnline(online: online)
    }

    /// Whether the network is up, as last told (up at start).
    public var isOnline: Bool { client.isOnline() }

    /// Drains the buffer now, on a background queue, and reports what happened. A drain that has
    /// to wait (server busy, network down) ends with ``DrainEnd/retryLater(waitMs:)`` rather
    /// than throwing; the events stay buffered.
    ///
    /// - Throws: ``BackfillError/invalidArgument(_:)`` when the server refuses the credentials,
    ///   ``BackfillError/closed`` after ``close()``.
    public func flush() async throws -> DrainReport {
        try await offCaller { try self.flushBlocking() }
    }

    /// ``flush()`` on the calling thread. Never on the main thread.
    public func flushBlocking() throws -> DrainReport {
        try Self.call { Self.report(try client.flush()) }
    }

    /// The buffer and upload figures.
    public func stats() throws -> BackfillStats {
        let s = try Self.call { try client.stats() }
        return BackfillStats(
            buffered: s.buffered, bufferedBytes: s.bufferedBytes, oldestEventMs: s.oldestEventMs,
            sent: s.sent, duplicates: s.duplicates, deadLettered: s.deadLettered,
            deadLettersEvicted: s.deadLettersEvicted, expired: s.expired, evicted: s.evicted,
            requests: s.requests, unauthorized: s.unauthorized, misconfigured: s.misconfigured,
            optedOut: s.optedOut, lastError: s.lastError)
    }

    /// The app went to the background: drains, waiting at most `deadline` seconds (keep it
    /// within what `beginBackgroundTask` grants). Returns the report, or `nil` when the drain was
    /// still running at the deadline (nothing is lost if the app is then suspended).
    public func onBackground(deadline: TimeInterval) async throws -> DrainReport? {
        let ms = UInt64(max(0, deadline) * 1000)
        return try await offCaller { try Self.call { try self.client.onBackground(deadlineMs: ms).map(Self.report) } }
    }

    /// The app is back in the foreground: drains what waits, in the background.
    public func onForeground() {
        client.onForeground()
    }

    /// Stops the background uploader (waiting for a drain in progress) and closes the buffer.
    /// Buffered events stay for the next client on the same file. Every later call throws
    /// ``BackfillError/closed``; closing twice is harmless.
    public func close() {
        client.close()
    }

    private func offCaller<T>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Self.queue.async { continuation.resume(with: Result { try work() }) }
        }
    }

    private static func epochMs(_ date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded())
    }

    private static func report(_ r: BackfillBindings.DrainReport) -> DrainReport {
        let end: DrainEnd
        switch r.end {
        case .empty: end = .empty
        case .retryLater(let waitMs): end = .retryLater(waitMs: waitMs)
        case .stopped(let status): end = .stopped(status: Int(status))
        case .misconfigured(let reason): end = .misconfigured(reason: reason)
        }
        return DrainReport(
            sent: r.sent, duplicates: r.duplicates, deadLettered: r.deadLettered, expired: r.expired,
            requests: r.requests, bytesSent: r.bytesSent, end: end)
    }

    /// The core's error as this module's.
    private static func call<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as BackfillBindings.BackfillError {
            switch error {
            case .InvalidArgument(let message): throw BackfillError.invalidArgument(message)
            case .Storage(let message): throw BackfillError.storage(message)
            case .Closed: throw BackfillError.closed
            case .Network(let message): throw BackfillError.network(message)
            case .Other(let message): throw BackfillError.other(message)
            }
        }
    }
}

/// An app's ``HTTPClient`` as the core's foreign transport: whatever it throws becomes a network
/// failure (the drain backs off; the events stay buffered), never a crash.
final class HTTPClientAdapter: BackfillBindings.HttpClient, @unchecked Sendable {
    private let http: HTTPClient

    init(_ http: HTTPClient) {
        self.http = http
    }

    func post(url: String, headers: [String: String], body: Data) throws -> BackfillBindings.HttpResponse {
        try send("POST", url, headers, body)
    }

    func get(url: String, headers: [String: String]) throws -> BackfillBindings.HttpResponse {
        try send("GET", url, headers, Data())
    }

    private func send(_ method: String, _ url: String, _ headers: [String: String], _ body: Data) throws
        -> BackfillBindings.HttpResponse
    {
        guard let target = URL(string: url) else {
            throw HttpError.Failed(reason: "\(method) \(url): not a URL")
        }
        let response: HTTPResponse
        do {
            response = try http.send(HTTPRequest(method: method, url: target, headers: headers, body: body))
        } catch {
            throw HttpError.Failed(reason: "\(method) \(url): \(error)")
        }
        guard (100...599).contains(response.status) else {
            throw HttpError.Failed(reason: "\(method) \(url): the HTTP client returned status \(response.status)")
        }
        return BackfillBindings.HttpResponse(status: UInt16(response.status), headers: response.headers, body: response.body)
    }
}
