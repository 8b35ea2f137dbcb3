/// A record waiting for the publisher's I/O thread, with its sequence number already fixed.
struct PendingRecord: Sendable {
    let seq: UInt64
    /// Records of this boot with a lower seq that were dropped: exact, because seq numbers and
    /// drops are both decided under the queue's lock.
    let droppedBefore: UInt64
    let record: PublishedRecord
    /// What the record counts against the byte limit.
    let cost: Int
}

/// The publisher's bounded queue, as a plain value: the `AnalysisPublisher` keeps it under a lock,
/// and tests drive it directly.
///
/// `depth` and `bytes` include records the I/O thread has taken but not yet handed to ZeroMQ,
/// so the limits bound everything the publisher holds, not just what is still in `pending`.
struct PublisherQueue: Sendable {
    let maxRecords: Int
    let maxBytes: Int
    /// A waiting consumer is woken once this many records (or bytes) are pending; below it, it
    /// comes by itself on its next drain interval. Waking it for every record costs a thread
    /// switch per record, on both sides, and the collector does not need records sooner.
    let wakeRecords: Int
    let wakeBytes: Int

    private(set) var pending: [PendingRecord] = []
    private(set) var depth = 0
    private(set) var bytes = 0
    private(set) var nextSeq: UInt64 = 1
    private(set) var accepted: UInt64 = 0
    private(set) var dropped: UInt64 = 0
    private(set) var published: UInt64 = 0
    /// The I/O thread found nothing to do and is about to sleep: the next enqueue must wake it.
    private(set) var consumerWaiting = false
    /// Shutdown has begun: nothing more is accepted.
    private(set) var closed = false

    init(maxRecords: Int, maxBytes: Int, wakeRecords: Int = 1, wakeBytes: Int = 1) {
        precondition(maxRecords > 0 && maxBytes > 0, "the publisher's queue limits must be positive")
        self.maxRecords = maxRecords
        self.maxBytes = maxBytes
        // Never above the limits, or a full queue would not wake anyone.
        self.wakeRecords = max(1, min(wakeRecords, maxRecords / 2))
        self.wakeBytes = max(1, min(wakeBytes, maxBytes / 2))
    }

    enum EnqueueResult: Equatable {
        case accepted(wakeConsumer: Bool)
        case dropped
    }

    /// Every call uses up one sequence number, accepted or not, so a drop always shows as a gap.
    mutating func enqueue(_ record: PublishedRecord, cost: Int) -> EnqueueResult {
        let seq = nextSeq
        nextSeq += 1
        // A record larger than the whole byte budget is still taken into an empty queue, so that
        // one big request can't be refused forever.
        let fits = depth < maxRecords && (bytes + cost <= maxBytes || depth == 0)
        guard fits, !closed else {
            dropped += 1
            return .dropped
        }
        pending.append(PendingRecord(seq: seq, droppedBefore: dropped, record: record, cost: cost))
        depth += 1
        bytes += cost
        accepted += 1
        let wake = consumerWaiting && (pending.count >= wakeRecords || bytes >= wakeBytes)
        if wake { consumerWaiting = false }
        return .accepted(wakeConsumer: wake)
    }

    enum Take {
        case records([PendingRecord])
        /// Nothing pending; the consumer is now marked waiting and should sleep until woken.
        case idle
        /// Closed and nothing pending: the I/O thread's work is done.
        case finished
    }

    /// Hands everything pending to the I/O thread. The records stay counted in `depth` and `bytes`
    /// until `sent` or `abandoned` says what became of them.
    mutating func take() -> Take {
        if !pending.isEmpty {
            var taken: [PendingRecord] = []
            taken.reserveCapacity(pending.count)
            swap(&taken, &pending)
            return .records(taken)
        }
        if closed { return .finished }
        consumerWaiting = true
        return .idle
    }

    /// The I/O thread handed `count` taken records, costing `cost` bytes, to ZeroMQ.
    mutating func sent(count: Int, cost: Int) {
        depth -= count
        bytes -= cost
        published += UInt64(count)
    }

    /// The I/O thread gave up on `count` taken records (shutdown deadline, or a socket failure).
    mutating func abandoned(count: Int, cost: Int) {
        depth -= count
        bytes -= cost
        dropped += UInt64(count)
    }

    /// Stops accepting. Returns whether the consumer must be woken to finish.
    mutating func close() -> Bool {
        closed = true
        let wake = consumerWaiting
        consumerWaiting = false
        return wake
    }

    var stats: PublisherStats {
        PublisherStats(
            accepted: accepted, published: published, dropped: dropped,
            queueDepth: depth, queueBytes: bytes, lastSeq: nextSeq - 1
        )
    }
}

/// The publisher's counters, all since it started.
public struct PublisherStats: Sendable, Equatable {
    /// `publish` calls that were queued.
    public var accepted: UInt64
    /// Records handed to ZeroMQ.
    public var published: UInt64
    /// Records dropped: queue full, shut down, or given up on at shutdown.
    public var dropped: UInt64
    /// Records and bytes held now, including those being sent.
    public var queueDepth: Int
    public var queueBytes: Int
    /// The last sequence number given out (accepted or dropped).
    public var lastSeq: UInt64
}

/// A record as it was handed to the publisher: a message for the I/O thread to encode, or bytes
/// encoded already.
enum PublishedRecord: Sendable {
    /// Boxed: a message inline is 224 bytes, which every queued record would then take.
    indirect case message(WireRecord)
    case encoded(EncodedRecord)

    var kindName: String {
        switch self {
        case .message(let record): record.kindName
        case .encoded(let record): record.kindName
        }
    }
}

extension WireRecord {
    /// About what the record weighs once encoded: the payload plus a fixed allowance for its fields.
    /// The byte limit is a memory bound, so it need not be exact, only cheap and never too small.
    var estimatedCost: Int {
        switch self {
        case .request(let request):
            return 128 + request.body.count + request.path.utf8.count + request.headers.headerBytes
        case .streamChunk(let chunk):
            return 48 + chunk.data.count + chunk.exchangeID.utf8.count
        case .responseDone(let done):
            return 96 + done.error.utf8.count + done.headers.headerBytes
        case .heartbeat:
            return 96
        }
    }
}

extension [WireHeader] {
    var headerBytes: Int {
        reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
    }
}
