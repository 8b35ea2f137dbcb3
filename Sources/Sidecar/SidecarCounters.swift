import Synchronization
import Wire

/// The sidecar's own gauges and counters, read by the heartbeat. Touched from every event loop.
final class SidecarCounters: Sendable {
    let inFlight = Atomic<Int>(0)
    let openConnections = Atomic<Int>(0)
    let malformedRequests = Atomic<UInt64>(0)
    let policyRejections = Atomic<UInt64>(0)
    /// Connections closed at accept because `--max-connections` were open.
    let refusedConnections = Atomic<UInt64>(0)
    /// Exchanges ended because their client stopped reading the response.
    let stalledClients = Atomic<UInt64>(0)
    private let nextExchange = Atomic<UInt64>(0)
    private let exchangePrefix: String
    private static let hexDigits = Array("0123456789abcdef".utf8)

    init(bootID: String) {
        exchangePrefix = String(bootID.prefix(8))
    }

    /// Unique within this boot, and across boots by the boot id's prefix: `3f2a9c0d-00000000001a`.
    func makeExchangeID() -> String {
        let number = nextExchange.add(1, ordering: .relaxed).newValue
        // Written into one string of known size: this runs for every request.
        let digits = max(12, (64 - number.leadingZeroBitCount + 3) / 4)
        let prefix = exchangePrefix.utf8
        return String(unsafeUninitializedCapacity: prefix.count + 1 + digits) { out in
            var index = 0
            for byte in prefix {
                out[index] = byte
                index += 1
            }
            out[index] = UInt8(ascii: "-")
            for shift in stride(from: (digits - 1) * 4, through: 0, by: -4) {
                index += 1
                out[index] = Self.hexDigits[Int((number >> UInt64(shift)) & 0xF)]
            }
            return index + 1
        }
    }
}
