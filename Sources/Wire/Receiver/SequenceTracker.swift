/// Records missing between two records of one sidecar boot, split by who lost them.
public struct SequenceGap: Sendable, Equatable, CustomStringConvertible {
    public let sidecarID: String
    public let bootID: String
    public let firstMissing: UInt64
    public let lastMissing: UInt64
    /// Of the missing records, how many the sidecar says it dropped itself (queue full, collector away).
    public let droppedBySender: UInt64

    public var missing: UInt64 { lastMissing - firstMissing + 1 }
    /// The rest were lost between the sockets, or by this receiver.
    public var lostInTransit: UInt64 { missing - droppedBySender }

    public var description: String {
        "\(sidecarID)/\(bootID) seq \(firstMissing)...\(lastMissing) missing (\(droppedBySender) dropped by the sidecar, \(lostInTransit) lost in transit)"
    }
}

/// Where a stream stood: enough for a later receiver to continue its gap detection.
public struct SequenceResumePoint: Sendable, Equatable {
    public let sidecarID: String
    public let bootID: String
    public let lastSeq: UInt64
    public let lastDroppedBefore: UInt64

    public init(sidecarID: String, bootID: String, lastSeq: UInt64, lastDroppedBefore: UInt64) {
        self.sidecarID = sidecarID
        self.bootID = bootID
        self.lastSeq = lastSeq
        self.lastDroppedBefore = lastDroppedBefore
    }
}

extension SequenceStreamStats {
    public var resumePoint: SequenceResumePoint {
        SequenceResumePoint(
            sidecarID: sidecarID, bootID: bootID, lastSeq: lastSeq, lastDroppedBefore: lastDroppedBefore)
    }
}

/// Sequence accounting for one (sidecar id, boot id).
public struct SequenceStreamStats: Sendable, Equatable {
    public let sidecarID: String
    public let bootID: String
    public internal(set) var received: UInt64 = 0
    /// The highest seq seen.
    public internal(set) var lastSeq: UInt64 = 0
    /// `dropped_before` of the record with `lastSeq`.
    public internal(set) var lastDroppedBefore: UInt64 = 0
    public internal(set) var gaps: UInt64 = 0
    public internal(set) var missing: UInt64 = 0
    public internal(set) var droppedBySender: UInt64 = 0
    public internal(set) var lostInTransit: UInt64 = 0
    /// Records at or below `lastSeq`: repeated, or overtaken (not expected from one PUSH socket).
    public internal(set) var outOfOrder: UInt64 = 0
    /// Which observation last touched this stream, for evicting the quietest streams first.
    var lastTouched: UInt64 = 0
}

/// Detects gaps in each sidecar boot's sequence numbers. Pure: no clock, no I/O.
public struct SequenceTracker: Sendable {
    public enum Observation: Sendable, Equatable {
        /// The next record in order (or the first of a stream, starting at 1).
        case inOrder
        /// Records are missing just before this one.
        case gap(SequenceGap)
        /// At or below the highest seq already seen: delivered, but not counted as progress.
        case outOfOrder
    }

    struct StreamKey: Hashable, Sendable {
        let sidecarID: String
        let bootID: String
    }

    /// At most this many streams are tracked; the quietest is forgotten first. A sidecar restarting
    /// in a loop would otherwise grow this without bound.
    public let maxStreams: Int
    private var slots: [SequenceStreamStats] = []
    private var index: [StreamKey: Int] = [:]
    /// The slot of the previous observation: consecutive records mostly come from one sidecar,
    /// and then no hashing is needed.
    private var lastSlot: Int?
    private var clock: UInt64 = 0

    public init(maxStreams: Int = 10_000) {
        precondition(maxStreams > 0)
        self.maxStreams = maxStreams
    }

    public mutating func observe(sidecarID: String, bootID: String, seq: UInt64, droppedBefore: UInt64) -> Observation {
        clock += 1
        let slot = slotFor(sidecarID: sidecarID, bootID: bootID)
        lastSlot = slot
        return slots[slot].observe(seq: seq, droppedBefore: droppedBefore, clock: clock)
    }

    /// Continues a stream where an earlier receiver (a previous run of this process) left it, so
    /// that records missed between the two runs count as missing, and records the earlier run
    /// received do not.
    public mutating func resume(_ point: SequenceResumePoint) {
        let slot = slotFor(sidecarID: point.sidecarID, bootID: point.bootID)
        slots[slot].lastSeq = max(slots[slot].lastSeq, point.lastSeq)
        slots[slot].lastDroppedBefore = max(slots[slot].lastDroppedBefore, point.lastDroppedBefore)
    }

    public var allStreams: [SequenceStreamStats] {
        slots.sorted { ($0.sidecarID, $0.bootID) < ($1.sidecarID, $1.bootID) }
    }

    public func stream(sidecarID: String, bootID: String) -> SequenceStreamStats? {
        index[StreamKey(sidecarID: sidecarID, bootID: bootID)].map { slots[$0] }
    }

    private mutating func slotFor(sidecarID: String, bootID: String) -> Int {
        if let lastSlot, slots[lastSlot].sidecarID == sidecarID, slots[lastSlot].bootID == bootID {
            return lastSlot
        }
        let key = StreamKey(sidecarID: sidecarID, bootID: bootID)
        if let slot = index[key] { return slot }
        if slots.count == maxStreams { evictQuietest() }
        slots.append(SequenceStreamStats(sidecarID: sidecarID, bootID: bootID))
        index[key] = slots.count - 1
        return slots.count - 1
    }

    private mutating func evictQuietest() {
        guard let quietest = slots.indices.min(by: { slots[$0].lastTouched < slots[$1].lastTouched }) else { return }
        index.removeValue(forKey: StreamKey(sidecarID: slots[quietest].sidecarID, bootID: slots[quietest].bootID))
        let last = slots.count - 1
        if quietest != last {
            slots[quietest] = slots[last]
            index[StreamKey(sidecarID: slots[quietest].sidecarID, bootID: slots[quietest].bootID)] = quietest
        }
        slots.removeLast()
        lastSlot = nil
    }
}

extension SequenceStreamStats {
    fileprivate mutating func observe(seq: UInt64, droppedBefore: UInt64, clock: UInt64) -> SequenceTracker.Observation
    {
        lastTouched = clock
        received += 1
        guard seq > lastSeq else {
            outOfOrder += 1
            return .outOfOrder
        }
        var observation = SequenceTracker.Observation.inOrder
        if seq > lastSeq + 1 {
            let missingNow = seq - lastSeq - 1
            // dropped_before only grows; a sidecar that claims otherwise gets no credit for drops.
            let dropped = droppedBefore >= lastDroppedBefore ? min(droppedBefore - lastDroppedBefore, missingNow) : 0
            let gap = SequenceGap(
                sidecarID: sidecarID, bootID: bootID,
                firstMissing: lastSeq + 1, lastMissing: seq - 1, droppedBySender: dropped
            )
            gaps += 1
            missing += missingNow
            droppedBySender += dropped
            lostInTransit += gap.lostInTransit
            observation = .gap(gap)
        }
        lastSeq = seq
        lastDroppedBefore = droppedBefore
        return observation
    }
}
