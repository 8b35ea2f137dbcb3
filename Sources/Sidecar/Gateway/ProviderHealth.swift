import Synchronization

/// Whether a provider takes requests, from what its requests saw (passive checks): a connect or
/// TLS failure, a timeout or a 5xx answer takes it out for a cool-down that doubles with each
/// failure in a row (1 s, 2 s, 4 s, up to 60 s); any good answer brings it back. When a cool-down
/// ends the next request tries it again, and a failure then takes it out for longer. Times are
/// uptime nanoseconds, given by the caller.
final class ProviderHealth: Sendable {
    enum Change: Equatable, Sendable {
        /// It just went out, after this many failures in a row, for this long.
        case down(failures: Int, coolDownSeconds: Int)
        case up
    }

    static let firstCoolDownNanos: UInt64 = 1_000_000_000
    static let longestCoolDownNanos: UInt64 = 60_000_000_000

    private struct State {
        var failures = 0
        var downUntil: UInt64?
    }

    private let state = Mutex(State())

    func isAvailable(now: UInt64) -> Bool {
        state.withLock { state in state.downUntil.map { now >= $0 } ?? true }
    }

    /// Whether it is out (cooling down, or waiting for a good answer after one), and its failures
    /// in a row, read together (for the heartbeat).
    var snapshot: (isDown: Bool, failures: Int) { state.withLock { ($0.downUntil != nil, $0.failures) } }

    /// A failure: a change when it was up until now.
    func failed(now: UInt64) -> Change? {
        state.withLock { state in
            state.failures += 1
            let shift = UInt64(min(state.failures - 1, 6))
            let coolDown = min(Self.firstCoolDownNanos << shift, Self.longestCoolDownNanos)
            let wasUp = state.downUntil == nil
            state.downUntil = now + coolDown
            return wasUp ? .down(failures: state.failures, coolDownSeconds: Int(coolDown / 1_000_000_000)) : nil
        }
    }

    /// A good answer: a change when it was out.
    func succeeded() -> Change? {
        state.withLock { state in
            let wasDown = state.downUntil != nil
            state = State()
            return wasDown ? .up : nil
        }
    }
}
