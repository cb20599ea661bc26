import Foundation

/// How to reach the server and where to buffer. Only `endpoint`, `clientId`, `clientSecret` and
/// `databasePath` are required; every other setting is `nil` for the core's default (given in each
/// doc). Times are in milliseconds, sizes in bytes. Checked when the client opens: a value out of
/// range throws ``BackfillError/invalidArgument(_:)`` naming it.
public struct BackfillConfig: Sendable, Equatable {
    /// Base URL of the server, e.g. `https://ingest.example.com`.
    public var endpoint: String
    /// The project's client id (a UUID; SPEC §1).
    public var clientId: String
    /// The project's client secret, for a client in `write` mode.
    public var clientSecret: String
    /// Path of the SQLite buffer file, created with its folder when missing; on iOS a file in
    /// Application Support, excluded from backups.
    public var databasePath: String
    /// This device's id (1 to 64 characters); default: a random id generated once and kept.
    public var deviceId: String?
    /// Buffered events that start a background drain. Default 200.
    public var flushThreshold: UInt64?
    /// Time between background drains while events wait, in ms. Default 30,000.
    public var flushIntervalMs: UInt64?
    /// Most events per request, 1 to 2000. Default 2000.
    public var maxBatchEvents: UInt32?
    /// Most buffered events; past it the oldest are evicted and counted. Default 1,000,000.
    public var maxBufferEvents: UInt64?
    /// Most buffered bytes; past it the oldest are evicted and counted. Default 512 MiB.
    public var maxBufferBytes: UInt64?
    /// Hard cap on the buffer file's size; recording fails with a storage error past it.
    public var maxDatabaseBytes: UInt64?
    /// A client session ends after this long without events, in ms. Default 30 minutes.
    public var sessionTimeoutMs: UInt64?
    /// Drain in the background (threshold, interval, back online). Default true.
    public var backgroundUpload: Bool?

    public init(
        endpoint: String, clientId: String, clientSecret: String, databasePath: String,
        deviceId: String? = nil, flushThreshold: UInt64? = nil, flushIntervalMs: UInt64? = nil,
        maxBatchEvents: UInt32? = nil, maxBufferEvents: UInt64? = nil,
        maxBufferBytes: UInt64? = nil, maxDatabaseBytes: UInt64? = nil,
        sessionTimeoutMs: UInt64? = nil, backgroundUpload: Bool? = nil
    ) {
        self.endpoint = endpoint
        self.clientId = clientId
        self.clientSecret = clientSecret
        self.databasePath = databasePath
        self.deviceId = deviceId
        self.flushThreshold = flushThreshold
        self.flushIntervalMs = flushIntervalMs
        self.maxBatchEvents = maxBatchEvents
        self.maxBufferEvents = maxBufferEvents
        self.maxBufferBytes = maxBufferBytes
        self.maxDatabaseBytes = maxDatabaseBytes
        self.sessionTimeoutMs = sessionTimeoutMs
        self.backgroundUpload = backgroundUpload
    }
}

/// Why a call failed. Nothing is lost by an error: an event either was committed to the buffer
/// (the call returned) or was not (it threw).
public enum BackfillError: Error, Equatable, LocalizedError {
    /// A bad argument: an event the server would refuse (name, properties, timestamp, size), a
    /// property of an unsupported type, a setting out of range, or credentials the server
    /// refused. Fix the call or the config; retrying as is fails the same way.
    case invalidArgument(String)
    /// The on-device buffer could not be written or read (disk full, damaged file).
    case storage(String)
    /// The client was closed; open a new one.
    case closed
    /// The network or the HTTP client failed during a call that sends.
    case network(String)
    /// Anything else.
    case other(String)

    public var errorDescription: String? {
        switch self {
        case .invalidArgument(let m), .storage(let m), .network(let m), .other(let m): return m
        case .closed: return "the Backfill client is closed"
        }
    }
}

/// How a drain ended.
public enum DrainEnd: Sendable, Equatable {
    /// Nothing left to send.
    case empty
    /// The server or the network asked to wait (`429`, `503`, a network failure; SPEC §9); the
    /// rest stays buffered and the background uploader retries after `waitMs` milliseconds.
    case retryLater(waitMs: UInt64)
    /// The server refused the configuration (`401`/`403`); uploads are paused, the data kept.
    case stopped(status: Int)
    /// The answers say the endpoint is wrong (`404`, `405`, `410`, or a body that is not the
    /// contract's; SPEC §9): uploads are paused, the data kept. `reason` is what the server said.
    case misconfigured(reason: String)
}

/// What one drain did. Counts are events unless said otherwise.
public struct DrainReport: Sendable, Equatable {
    /// Events the server accepted (duplicates included); they are deleted from the buffer.
    public var sent: UInt64
    /// Of those, events the server already had (SPEC §5).
    public var duplicates: UInt64
    /// Events refused for good and kept in the bounded dead-letter table.
    public var deadLettered: UInt64
    /// Events dropped for being older than the server's age window.
    public var expired: UInt64
    /// Requests made.
    public var requests: UInt64
    /// Request body bytes on the wire (after compression).
    public var bytesSent: UInt64
    /// How it ended.
    public var end: DrainEnd
}

/// A snapshot of the buffer and the uploads. Counters run since the buffer file was created.
public struct BackfillStats: Sendable, Equatable {
    /// Events waiting in the buffer.
    public var buffered: UInt64
    /// Bytes of event JSON waiting in the buffer.
    public var bufferedBytes: UInt64
    /// Time of the oldest buffered event (epoch ms), if any.
    public var oldestEventMs: Int64?
    /// Events the server accepted (duplicates included).
    public var sent: UInt64
    /// Of those, events the server already had.
    public var duplicates: UInt64
    /// Events the server refused for good.
    public var deadLettered: UInt64
    /// Dead letters dropped to keep the dead-letter table within its bound (counted).
    public var deadLettersEvicted: UInt64
    /// Events dropped for falling out of the server's age window.
    public var expired: UInt64
    /// Events dropped to keep the buffer within its bounds.
    public var evicted: UInt64
    /// Requests sent.
    public var requests: UInt64
    /// Uploads are paused: the server refused the credentials.
    public var unauthorized: Bool
    /// Uploads are paused: the answers say the endpoint is wrong (`lastError` says why).
    public var misconfigured: Bool
    /// The user has opted out: nothing is recorded.
    public var optedOut: Bool
    /// The last error of an upload or of the storage, if any.
    public var lastError: String?
}
