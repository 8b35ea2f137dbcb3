import CZeroMQ
import Dispatch
import Foundation
import Logging
import Synchronization

/// A record that passed the frame checks, with the gap that preceded it, if any.
public struct ReceivedRecord: Sendable {
    public let envelope: DecodedEnvelope
    public let gap: SequenceGap?
}

public struct AnalysisReceiverConfiguration: Sendable {
    /// Where the PULL socket binds: `tcp://*:7101`, `tcp://127.0.0.1:*` (any free port), `ipc:///path`.
    public var endpoint: String
    /// libzmq's queue per connected sidecar (`ZMQ_RCVHWM`), in messages.
    public var receiveHighWaterMark: Int32 = 100_000
    /// A peer that sends a larger message is disconnected by libzmq (`ZMQ_MAXMSGSIZE`).
    public var maxMessageSize: Int64 = 64 << 20
    /// Sidecar boots whose sequence numbers are tracked at once.
    public var maxTrackedStreams: Int = 10_000
    /// Where an earlier run left each stream (a collector saves them and resumes): records missed
    /// in between then count as missing, and those the earlier run received don't.
    public var resumeFrom: [SequenceResumePoint] = []

    public init(endpoint: String) {
        self.endpoint = endpoint
    }
}

/// What the receiver has seen since it started.
public struct ReceiverStats: Sendable, Equatable {
    /// Valid records handed to the handler.
    public var received: UInt64 = 0
    /// Messages refused, by reason.
    public var rejected: [FrameRejection: UInt64] = [:]
    /// Peers that connected, disconnected, or failed the ZeroMQ handshake (not a ZeroMQ peer,
    /// or not a compatible one).
    public var connectionsAccepted: UInt64 = 0
    public var disconnects: UInt64 = 0
    public var handshakeFailures: UInt64 = 0
    /// Sequence accounting per (sidecar id, boot id).
    public var streams: [SequenceStreamStats] = []

    public var totalRejected: UInt64 { rejected.values.reduce(0, +) }
    public var totalMissing: UInt64 { streams.reduce(0) { $0 + $1.missing } }
}

/// Receives analysis records on a PULL socket, on a thread of its own.
///
/// Every message is checked (marker, version, protobuf, required fields); one that fails is
/// counted by reason, logged, and skipped, and the next is read as if nothing happened. Valid
/// records go to `handler`, called on the receiver's thread, one at a time and in arrival order:
/// a slow handler slows receiving, so hand heavy work on.
public final class AnalysisReceiver: Sendable {
    public let configuration: AnalysisReceiverConfiguration
    /// The bound endpoint with any wildcard port resolved, for peers to connect to.
    public let boundEndpoint: String
    private let core: Core

    public init(
        configuration: AnalysisReceiverConfiguration,
        logger: Logger,
        handler: @escaping @Sendable (ReceivedRecord) -> Void
    ) throws {
        self.configuration = configuration
        let core = Core(logger: logger, handler: handler, maxStreams: configuration.maxTrackedStreams)
        core.state.withLock { state in
            for point in configuration.resumeFrom { state.tracker.resume(point) }
        }
        self.core = core

        boundEndpoint = try core.worker.start { ready in
            core.runIOThread(configuration: configuration) { result in ready(result.mapError { $0 }) }
        }
        logger.info("analysis receiver listening", metadata: ["endpoint": "\(boundEndpoint)"])
    }

    public var stats: ReceiverStats {
        core.state.withLock { state in
            var stats = state.stats
            stats.streams = state.tracker.allStreams
            return stats
        }
    }

    /// Stops receiving and closes the socket. Records libzmq already holds are not delivered.
    /// Blocks for at most about 100 ms; calling it again does nothing more.
    public func shutdown() {
        let first = !core.stopping.exchange(true, ordering: .acquiringAndReleasing)
        core.worker.join()
        if first {
            core.logger.info("analysis receiver stopped", metadata: ["received": "\(stats.received)"])
        }
    }
}

extension AnalysisReceiver {
    /// What the receiver's thread works with, made before the thread starts.
    fileprivate final class Core: Sendable {
        let logger: Logger
        let handler: @Sendable (ReceivedRecord) -> Void
        let state: Mutex<State>
        let stopping = Atomic<Bool>(false)
        /// The thread: it stops polling once `stopping` is set (within 100 ms), and is joined
        /// once it has closed its sockets.
        let worker: WorkerThread

        struct State: Sendable {
            var stats = ReceiverStats()
            var tracker: SequenceTracker
        }

        init(logger: Logger, handler: @escaping @Sendable (ReceivedRecord) -> Void, maxStreams: Int) {
            self.logger = logger
            self.handler = handler
            self.state = Mutex(State(tracker: SequenceTracker(maxStreams: maxStreams)))
            worker = WorkerThread(name: "llmtap-receiver")
        }

        /// The thread's whole life: it owns the context and both sockets.
        func runIOThread(configuration: AnalysisReceiverConfiguration, started: (Result<String, ZMQError>) -> Void) {
            let context: ZMQContext
            let pull: ZMQSocket
            let monitor: ZMQSocket
            do {
                context = try ZMQContext()
                pull = try ZMQSocket(context: context, kind: .pull)
                try pull.set(.receiveHighWaterMark(configuration.receiveHighWaterMark))
                try pull.set(.maxMessageSize(configuration.maxMessageSize))
                try pull.set(.linger(milliseconds: 0))
                let monitorEndpoint = "inproc://llmtap-receiver-monitor-\(BootID.random())"
                try pull.monitor(monitorEndpoint, events: LinkEvent.mask)
                monitor = try ZMQSocket(context: context, kind: .pair)
                try monitor.set(.linger(milliseconds: 0))
                try monitor.connect(monitorEndpoint)
                try pull.bind(configuration.endpoint)
                started(.success(try pull.lastEndpoint()))
            } catch {
                started(.failure(error))
                return
            }
            var decoder = EnvelopeDecoder()
            receiveLoop(pull: pull, monitor: monitor, decoder: &decoder)
            pull.close()
            monitor.close()
            withExtendedLifetime(context) {}
        }

        func receiveLoop(pull: ZMQSocket, monitor: ZMQSocket, decoder: inout EnvelopeDecoder) {
            // Read up to this many messages per wakeup before checking for shutdown and link events.
            let burst = 1024
            while !stopping.load(ordering: .acquiring) {
                let ready: [ZMQSocket.Events]
                do {
                    ready = try ZMQSocket.poll([(pull, .readable), (monitor, .readable)], timeoutMilliseconds: 100)
                } catch {
                    logger.error(
                        "polling the analysis socket failed; stopping the receiver", metadata: ["error": "\(error)"])
                    return
                }
                if ready[1].contains(.readable) { readLinkEvents(monitor) }
                guard ready[0].contains(.readable) else { continue }
                for _ in 0..<burst {
                    do {
                        guard try receiveOne(pull, decoder: &decoder) else { break }
                    } catch {
                        logger.error(
                            "receiving on the analysis socket failed; stopping the receiver",
                            metadata: ["error": "\(error)"])
                        return
                    }
                }
            }
        }

        /// Reads one message if one is waiting. Returns `false` when none was.
        func receiveOne(_ pull: ZMQSocket, decoder: inout EnvelopeDecoder) throws(ZMQError) -> Bool {
            // Everything happens inside the closure, on the received bytes, so the decoded record
            // is handed on once rather than copied out through return values.
            let outcome = try pull.receiveFrame(dontWait: true) { bytes, more -> FrameOutcome in
                if more { return .multipart }
                switch decoder.decode(bytes) {
                case .failure(let error):
                    return .refused(error)
                case .success(let envelope):
                    deliver(envelope)
                    return .delivered
                }
            }
            switch outcome {
            case nil:
                return false
            case .delivered:
                break
            case .refused(let error):
                reject(error)
            case .multipart:
                try pull.discardRemainingFrames()
                reject(WireFrameError(.unexpectedMultipart, "a record is one frame; this message had more"))
            }
            return true
        }

        enum FrameOutcome {
            case delivered
            case refused(WireFrameError)
            case multipart
        }

        func deliver(_ envelope: DecodedEnvelope) {
            let gap = state.withLock { state -> SequenceGap? in
                state.stats.received += 1
                let observation = state.tracker.observe(
                    sidecarID: envelope.sidecarID, bootID: envelope.bootID,
                    seq: envelope.seq, droppedBefore: envelope.droppedBefore
                )
                if case .gap(let gap) = observation { return gap }
                return nil
            }
            if let gap {
                logger.warning(
                    "analysis records missing",
                    metadata: [
                        "sidecar": "\(gap.sidecarID)", "boot_id": "\(gap.bootID)",
                        "first_missing": "\(gap.firstMissing)", "last_missing": "\(gap.lastMissing)",
                        "dropped_by_sidecar": "\(gap.droppedBySender)", "lost_in_transit": "\(gap.lostInTransit)",
                    ])
            }
            handler(ReceivedRecord(envelope: envelope, gap: gap))
        }

        func reject(_ error: WireFrameError) {
            let count = state.withLock { state -> UInt64 in
                let count = state.stats.rejected[error.rejection, default: 0] + 1
                state.stats.rejected[error.rejection] = count
                return count
            }
            if LogSampling.isWorthLogging(occurrence: count) {
                logger.warning(
                    "rejected a message on the analysis socket",
                    metadata: [
                        "reason": "\(error.rejection)", "detail": "\(error.detail)", "count": "\(count)",
                    ])
            }
        }

        func readLinkEvents(_ monitor: ZMQSocket) {
            while let frames = try? monitor.receiveMultipart(dontWait: true) {
                guard let event = LinkEvent(monitorFrames: frames) else { continue }
                state.withLock { state in
                    switch event.kind {
                    case .accepted: state.stats.connectionsAccepted += 1
                    case .disconnected: state.stats.disconnects += 1
                    case .handshakeFailed: state.stats.handshakeFailures += 1
                    }
                }
                switch event.kind {
                case .handshakeFailed:
                    logger.warning(
                        "a peer on the analysis socket failed the ZeroMQ handshake (not a ZeroMQ peer?)",
                        metadata: [
                            "endpoint": "\(event.endpoint)", "zmq_event": "\(event.rawEvent)",
                        ])
                case .accepted, .disconnected:
                    logger.debug("analysis link \(event.kind)", metadata: ["endpoint": "\(event.endpoint)"])
                }
            }
        }
    }
}

/// One event from libzmq's socket monitor: two frames, (uint16 event, uint32 value) then the endpoint.
struct LinkEvent {
    enum Kind { case accepted, disconnected, handshakeFailed }

    static let mask: Int32 =
        ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED
        | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH

    let kind: Kind
    let rawEvent: UInt16
    let endpoint: String

    init?(monitorFrames frames: [[UInt8]]) {
        guard frames.count == 2, frames[0].count >= 6 else { return nil }
        let event = UInt16(frames[0][0]) | UInt16(frames[0][1]) << 8
        switch Int32(event) {
        case ZMQ_EVENT_ACCEPTED: kind = .accepted
        case ZMQ_EVENT_DISCONNECTED: kind = .disconnected
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
            kind = .handshakeFailed
        default: return nil
        }
        rawEvent = event
        endpoint = String(decoding: frames[1], as: UTF8.self)
    }
}
