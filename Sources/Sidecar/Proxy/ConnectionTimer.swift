import NIOCore

/// One timer of a client connection, not one per exchange: when it fires, the handler asks the
/// state machine what is due, and sets it again only while something is. Setting and cancelling a
/// timer for every request costs more than the request's own bookkeeping.
struct ConnectionTimer {
    private var scheduled: Scheduled<Void>?
    private var deadline = NIODeadline.distantFuture

    /// Whether it must be set again to fire by `deadline`. Deadlines are at most --client-timeout
    /// ahead, so one under way is almost always soon enough (and no closure is made per request).
    func firesTooLate(for deadline: NIODeadline) -> Bool {
        scheduled == nil || self.deadline > deadline
    }

    /// Sets it for `deadline`, whatever it was set for.
    mutating func set(at deadline: NIODeadline, on loop: any EventLoop, _ fire: @escaping () -> Void) {
        scheduled?.cancel()
        self.deadline = deadline
        scheduled = loop.assumeIsolated().scheduleTask(deadline: deadline, fire)
    }

    var isSet: Bool { scheduled != nil }

    /// Called first thing when it fires: it is no longer set.
    mutating func fired() {
        scheduled = nil
        deadline = .distantFuture
    }

    mutating func cancel() {
        scheduled?.cancel()
        fired()
    }
}
