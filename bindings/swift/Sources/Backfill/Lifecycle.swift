import Foundation

#if canImport(Network)
    import Network

    /// Tells a ``Backfill`` whether the network is up, from `NWPathMonitor`: online when the path
    /// is satisfied, offline otherwise, so the SDK neither tries nor spends battery while offline.
    /// Keep the monitor as long as the client; ``stop()`` ends it.
    public final class NetworkMonitor: @unchecked Sendable {
        private let monitor = NWPathMonitor()

        /// Starts reporting path changes to `backfill`.
        public init(backfill: Backfill, queue: DispatchQueue = DispatchQueue(label: "dev.backfill.network")) {
            monitor.pathUpdateHandler = { [weak backfill] path in
                backfill?.setOnline(path.status == .satisfied)
            }
            monitor.start(queue: queue)
        }

        /// Stops the monitor.
        public func stop() {
            monitor.cancel()
        }

        deinit {
            monitor.cancel()
        }
    }
#endif

#if canImport(UIKit) && !os(watchOS)
    import UIKit

    /// Wires a ``Backfill`` into an iOS app's lifecycle. Create it once, e.g. in
    /// `application(_:didFinishLaunchingWithOptions:)`, and keep it:
    ///
    /// - on `didEnterBackgroundNotification`, it asks for background time with
    ///   `beginBackgroundTask` and drains within it (``Backfill/onBackground(deadline:)``, leaving
    ///   a margin before the system's limit), then ends the task; whatever is not sent stays
    ///   buffered for the next launch;
    /// - on `willEnterForegroundNotification`, ``Backfill/onForeground()`` drains what waits;
    /// - a ``NetworkMonitor`` keeps ``Backfill/setOnline(_:)`` true to the network.
    @MainActor
    public final class BackfillLifecycle {
        private let backfill: Backfill
        private let network: NetworkMonitor
        private var observers: [NSObjectProtocol] = []

        public init(backfill: Backfill) {
            self.backfill = backfill
            network = NetworkMonitor(backfill: backfill)
            let center = NotificationCenter.default
            observers.append(center.addObserver(
                forName: UIApplication.didEnterBackgroundNotification, object: nil, queue: .main
            ) { [weak self] _ in
                MainActor.assumeIsolated { self?.didEnterBackground() }
            })
            observers.append(center.addObserver(
                forName: UIApplication.willEnterForegroundNotification, object: nil, queue: .main
            ) { [weak self] _ in
                MainActor.assumeIsolated { self?.backfill.onForeground() }
            })
        }

        deinit {
            for observer in observers { NotificationCenter.default.removeObserver(observer) }
        }

        private func didEnterBackground() {
            let app = UIApplication.shared
            let task = BackgroundTask()
            // The expiration handler runs (on the main thread) if the drain outlives the granted
            // time: end the task so the app is suspended, not killed; the events stay buffered.
            task.id = app.beginBackgroundTask(withName: "dev.backfill.drain") {
                MainActor.assumeIsolated { task.end() }
            }
            // iOS grants about 30 s; keep 5 s of margin, and never wait past 25 s.
            let granted = app.backgroundTimeRemaining
            let deadline = max(1, min(granted.isFinite ? granted - 5 : 25, 25))
            let backfill = self.backfill
            Task.detached(priority: .utility) {
                _ = try? await backfill.onBackground(deadline: deadline)
                await task.end()
            }
        }
    }

    /// One `beginBackgroundTask` grant, ended once.
    @MainActor
    private final class BackgroundTask {
        var id = UIBackgroundTaskIdentifier.invalid

        func end() {
            guard id != .invalid else { return }
            UIApplication.shared.endBackgroundTask(id)
            id = .invalid
        }
    }
#endif
