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
    private var streams: [StreamKey: SequenceStreamStats] = [:]
    private var clock: UInt64 = 0

    public init(maxStreams: Int = 10_000) {
        precondition(maxStreams > 0)
        self.maxStreams = maxStreams
    }

    public mutating func observe(sidecarID: String, bootID: String, seq: UInt64, droppedBefore: UInt64) -> Observation {
        clock += 1
        let key = StreamKey(sidecarID: sidecarID, bootID: bootID)
        var stream = streams[key] ?? SequenceStreamStats(sidecarID: sidecarID, bootID: bootID)
        stream.lastTouched = clock
        stream.received += 1
        defer {
            if streams.updateValue(stream, forKey: key) == nil && streams.count > maxStreams {
                evictQuietest()
            }
        }

        guard seq > stream.lastSeq else {
            stream.outOfOrder += 1
            return .outOfOrder
        }
        var observation = Observation.inOrder
        if seq > stream.lastSeq + 1 {
            let missing = seq - stream.lastSeq - 1
            // dropped_before only grows; a sidecar that claims otherwise gets no credit for drops.
            let dropped = droppedBefore >= stream.lastDroppedBefore
                ? min(droppedBefore - stream.lastDroppedBefore, missing)
                : 0
            let gap = SequenceGap(
                sidecarID: sidecarID, bootID: bootID,
                firstMissing: stream.lastSeq + 1, lastMissing: seq - 1, droppedBySender: dropped
            )
            stream.gaps += 1
            stream.missing += missing
            stream.droppedBySender += dropped
            stream.lostInTransit += gap.lostInTransit
            observation = .gap(gap)
        }
        stream.lastSeq = seq
        stream.lastDroppedBefore = droppedBefore
        return observation
    }

    public var allStreams: [SequenceStreamStats] {
        streams.values.sorted { ($0.sidecarID, $0.bootID) < ($1.sidecarID, $1.bootID) }
    }

    public func stream(sidecarID: String, bootID: String) -> SequenceStreamStats? {
        streams[StreamKey(sidecarID: sidecarID, bootID: bootID)]
    }

    private mutating func evictQuietest() {
        if let quietest = streams.min(by: { $0.value.lastTouched < $1.value.lastTouched })?.key {
            streams.removeValue(forKey: quietest)
        }
    }
}
