import Foundation
import Logging
import Wire

/// The policy channel's sending side: the XPUB socket the collector binds (`--listen-policy`).
/// Deltas and beats go to every sidecar on the broadcast topic; a sidecar that subscribes to
/// "S" + nonce gets the whole state on that topic. Owned by the engine's thread, like its socket.
final class PolicyBroadcaster {
    let boundEndpoint: String
    private let socket: ZMQSocket
    private let collectorID = UUID().uuidString.lowercased()
    private let metrics: CollectorMetrics
    private let logger: Logger
    private let snapshotsPerSecond: Double
    /// How many snapshots may go out now.
    private var snapshotBudget: RateBudget
    private var snapshotsRefused = 0
    private var refusalPasses: UInt64 = 0

    init(endpoint: String, snapshotsPerSecond: Double, snapshotBurst: Double, metrics: CollectorMetrics, logger: Logger)
        throws
    {
        self.metrics = metrics
        self.logger = logger
        self.snapshotsPerSecond = snapshotsPerSecond
        snapshotBudget = RateBudget(perSecond: snapshotsPerSecond, burst: snapshotBurst, now: .now)
        let context = try ZMQContext()
        socket = try ZMQSocket(context: context, kind: .xpub)
        try socket.set(.xpubVerbose(true))
        try socket.set(.linger(milliseconds: 0))
        // Snapshots of a large key table are big; a slow sidecar's queue is bounded by bytes in the
        // kernel and by this many messages here, past which PUB drops (the sidecar then sees a gap).
        try socket.set(.sendHighWaterMark(10_000))
        try socket.bind(endpoint)
        boundEndpoint = try socket.lastEndpoint()
    }

    /// Waits up to `timeoutMilliseconds` for a subscription, or for `wakeup` to be readable;
    /// true when `wakeup` is.
    func poll(orReadable wakeup: Int32, timeoutMilliseconds: Int) -> Bool {
        (try? socket.poll(.readable, orReadable: wakeup, timeoutMilliseconds: timeoutMilliseconds))?.fdReadable
            ?? false
    }

    /// Answers every snapshot subscription that arrived. The snapshot (`state()` at `version`) is
    /// made and encoded once for all the subscriptions of one pass, and their number is held to a
    /// budget: each costs the whole key table.
    func serveSubscriptions(version: UInt64, state: () -> (keys: [PolicyKey], projects: [PolicyProject])) {
        var encoded: [UInt8]?
        var refused = 0
        while let frames = try? socket.receiveMultipart(dontWait: true) {
            guard let event = frames.first, event.count >= 2, event[0] == 1, event[1] == PolicyFrame.snapshotTopicPrefix
            else { continue }
            guard snapshotBudget.take(now: .now) else {
                refused += 1
                continue
            }
            if encoded == nil {
                var message = header(version: version, full: true)
                (message.keys, message.projects) = state()
                encoded = try? PolicyFrame.encode(message)
            }
            guard let encoded else { continue }
            do {
                try socket.send(multipart: [Array(event[1...]), encoded], dontWait: true)
            } catch {
                logger.error("could not send on the policy socket", metadata: ["error": "\(error)"])
            }
            metrics.policySnapshotSent()
        }
        if refused > 0 {
            metrics.policySnapshotsRefused(refused)
            snapshotsRefused += refused
            refusalPasses += 1
            if LogSampling.isWorthLogging(occurrence: refusalPasses) {
                logger.warning(
                    "snapshot subscriptions past the budget were refused (a peer subscribing over and over?)",
                    metadata: ["refused": "\(snapshotsRefused)", "per_second": "\(snapshotsPerSecond)"])
            }
        }
    }

    /// The version, announced so a sidecar that missed a change notices.
    func beat(version: UInt64) {
        send(header(version: version, full: false))
    }

    /// One change: from `version - 1` to `version`.
    func publish(version: UInt64, keys: [PolicyKey], projects: [PolicyProject], removed: [String]) {
        var message = header(version: version, full: false)
        message.baseVersion = version - 1
        message.keys = keys
        message.projects = projects
        message.removedProjects = removed
        send(message)
    }

    func close() {
        socket.close()
    }

    private func header(version: UInt64, full: Bool) -> PolicyMessage {
        var message = PolicyMessage()
        message.collectorID = collectorID
        message.version = version
        message.baseVersion = full ? 0 : version
        message.full = full
        message.sentUnixNanos = WallClock.nowUnixNanos()
        return message
    }

    private func send(_ message: PolicyMessage) {
        do {
            try socket.send(multipart: [PolicyFrame.broadcastTopic, try PolicyFrame.encode(message)], dontWait: true)
        } catch {
            logger.error("could not send on the policy socket", metadata: ["error": "\(error)"])
        }
    }
}

/// A token bucket: `perSecond` tokens a second, at most `burst` held. Pure: time is passed in.
struct RateBudget {
    let perSecond: Double
    let burst: Double
    private var tokens: Double
    private var at: ContinuousClock.Instant

    init(perSecond: Double, burst: Double, now: ContinuousClock.Instant) {
        self.perSecond = perSecond
        self.burst = burst
        self.tokens = burst
        self.at = now
    }

    /// Takes one token if there is one.
    mutating func take(now: ContinuousClock.Instant) -> Bool {
        let elapsed = now - at
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        tokens = min(burst, tokens + max(0, seconds) * perSecond)
        at = max(at, now)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
