import Synchronization
import Wire

/// The sidecar's own gauges and counters, read by the heartbeat. Touched from every event loop.
final class SidecarCounters: Sendable {
    let inFlight = Atomic<Int>(0)
    let openConnections = Atomic<Int>(0)
    let malformedRequests = Atomic<UInt64>(0)
    private let nextExchange = Atomic<UInt64>(0)
    private let exchangePrefix: String

    init(bootID: String) {
        exchangePrefix = String(bootID.prefix(8))
    }

    /// Unique within this boot, and across boots by the boot id's prefix: `3f2a9c0d-00000000001a`.
    func makeExchangeID() -> String {
        let number = nextExchange.add(1, ordering: .relaxed).newValue
        let hex = String(number, radix: 16)
        return exchangePrefix + "-" + String(repeating: "0", count: max(0, 12 - hex.count)) + hex
    }
}
