import Foundation
import Logging
import Synchronization
import Wire

/// Stores exchanges off the ingest thread: rows wait in a bounded queue and one thread writes them
/// in batched transactions (then appends the same rows to the JSONL log).
///
/// When the database can't be written (locked, disk full), ingest goes on: rows keep waiting, up
/// to `maxPending`, past which the oldest are dropped and counted; the failure shows in `health`
/// (hence `/readyz`) and in the metrics, and writing is retried with a growing pause.
final class ExchangeWriter: Sendable {
    struct Health: Sendable, Equatable {
        var pending = 0
        var written: UInt64 = 0
        var dropped: UInt64 = 0
        var failures: UInt64 = 0
        var lastError: String?
        /// False from a failed write until the next successful one.
        var healthy = true
    }

    struct Settings: Sendable {
        var maxPending = 100_000
        var batchSize = 1_000
        /// Rows older than this many days are deleted, checked hourly; nil keeps everything.
        var retentionDays: Int?
        var flushInterval: Duration = .milliseconds(100)
    }

    private struct State {
        var queue: [ExchangeRecord] = []
        /// Rows taken by the thread for the write under way.
        var writing = 0
        /// The latest stream checkpoint not yet saved; a newer one replaces it.
        var checkpoints: [StreamCheckpoint]?
        var health = Health()
        var closing = false
    }

    private let database: AppDatabase
    private let settings: Settings
    private let logger: Logger
    private let state = Mutex(State())
    /// The storage thread: woken when rows are queued or shutdown begins.
    private let worker = WorkerThread(name: "llmtap-store")
    // The JSONL file is touched by the writer thread only.
    private nonisolated(unsafe) let jsonl: JSONLWriter?

    init(database: AppDatabase, jsonl: JSONLWriter?, settings: Settings, logger: Logger) {
        self.database = database
        self.jsonl = jsonl
        self.settings = settings
        self.logger = logger
        worker.start { [self] in run() }
    }

    var health: Health {
        state.withLock { state in
            var health = state.health
            health.pending = state.queue.count + state.writing
            return health
        }
    }

    /// Never blocks the caller.
    func enqueue(_ row: ExchangeRecord) {
        let (dropped, wake) = state.withLock { state -> (Bool, Bool) in
            var dropped = false
            if state.queue.count >= settings.maxPending {
                // A tenth at once: dropping one row per row queued would shift the whole queue each time.
                let excess = max(1, settings.maxPending / 10)
                state.queue.removeFirst(min(excess, state.queue.count))
                state.health.dropped += UInt64(excess)
                dropped = true
            }
            state.queue.append(row)
            return (dropped, state.queue.count >= settings.batchSize)
        }
        if dropped {
            let count = health.dropped
            if LogSampling.isWorthLogging(occurrence: count) {
                logger.error(
                    "the storage queue is full; dropping the oldest exchange rows", metadata: ["dropped": "\(count)"])
            }
        }
        if wake { worker.wake() }
    }

    /// Saves stream checkpoints on the storage thread, after the rows queued before them.
    func checkpoint(_ checkpoints: [StreamCheckpoint]) {
        state.withLock { $0.checkpoints = checkpoints }
    }

    /// Writes what is queued (trying for at most `linger`), then stops the thread.
    func shutdown(linger: Duration = .seconds(5)) {
        state.withLock { $0.closing = true }
        worker.wake()
        if !worker.join(timeout: .milliseconds(Int(linger.inMilliseconds))) {
            logger.error("rows were still waiting to be stored at shutdown", metadata: ["pending": "\(health.pending)"])
        }
    }

    private func run() {
        var pause = Duration.milliseconds(100)
        var lastRetention = ContinuousClock.now - .seconds(3600)
        while true {
            let (batch, closing) = state.withLock { state in
                let batch = Array(state.queue.prefix(settings.batchSize))
                state.queue.removeFirst(batch.count)
                state.writing = batch.count
                return (batch, state.closing)
            }
            if batch.isEmpty {
                saveCheckpoints()
                if closing { return }
                applyRetention(&lastRetention)
                worker.waitForWake(timeout: .milliseconds(Int(settings.flushInterval.inMilliseconds)))
                continue
            }
            do {
                try database.insert(batch)
                do {
                    try jsonl?.append(batch)
                } catch {
                    logger.error(
                        "cannot append to the JSONL log",
                        metadata: ["path": "\(jsonl?.path ?? "")", "error": "\(error)"])
                }
                let recovered = state.withLock { state -> Bool in
                    state.writing = 0
                    state.health.written += UInt64(batch.count)
                    defer { state.health.healthy = true }
                    return !state.health.healthy
                }
                if recovered { logger.notice("storage recovered; writing again") }
                pause = .milliseconds(100)
            } catch {
                let failures = state.withLock { state -> UInt64 in
                    // The batch goes back in front, and the oldest rows go if that overfills the queue.
                    state.writing = 0
                    state.queue.insert(contentsOf: batch, at: 0)
                    let excess = state.queue.count - settings.maxPending
                    if excess > 0 {
                        state.queue.removeFirst(excess)
                        state.health.dropped += UInt64(excess)
                    }
                    state.health.failures += 1
                    state.health.healthy = false
                    state.health.lastError = "\(error)"
                    return state.health.failures
                }
                if LogSampling.isWorthLogging(occurrence: failures) {
                    logger.error(
                        "cannot write exchanges to the database; they wait in memory",
                        metadata: [
                            "error": "\(error)", "pending": "\(health.pending)", "failures": "\(failures)",
                        ])
                }
                if closing { return }
                worker.waitForWake(timeout: .milliseconds(Int(pause.inMilliseconds)))
                pause = min(pause * 2, .seconds(5))
            }
        }
    }

    private func saveCheckpoints() {
        guard
            let checkpoints = state.withLock({ state in
                defer { state.checkpoints = nil }
                return state.checkpoints
            })
        else { return }
        do {
            try database.save(checkpoints)
        } catch {
            // The next checkpoint will try again; a stale one only over-counts losses after a crash.
            logger.warning("cannot save the sequence checkpoints", metadata: ["error": "\(error)"])
        }
    }

    private func applyRetention(_ last: inout ContinuousClock.Instant) {
        guard let days = settings.retentionDays, ContinuousClock.now - last >= .seconds(3600) else { return }
        last = .now
        let cutoff = Int64(Date().timeIntervalSince1970 * 1000) - Int64(days) * 86_400_000
        do {
            let deleted = try database.deleteRows(startedBefore: cutoff)
            if deleted > 0 {
                logger.info(
                    "deleted exchanges past the retention", metadata: ["rows": "\(deleted)", "days": "\(days)"])
            }
        } catch {
            logger.warning("cannot apply the retention", metadata: ["error": "\(error)"])
        }
    }
}
