import Foundation
import Logging
import Synchronization
import Wire

/// Keeps the sidecar's policy table current from the collector's policy channel, on a thread of
/// its own that owns the SUB socket.
///
/// It subscribes to the broadcast topic and to a snapshot topic of its own ("S" + a nonce). The
/// collector answers each new snapshot subscription with the whole state, so joining, rejoining
/// after a disconnect (ZeroMQ re-sends subscriptions) and recovering from a missed change are one
/// mechanism: a gap in versions, or no snapshot within a second, makes it subscribe under a new nonce.
final class PolicySubscriber: Sendable {
    private final class Shared: Sendable {
        let closing = Atomic<Bool>(false)
    }

    private let shared = Shared()
    /// Polls its socket with a timeout, and stops once `shared.closing` is set.
    private let worker: WorkerThread

    /// `firstSnapshot` is called once, on this thread, when the first whole state is in the gate.
    init(
        endpoint: String, bootID: String, gate: PolicyGate, credentials: UpstreamCredentials,
        firstSnapshot: @escaping @Sendable () -> Void = {}, logger: Logger
    ) throws {
        // Connect errors (a malformed endpoint) surface here, before the thread starts.
        let context = try ZMQContext()
        let probe = try ZMQSocket(context: context, kind: .sub)
        try probe.connect(endpoint)
        probe.close()
        worker = WorkerThread(name: "llmtap-policy")
        // Up at once: a collector away is not an error (the sidecar answers 503 meanwhile).
        worker.start { [shared] in
            Self.run(
                endpoint: endpoint, bootID: bootID, gate: gate, credentials: credentials, shared: shared,
                firstSnapshot: firstSnapshot, logger: logger)
        }
    }

    func shutdown() {
        shared.closing.store(true, ordering: .relaxed)
        worker.join()
    }

    private static func run(
        endpoint: String, bootID: String, gate: PolicyGate, credentials: UpstreamCredentials, shared: Shared,
        firstSnapshot: @Sendable () -> Void, logger: Logger
    ) {
        let socket: ZMQSocket
        do {
            let context = try ZMQContext()
            socket = try ZMQSocket(context: context, kind: .sub)
            try socket.set(.linger(milliseconds: 0))
            try socket.set(.reconnectInterval(milliseconds: 100))
            try socket.set(.reconnectIntervalMax(milliseconds: 500))
            // A snapshot of a very large key table is still far below this; anything bigger is not ours.
            try socket.set(.maxMessageSize(256 << 20))
            try socket.set(.subscribe(PolicyFrame.broadcastTopic))
            try socket.connect(endpoint)
        } catch {
            logger.critical(
                "the policy socket could not be set up; virtual-key requests get 503", metadata: ["error": "\(error)"])
            return
        }
        var replica = PolicyReplica()
        var installedSnapshot = false
        var nonceCounter = 0
        var snapshotTopic: [UInt8] = []
        var askedAt = ContinuousClock.now
        var lastMessage = ContinuousClock.now
        var linkStale = false
        var rejectedFrames: UInt64 = 0
        func rejected(_ why: String) {
            rejectedFrames += 1
            if LogSampling.isWorthLogging(occurrence: rejectedFrames) {
                logger.warning("refused a policy message", metadata: ["error": "\(why)", "count": "\(rejectedFrames)"])
            }
        }

        func askForSnapshot() {
            if !snapshotTopic.isEmpty { try? socket.set(.unsubscribe(snapshotTopic)) }
            nonceCounter += 1
            snapshotTopic = PolicyFrame.snapshotTopic(nonce: "\(bootID)-\(nonceCounter)")
            try? socket.set(.subscribe(snapshotTopic))
            askedAt = .now
        }
        askForSnapshot()

        while !shared.closing.load(ordering: .relaxed) {
            var batch: [[[UInt8]]] = []
            do {
                // What arrived together is applied together: one table is built for a burst of changes.
                if let first = try socket.receiveMultipart(timeoutMilliseconds: 50) {
                    batch.append(first)
                    while batch.count < 10_000, let more = try socket.receiveMultipart(dontWait: true) {
                        batch.append(more)
                    }
                }
            } catch {
                logger.error("policy socket receive failed", metadata: ["error": "\(error)"])
                usleep(50_000)
                continue
            }
            let now = ContinuousClock.now
            var changed = false
            for frames in batch {
                guard frames.count == 2 else {
                    rejected("a policy message of \(frames.count) frames (expected 2)")
                    continue
                }
                let message: PolicyMessage
                switch PolicyFrame.decode(frames[1]) {
                case .success(let decoded): message = decoded
                case .failure(let error):
                    rejected("\(error)")
                    continue
                }
                lastMessage = now
                if linkStale {
                    linkStale = false
                    logger.notice("the policy channel is back", metadata: ["policy": "\(endpoint)"])
                }
                // A snapshot meant for an earlier nonce of ours is still a whole state: take it.
                let hadSnapshot = replica.hasSnapshot
                switch replica.apply(message) {
                case .applied:
                    changed = true
                    if message.full {
                        logger.log(
                            level: hadSnapshot ? .debug : .notice, "policy snapshot received",
                            metadata: [
                                "version": "\(replica.version)", "keys": "\(replica.keys.count)",
                                "projects": "\(replica.projects.count)",
                                "missing_credentials":
                                    "\(Set(replica.projects.values.map(\.credentialRef)).filter { credentials.secret(for: $0) == nil }.sorted())",
                            ])
                    }
                case .unchanged:
                    break
                case .needsSnapshot:
                    // Ask again only when the last ask has had time to be answered.
                    if now - askedAt >= .milliseconds(replica.hasSnapshot ? 200 : 1000) {
                        logger.debug(
                            "policy version gap; asking for a snapshot",
                            metadata: ["have": "\(replica.version)", "got": "\(message.version)"])
                        askForSnapshot()
                    }
                }
            }
            if changed { gate.install(PolicyTable(replica, credentials: credentials)) }
            if changed && replica.hasSnapshot && !installedSnapshot {
                installedSnapshot = true
                firstSnapshot()
            }
            if !replica.hasSnapshot && now - askedAt >= .seconds(1) {
                askForSnapshot()
            }
            if !linkStale && now - lastMessage >= .seconds(3) {
                linkStale = true
                logger.warning(
                    "no policy message for 3 s: keeping the last policy (expiry still applies) until the collector is back",
                    metadata: [
                        "policy": "\(endpoint)", "version": "\(replica.version)",
                    ])
            }
        }
        socket.close()
    }
}
