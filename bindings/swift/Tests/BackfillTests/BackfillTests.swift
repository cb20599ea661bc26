import Foundation
import XCTest

@testable import Backfill

/// The Swift API over the real native library, against a real `backfill-server` where it sends;
/// the same scenario as the Kotlin tests.
final class BackfillTests: XCTestCase {
    private var dir: URL!
    private var cleanups: [() -> Void] = []

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("backfill-swift-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        cleanups.reversed().forEach { $0() }
        cleanups = []
        try? FileManager.default.removeItem(at: dir)
    }

    private func server() throws -> TestServer {
        let server = try TestServer()
        cleanups.append { server.stop() }
        return server
    }

    private func open(
        _ server: TestServer?, file: String = "events.db", background: Bool? = nil,
        secret: String? = nil, http: HTTPClient = URLSessionHTTPClient()
    ) throws -> Backfill {
        let config = BackfillConfig(
            endpoint: server?.url ?? "http://127.0.0.1:9",
            clientId: server?.clientId ?? "3f9c2a1e-7b4d-4c8e-9f10-2a3b4c5d6e7f",
            clientSecret: secret ?? server?.clientSecret ?? "secret",
            databasePath: dir.appendingPathComponent(file).path, backgroundUpload: background)
        let backfill = try Backfill(config: config, httpClient: http)
        cleanups.append { backfill.close() }
        return backfill
    }

    func testEightThreadsTrackOfflineThenOneFlushStoresEveryEventOnceAtItsOwnTime() async throws {
        let server = try server()
        let backfill = try open(server)
        backfill.setOnline(false)

        let threads = 8
        let perThread = 250
        let base = Date().addingTimeInterval(-3600)
        let ids = Locked<[String: Int64]>([:])
        let failures = Locked<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for i in 0..<perThread {
                let at = base.addingTimeInterval(Double(t) * 100 + Double(i) * 0.013)
                do {
                    let id = try backfill.track("reading", at: at, ["thread": t, "seq": i, "ok": i % 2 == 0, "tags": ["a", "b"]])
                    ids.with { $0[id] = Int64((at.timeIntervalSince1970 * 1000).rounded()) }
                } catch {
                    failures.with { $0.append("\(error)") }
                }
            }
        }
        XCTAssertEqual(failures.value, [])
        XCTAssertEqual(ids.value.count, threads * perThread)
        XCTAssertEqual(try backfill.stats().buffered, UInt64(threads * perThread))
        XCTAssertEqual(try server.events().count, 0, "nothing is sent while offline")

        backfill.setOnline(true)
        let report = try await backfill.flush()
        XCTAssertEqual(report.end, .empty)
        XCTAssertEqual(try backfill.stats().buffered, 0)
        XCTAssertEqual(try backfill.stats().sent, UInt64(threads * perThread))

        let stored = try server.events()
        XCTAssertEqual(stored.count, threads * perThread)
        var seen = Set<String>()
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        for event in stored {
            let id = try XCTUnwrap(event["insert_id"] as? String)
            XCTAssertTrue(seen.insert(id).inserted, "event \(id) is stored twice")
            let createdAt = try XCTUnwrap(formatter.date(from: try XCTUnwrap(event["created_at"] as? String)))
            XCTAssertEqual(Int64((createdAt.timeIntervalSince1970 * 1000).rounded()), ids.value[id])
            XCTAssertEqual(event["device_id"] as? String, backfill.deviceId)
        }
    }

    func testInvalidPropertiesAndEventsThrowInvalidArgumentAndRecordNothing() throws {
        let backfill = try open(nil, background: false)
        XCTAssertThrowsError(try backfill.track("reading", ["when": Date()])) { error in
            guard case .invalidArgument(let message) = error as? BackfillError else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("\"when\""), message)
        }
        XCTAssertThrowsError(try backfill.track("reading", ["sensor": ["values": [1.0, Double.nan]]])) { error in
            guard case .invalidArgument(let message) = error as? BackfillError else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("sensor.values[1]"), message)
        }
        XCTAssertThrowsError(try backfill.track("two\nlines")) { error in
            guard case .invalidArgument = error as? BackfillError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try backfill.stats().buffered, 0)
    }

    func testEveryCallAfterCloseThrowsClosedAndTheEventsStay() async throws {
        let first = try open(nil, background: false)
        try first.track("kept")
        first.close()
        first.close()
        XCTAssertThrowsError(try first.track("late")) { XCTAssertEqual($0 as? BackfillError, .closed) }
        do {
            _ = try await first.flush()
            XCTFail("flush after close returned")
        } catch {
            XCTAssertEqual(error as? BackfillError, .closed)
        }
        let second = try open(nil, background: false)
        XCTAssertEqual(try second.stats().buffered, 1)
    }

    func testAThrowingHTTPClientIsANetworkFailureAndTheEventsStay() async throws {
        struct NoRoute: Error, CustomStringConvertible {
            var description: String { "no route to host (test)" }
        }
        final class Failing: HTTPClient, @unchecked Sendable {
            let calls = Locked(0)
            func send(_ request: HTTPRequest) throws -> HTTPResponse {
                calls.with { $0 += 1 }
                throw NoRoute()
            }
        }
        let failing = Failing()
        let backfill = try open(nil, background: false, http: failing)
        try backfill.track("reading", ["temp": 21.5])
        let report = try await backfill.flush()
        guard case .retryLater = report.end else { return XCTFail("\(report.end)") }
        XCTAssertGreaterThan(failing.calls.value, 0)
        XCTAssertEqual(try backfill.stats().buffered, 1)
        let lastError = try backfill.stats().lastError ?? ""
        XCTAssertTrue(lastError.contains("no route to host (test)"), lastError)
    }

    @MainActor
    func testFlushDoesNotRunOnTheCallingThread() async throws {
        final class Recording: HTTPClient, @unchecked Sendable {
            let onMain = Locked<[Bool]>([])
            let platform = URLSessionHTTPClient()
            func send(_ request: HTTPRequest) throws -> HTTPResponse {
                onMain.with { $0.append(Thread.isMainThread) }
                return try platform.send(request)
            }
        }
        let server = try server()
        let recording = Recording()
        let backfill = try open(server, background: false, http: recording)
        try backfill.track("reading", ["temp": 20])
        let report = try await backfill.flush()
        XCTAssertEqual(report.sent, 1)
        XCTAssertFalse(recording.onMain.value.isEmpty)
        XCTAssertFalse(recording.onMain.value.contains(true), "the main thread sent a request")
    }

    func testAGivenInsertIdMakesAReadingRecordedTwiceOneStoredEvent() throws {
        let server = try server()
        let backfill = try open(server, background: false)
        let at = Date(timeIntervalSinceNow: -3600)
        XCTAssertEqual(try backfill.track("log-line", at: at, ["line": 7], insertId: "gw-1:log:7"), "gw-1:log:7")
        _ = try backfill.flushBlocking()
        // Read again from the gateway's log after a restart: the same line, the same key.
        try backfill.track("log-line", forDevice: "sensor-1", at: at, ["line": 7], insertId: "gw-1:log:7")
        let report = try backfill.flushBlocking()
        XCTAssertEqual(report.sent, 1)
        XCTAssertEqual(report.duplicates, 1)
        let stored = try server.events().filter { $0["name"] as? String == "log-line" }
        XCTAssertEqual(stored.compactMap { $0["insert_id"] as? String }, ["gw-1:log:7"])
    }

    func testWrongCredentialsThrowInvalidArgumentAndKeepTheEvents() async throws {
        let server = try server()
        let backfill = try open(server, background: false, secret: "wrong")
        try backfill.track("reading")
        do {
            _ = try await backfill.flush()
            XCTFail("flush with a wrong secret returned")
        } catch BackfillError.invalidArgument(let message) {
            XCTAssertTrue(message.contains("401"), message)
        }
        XCTAssertEqual(try backfill.stats().buffered, 1)
        XCTAssertTrue(try backfill.stats().unauthorized)
    }

    func testPropertyTypesBecomeTheirJSON() throws {
        let json = try Properties.json([
            "s": "a\"b\\c\n", "i": 42, "d": 21.5, "t": true, "n": nil, "list": ["a", 1], "nested": ["x": [String]()],
        ])
        XCTAssertEqual(json, #"{"d":21.5,"i":42,"list":["a",1],"n":null,"nested":{"x":[]},"s":"a\"b\\c\n","t":true}"#)
    }
}

/// A value shared between threads.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value

    init(_ value: Value) {
        stored = value
    }

    var value: Value {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }

    func with(_ body: (inout Value) -> Void) {
        lock.lock()
        defer { lock.unlock() }
        body(&stored)
    }
}
