/// When a starting process is up: all its listeners accept and, after a hot upgrade with
/// `--policy`, its first policy snapshot is in (or the wait for one ended). Each event returns
/// what to do now; `.ready` or `.readyWithoutPolicy` comes once.
struct Readiness: Sendable {
    enum Action: Equatable, Sendable {
        case wait
        case ready
        /// Up, but the wait for the first policy snapshot ended before it came.
        case readyWithoutPolicy
    }

    /// Set by `expect`: before it, nothing is up.
    private var expected = false
    private var listeners = 0
    private var needsPolicy = false
    private var hasPolicy = false
    private var done = false

    /// What must be up: `listeners` listeners, and the policy snapshot when `policy`.
    mutating func expect(listeners: Int, policy: Bool) -> Action {
        expected = true
        self.listeners = listeners
        needsPolicy = policy
        return check()
    }

    mutating func listenerUp() -> Action {
        listeners -= 1
        return check()
    }

    /// The first policy snapshot is in the table (perhaps before `expect`).
    mutating func policyArrived() -> Action {
        hasPolicy = true
        return check()
    }

    /// The wait for the first snapshot is over: the process comes up without it.
    mutating func policyWaitEnded() -> Action {
        guard needsPolicy, !hasPolicy else { return .wait }
        needsPolicy = false
        return check() == .ready ? .readyWithoutPolicy : .wait
    }

    private mutating func check() -> Action {
        guard expected, !done, listeners == 0, hasPolicy || !needsPolicy else { return .wait }
        done = true
        return .ready
    }
}
