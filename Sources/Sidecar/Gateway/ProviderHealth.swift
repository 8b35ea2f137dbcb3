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
    /// `state.downUntil` (0 for none), written under the lock: every request reads it, and a
    /// provider that is up answers without a lock or a write to memory both event loops share.
    private let downUntil = Atomic<UInt64>(0)

    func isAvailable(now: UInt64) -> Bool {
        let until = downUntil.load(ordering: .acquiring)
        return until == 0 || now >= until
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
            downUntil.store(now + coolDown, ordering: .releasing)
            return wasUp ? .down(failures: state.failures, coolDownSeconds: Int(coolDown / 1_000_000_000)) : nil
        }
    }

    /// A good answer: a change when it was out.
    func succeeded() -> Change? {
        // Up, with no failure in a row (a failure always sets `downUntil`): nothing to reset.
        guard downUntil.load(ordering: .acquiring) != 0 else { return nil }
        return state.withLock { state in
            let wasDown = state.downUntil != nil
            state = State()
            downUntil.store(0, ordering: .releasing)
            return wasDown ? .up : nil
        }
    }
}
