import Logging
import Synchronization
import Wire

/// Which sidecar boots have been heard from, and what their last heartbeat said.
/// The [collector] issue grows this into per-sidecar link-health metrics.
final class SidecarLinks: Sendable {
    private let logger: Logger
    private let lastHeartbeat = Mutex<[String: WireHeartbeat]>([:])

    init(logger: Logger) {
        self.logger = logger
    }

    /// Called on the receiver's thread for every record.
    func observe(_ received: ReceivedRecord) {
        guard case .heartbeat(let beat) = received.envelope.record else { return }
        let key = "\(received.envelope.sidecarID)/\(received.envelope.bootID)"
        let isNewBoot = lastHeartbeat.withLock { $0.updateValue(beat, forKey: key) == nil }
        let metadata: Logger.Metadata = [
            "sidecar": "\(received.envelope.sidecarID)", "boot_id": "\(received.envelope.bootID)",
            "app": "\(beat.app)", "mode": "\(beat.mode)", "version": "\(beat.version)",
            "published": "\(beat.published)", "dropped": "\(beat.dropped)", "queue_depth": "\(beat.queueDepth)",
        ]
        if isNewBoot {
            logger.info("sidecar connected", metadata: metadata)
        } else {
            logger.debug("sidecar heartbeat", metadata: metadata)
        }
    }
}
