import Foundation
import Logging
import Synchronization
import Wire

/// From decoded records to stored, counted exchanges, on a thread of its own: the receiver's
/// thread only hands records over (so decoding keeps pace with the socket), and this one assembles
/// exchanges, reads their bodies, prices them, counts them and queues them for storage.
final class IngestPipeline: Sendable {
    struct Settings: Sendable {
        var limits = ExchangeAssembler.Limits()
        /// Records waiting for the assembly thread; past it the receiver waits (and ZeroMQ's own
        /// queue then holds the rest, and the sidecars drop and count what does not fit).
        var maxQueued = 10_000
    }

    private struct Queue {
        var records: [ReceivedRecord] = []
        var closing = false
    }

    private let settings: Settings
    private let prices: PriceTable
    private let metrics: CollectorMetrics
    private let writer: ExchangeWriter
    private let links: SidecarLinks
    private let policy: PolicyEngine?
    private let logger: Logger
    private let queue = Mutex(Queue())
    /// The assembly thread: woken when records arrive or shutdown begins.
    private let worker = WorkerThread(name: "llmtap-assembly")
    /// Kinds of trouble already logged: each is logged the first time, then only counted.
    private let logged = Mutex<Set<String>>([])
    private let onCycle: @Sendable () -> Void

    /// - Parameter onCycle: run on the assembly thread every quarter second (metric refreshes).
    init(
        settings: Settings, prices: PriceTable, metrics: CollectorMetrics, writer: ExchangeWriter, links: SidecarLinks,
        policy: PolicyEngine? = nil,
        logger: Logger, onCycle: @escaping @Sendable () -> Void
    ) {
        self.settings = settings
        self.prices = prices
        self.metrics = metrics
        self.writer = writer
        self.links = links
        self.policy = policy
        self.logger = logger
        self.onCycle = onCycle
        worker.start { [self] in run() }
    }

    /// Called on the receiver's thread for every record.
    func receive(_ record: ReceivedRecord) {
        while true {
            let (accepted, wake) = queue.withLock { queue -> (Bool, Bool) in
                guard queue.records.count < settings.maxQueued || queue.closing else { return (false, true) }
                queue.records.append(record)
                return (true, queue.records.count == 1)
            }
            if wake { worker.wake() }
            if accepted { return }
            // Full: hold the receiver back, which holds back ZeroMQ.
            usleep(1_000)
        }
    }

    /// Finishes what is queued, closes the open exchanges as incomplete, and stops the thread.
    func shutdown() {
        queue.withLock { $0.closing = true }
        worker.wake()
        worker.join()
    }

    private func run() {
        var assembler = ExchangeAssembler(limits: settings.limits)
        var lastCycle = ContinuousClock.now
        while true {
            let (batch, closing) = queue.withLock { queue -> ([ReceivedRecord], Bool) in
                var batch: [ReceivedRecord] = []
                swap(&batch, &queue.records)
                return (batch, queue.closing)
            }
            if batch.isEmpty {
                if closing {
                    handle(assembler.closeAll())
                    metrics.inFlight.set(to: 0)
                    return
                }
                worker.waitForWake(timeout: .milliseconds(50))
            }
            let now = WallClock.nowUnixNanos()
            var perSidecar: [String: Int] = [:]
            for received in batch {
                let envelope = received.envelope
                perSidecar[envelope.sidecarID, default: 0] += 1
                if let gap = received.gap { metrics.recordsLost(sidecar: envelope.sidecarID, count: gap.lostInTransit) }
                if case .heartbeat(let beat) = envelope.record {
                    links.observe(received)
                    metrics.heartbeat(
                        sidecar: envelope.sidecarID, bootID: envelope.bootID, beat: beat, nowUnix: Double(now) / 1e9)
                    continue
                }
                handle(
                    assembler.add(
                        sidecarID: envelope.sidecarID, bootID: envelope.bootID, record: envelope.record, nowNanos: now,
                        textRepaired: envelope.textRepaired
                    ))
            }
            for (sidecar, count) in perSidecar { metrics.recordsReceived(sidecar: sidecar, count: count) }
            if ContinuousClock.now - lastCycle >= .milliseconds(250) {
                lastCycle = .now
                handle(assembler.expire(nowNanos: now))
                onCycle()
            }
            metrics.inFlight.set(to: Double(assembler.openExchanges))
        }
    }

    private func firstTime(_ kind: String) -> Bool {
        logged.withLock { logged in logged.count < 1_000 && logged.insert(kind).inserted }
    }

    private func handle(_ outputs: [ExchangeAssembler.Output]) {
        for output in outputs {
            switch output {
            case .ended(let exchange):
                let row = ExchangeRecord(exchange, prices: prices)
                metrics.record(row)
                writer.enqueue(row)
                if let policy, !row.projectID.isEmpty, (row.costUSD ?? 0) > 0 || row.totalTokens > 0 {
                    policy.account(
                        SpendEvent(
                            projectID: row.projectID, costUSD: row.costUSD ?? 0,
                            tokens: Int64(clamping: row.totalTokens), startedAtMs: row.startedAtMs))
                }
                if !row.parseError.isEmpty, firstTime("parse/\(row.provider)/\(row.parseError.prefix(24))") {
                    logger.warning(
                        "an exchange's body could not be read; it is stored with the reason (logged once per kind)",
                        metadata: [
                            "sidecar": "\(row.sidecarID)", "exchange_id": "\(row.exchangeID)",
                            "provider": "\(row.provider)", "error": "\(row.parseError)",
                        ])
                }
            case .anomaly(let kind, let sidecar):
                metrics.anomaly(kind, sidecar: sidecar)
                if firstTime("anomaly/\(kind.rawValue)") {
                    logger.warning(
                        "a record fits no exchange; counted in llmtap_assembly_anomalies_total (logged once per kind)",
                        metadata: [
                            "sidecar": "\(sidecar)", "kind": "\(kind.rawValue)",
                        ])
                }
            }
        }
    }
}
