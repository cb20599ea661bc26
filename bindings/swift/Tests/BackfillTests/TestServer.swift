import Foundation
import XCTest

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A real `backfill-server` process on 127.0.0.1:0 with its own data directory and one project,
/// for the length of a test. Its binary is `$BACKFILL_SERVER_BIN`, else the workspace's debug build.
final class TestServer {
    let clientId = UUID().uuidString.lowercased()
    let clientSecret = "secret-\(UUID().uuidString)"
    let dataDir: URL
    let url: String
    private let process = Process()

    init() throws {
        let bin = ProcessInfo.processInfo.environment["BACKFILL_SERVER_BIN"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../../../target/debug/backfill-server").standardized.path
        guard FileManager.default.isExecutableFile(atPath: bin) else {
            throw XCTSkip("\(bin) is missing; run `cargo build -p backfill-server`")
        }
        dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("backfill-server-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dataDir, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: bin)
        process.arguments = [
            "--listen", "127.0.0.1:0", "--data-dir", dataDir.path, "--project", "\(clientId):\(clientSecret)",
        ]
        let stdout = Pipe()
        process.standardOutput = stdout
        try process.run()

        // The first line is `listening on http://ADDR`.
        let reader = stdout.fileHandleForReading
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = reader.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let first = String(decoding: line, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        guard first.hasPrefix("listening on http://") else {
            process.terminate()
            throw NSError(domain: "TestServer", code: 1, userInfo: [NSLocalizedDescriptionKey: "unexpected first line: \(first)"])
        }
        url = String(first.dropFirst("listening on ".count))
        // Keep reading so the server never blocks on a full pipe.
        DispatchQueue.global().async {
            while !reader.availableData.isEmpty {}
        }
    }

    /// The project's stored events through the read API (SPEC §8), without the `session_start`
    /// events the server adds (SPEC §6).
    func events() throws -> [[String: Any]] {
        var all: [[String: Any]] = []
        var cursor: String?
        repeat {
            var query = "limit=1000"
            if let cursor { query += "&cursor=" + (cursor.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? cursor) }
            let page = try get("/api/events?\(query)")
            all += page["events"] as? [[String: Any]] ?? []
            cursor = page["next_cursor"] as? String
        } while cursor != nil
        return all.filter { $0["name"] as? String != "session_start" }
    }

    private func get(_ path: String) throws -> [String: Any] {
        var request = URLRequest(url: URL(string: url + path)!)
        request.setValue(clientId, forHTTPHeaderField: "openpanel-client-id")
        request.setValue(clientSecret, forHTTPHeaderField: "openpanel-client-secret")
        let done = DispatchSemaphore(value: 0)
        let answer = Locked<(Int, Data?)>((0, nil))
        URLSession.shared.dataTask(with: request) { data, response, _ in
            answer.with { $0 = ((response as? HTTPURLResponse)?.statusCode ?? 0, data) }
            done.signal()
        }.resume()
        done.wait()
        let (status, body) = answer.value
        guard status == 200, let body, let object = try JSONSerialization.jsonObject(with: body) as? [String: Any] else {
            throw NSError(domain: "TestServer", code: status, userInfo: [NSLocalizedDescriptionKey: "GET \(path): HTTP \(status)"])
        }
        return object
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: dataDir)
    }
}
