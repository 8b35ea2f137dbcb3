import CZeroMQ
import Dispatch
import Foundation
import Logging
import Synchronization

/// Publishes analysis records to the collector without ever making its caller wait.
///
/// `publish` may be called from any thread, event loops included: it fixes the record's sequence
/// number and appends it to a bounded queue under a short lock, and that is all. One dedicated
/// thread owns the PUSH socket, encodes each record and hands it to ZeroMQ. When the queue is full
/// (the collector is slow or away), `publish` drops the record and counts it; the gap in sequence
/// numbers and `Envelope.dropped_before` let the collector see exactly what was lost and where.
public final class AnalysisPublisher: Sendable {
    public let configuration: AnalysisPublisherConfiguration
    private let logger: Logger
    private let queue: Mutex<PublisherQueue>
    /// The I/O thread: woken when the queue stops being empty, or shutdown begins; joined once
    /// the socket and the context are gone, and libzmq done with its linger.
    private let worker: WorkerThread
    /// When shutdown began plus the linger: the I/O thread gives up on what remains after it.
    private let shutdownDeadline = Mutex<ContinuousClock.Instant?>(nil)

    /// Connects to the collector on a new thread. Throws when the endpoint is malformed or libzmq
    /// can't make the socket; a collector that is merely away is not an error.
    public init(configuration: AnalysisPublisherConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        self.queue = Mutex(
            PublisherQueue(
                maxRecords: configuration.maxQueuedRecords,
                maxBytes: configuration.maxQueuedBytes,
                wakeRecords: configuration.wakeRecords,
                wakeBytes: configuration.wakeBytes
            ))
        let encoder = try EnvelopeEncoder(sidecarID: configuration.sidecarID, bootID: configuration.bootID)
        worker = WorkerThread(name: "llmtap-publisher")
        try worker.start { [self] ready in
            runIOThread(encoder: encoder) { result in ready(result.mapError { $0 }) }
        }
        logger.debug(
            "analysis publisher started",
            metadata: [
                "endpoint": "\(configuration.endpoint)", "boot_id": "\(configuration.bootID)",
            ])
    }

    /// The I/O thread's whole life: it owns the context and the socket, so that closing them, and
    /// libzmq's linger, happen here and never on a caller's thread.
    private func runIOThread(encoder: EnvelopeEncoder, started: (Result<Void, ZMQError>) -> Void) {
        let context: ZMQContext
        let socket: ZMQSocket
        do {
            context = try ZMQContext()
            socket = try makeSocket(context: context)
        } catch {
            started(.failure(error))
            return
        }
        started(.success(()))
        drain(socket: socket, encoder: encoder)
        // What was handed to ZeroMQ may still sit in its buffers: give it the rest of the linger.
        let remaining = shutdownDeadline.withLock { $0 }.map { ContinuousClock.now.duration(to: $0) } ?? .zero
        try? socket.set(.linger(milliseconds: max(0, remaining.zmqMilliseconds)))
        socket.close()
        withExtendedLifetime(context) {}
    }

    private func makeSocket(context: ZMQContext) throws(ZMQError) -> ZMQSocket {
        let socket = try ZMQSocket(context: context, kind: .push)
        try socket.set(.sendHighWaterMark(configuration.sendHighWaterMark))
        // Queue only toward a live collector, so that while it is away the records wait in our
        // bounded, counted queue instead of in a libzmq buffer nobody can see.
        try socket.set(.immediate(true))
        try socket.set(.reconnectInterval(milliseconds: configuration.reconnectInterval.zmqMilliseconds))
        try socket.set(.reconnectIntervalMax(milliseconds: configuration.reconnectIntervalMax.zmqMilliseconds))
        try socket.connect(configuration.endpoint)
        return socket
    }

    /// Queues a record for the collector. Never blocks. Returns `false` when it was dropped
    /// (queue full, or shutting down); the drop is counted either way.
    @discardableResult
    public func publish(_ record: WireRecord) -> Bool {
        enqueue(.message(record), cost: record.estimatedCost)
    }

    /// Queues a record encoded already (on the caller's thread): the data path's way, since the
    /// I/O thread is then left with framing and sending only. Never blocks.
    @discardableResult
    public func publish(_ record: EncodedRecord) -> Bool {
        enqueue(.encoded(record), cost: record.bytes.count + 16)
    }

    private func enqueue(_ record: PublishedRecord, cost: Int) -> Bool {
        let result = queue.withLock { $0.enqueue(record, cost: cost) }
        switch result {
        case .accepted(let wakeConsumer):
            if wakeConsumer { worker.wake() }
            return true
        case .dropped:
            return false
        }
    }

    public var stats: PublisherStats {
        queue.withLock { $0.stats }
    }

    /// Stops accepting records, delivers what is queued within `shutdownLinger`, counts the rest
    /// as dropped, and closes the socket. Blocks for at most about the linger: don't call it on
    /// an event loop. Calling it again does nothing more.
    public func shutdown() {
        let linger = configuration.shutdownLinger
        let alreadyClosing = shutdownDeadline.withLock { deadline -> Bool in
            if deadline != nil { return true }
            deadline = .now + linger
            return false
        }
        if !alreadyClosing, queue.withLock({ $0.close() }) { worker.wake() }
        worker.join()
        if !alreadyClosing {
            let stats = self.stats
            logger.debug(
                "analysis publisher stopped",
                metadata: [
                    "published": "\(stats.published)", "dropped": "\(stats.dropped)",
                ])
        }
    }

    /// `shutdown()` for async code: the waiting happens on a thread of its own, not on the caller's executor.
    public func shutdownGracefully() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let thread = Thread { [self] in
                shutdown()
                continuation.resume()
            }
            thread.name = "llmtap-publisher-shutdown"
            thread.start()
        }
    }

    // MARK: The I/O thread

    private func drain(socket: ZMQSocket, encoder: EnvelopeEncoder) {
        // Accounting goes back under the lock in slices, so the queue's depth stays truthful
        // while a large batch is being sent.
        let reportEvery = 256
        let active = DispatchTimeInterval.nanoseconds(Int(configuration.drainInterval.inMilliseconds * 1_000_000))
        let idle = DispatchTimeInterval.nanoseconds(Int(configuration.idleDrainInterval.inMilliseconds * 1_000_000))
        var wasBusy = false
        while true {
            let batch: [PendingRecord]
            switch queue.withLock({ $0.take() }) {
            case .finished:
                return
            case .idle:
                // Records come by on the drain interval; a burst or shutdown wakes us sooner.
                worker.waitForWake(timeout: wasBusy ? active : idle)
                wasBusy = false
                continue
            case .records(let records):
                batch = records
                wasBusy = true
            }

            var sent = (count: 0, cost: 0)
            var skipped = (count: 0, cost: 0)
            for (index, pending) in batch.enumerated() {
                switch deliver(pending, on: socket, encoder: encoder) {
                case .sent:
                    sent.count += 1
                    sent.cost += pending.cost
                case .skipped:
                    skipped.count += 1
                    skipped.cost += pending.cost
                case .deadlinePassed:
                    let rest = batch[index...]
                    queue.withLock { queue in
                        queue.sent(count: sent.count, cost: sent.cost)
                        queue.abandoned(
                            count: skipped.count + rest.count, cost: skipped.cost + rest.reduce(0) { $0 + $1.cost })
                        // Anything queued behind this batch is given up on too.
                        while case .records(let records) = queue.take() {
                            queue.abandoned(count: records.count, cost: records.reduce(0) { $0 + $1.cost })
                        }
                    }
                    logger.warning(
                        "analysis records were still queued when the shutdown linger ran out",
                        metadata: [
                            "abandoned": "\(rest.count)", "endpoint": "\(configuration.endpoint)",
                        ])
                    return
                }
                if sent.count + skipped.count == reportEvery {
                    queue.withLock { queue in
                        queue.sent(count: sent.count, cost: sent.cost)
                        queue.abandoned(count: skipped.count, cost: skipped.cost)
                    }
                    sent = (0, 0)
                    skipped = (0, 0)
                }
            }
            queue.withLock { queue in
                queue.sent(count: sent.count, cost: sent.cost)
                queue.abandoned(count: skipped.count, cost: skipped.cost)
            }
        }
    }

    private enum Delivery {
        case sent
        /// This one record could not be sent; the next may.
        case skipped
        /// Shutdown's linger ran out with the collector still not taking records.
        case deadlinePassed
    }

    /// Encodes and sends one record, waiting for the collector while it is away or busy, but not
    /// past the shutdown deadline.
    private func deliver(_ pending: PendingRecord, on socket: ZMQSocket, encoder: EnvelopeEncoder) -> Delivery {
        let frame: OutboundFrame
        do {
            frame = try encoder.encode(
                seq: pending.seq, sentUnixNanos: WallClock.nowUnixNanos(),
                droppedBefore: pending.droppedBefore, record: pending.record
            )
        } catch {
            logger.error(
                "dropping an analysis record that did not encode",
                metadata: [
                    "seq": "\(pending.seq)", "kind": "\(pending.record.kindName)", "error": "\(error)",
                ])
            return .skipped
        }
        var deadlinePassed = false
        do {
            let sent = try socket.send(frame) {
                if let deadline = shutdownDeadline.withLock({ $0 }), ContinuousClock.now >= deadline {
                    deadlinePassed = true
                    return false
                }
                // The collector is away or its queue toward us is full: wait for room.
                _ = try? socket.poll(.writable, timeoutMilliseconds: 100)
                return true
            }
            if sent { return .sent }
            return deadlinePassed ? .deadlinePassed : .skipped
        } catch {
            logger.error(
                "the analysis socket refused a record; dropping it",
                metadata: [
                    "endpoint": "\(configuration.endpoint)", "error": "\(error)",
                ])
            return .skipped
        }
    }
}
