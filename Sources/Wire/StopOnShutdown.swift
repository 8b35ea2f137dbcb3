import Foundation
import ServiceLifecycle

/// A part of a binary that runs on threads (or event loops) of its own and only needs stopping, as
/// a `Service`: it waits for the group's graceful shutdown (SIGTERM, SIGINT), then stops the part.
/// A `ServiceGroup` stops its services one at a time in the reverse of their order, so a binary's
/// shutdown order is written once: its list of services.
public struct StopOnShutdown: Service, CustomStringConvertible {
    public let description: String
    private let stop: @Sendable () async -> Void

    /// `stop` blocks (it joins threads): it runs on a thread of its own, not on the cooperative pool.
    public init(_ name: String, blocking stop: @escaping @Sendable () -> Void) {
        self.description = name
        self.stop = {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                Thread.detachNewThread {
                    stop()
                    continuation.resume()
                }
            }
        }
    }

    public init(_ name: String, async stop: @escaping @Sendable () async -> Void) {
        self.description = name
        self.stop = stop
    }

    public func run() async throws {
        // Cancelled rather than shut down gracefully: stop all the same.
        try? await gracefulShutdown()
        await stop()
    }
}
