/// How an `AnalysisPublisher` connects and how much it may hold.
public struct AnalysisPublisherConfiguration: Sendable {
    /// The collector's analysis PULL socket: `tcp://collector:7101` or `ipc:///run/llmtap/analysis`.
    public var endpoint: String
    /// This sidecar's id in every envelope.
    public var sidecarID: String
    /// A new random id per start; sequence numbers begin at 1 with it.
    public var bootID: String
    /// The queue's limits: beyond either one, `publish` drops the record and counts it.
    public var maxQueuedRecords: Int = 65_536
    public var maxQueuedBytes: Int = 64 << 20
    /// How long records may wait before the I/O thread sends them: while records flow, and when
    /// the publisher has been idle. A burst of `wakeRecords` (or `wakeBytes`) wakes it at once.
    /// Batching like this saves a thread switch per record, on both sides of the queue.
    public var drainInterval: Duration = .milliseconds(2)
    public var idleDrainInterval: Duration = .milliseconds(25)
    public var wakeRecords: Int = 256
    public var wakeBytes: Int = 1 << 20
    /// ZeroMQ's own send queue toward the collector (`ZMQ_SNDHWM`), in messages.
    public var sendHighWaterMark: Int32 = 10_000
    /// How long `shutdown` keeps trying to deliver what is queued.
    public var shutdownLinger: Duration = .seconds(2)
    /// Reconnect back-off toward a collector that went away.
    public var reconnectInterval: Duration = .milliseconds(100)
    public var reconnectIntervalMax: Duration = .seconds(5)

    public init(endpoint: String, sidecarID: String, bootID: String = BootID.random()) {
        self.endpoint = endpoint
        self.sidecarID = sidecarID
        self.bootID = bootID
    }
}

public enum BootID {
    /// 128 random bits as 32 hex characters.
    public static func random() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<2).map { _ in String(generator.next() as UInt64, radix: 16).leftPadded(to: 16) }.joined()
    }
}

extension Duration {
    /// Whole milliseconds, rounded toward zero.
    public var inMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Whole milliseconds, clamped to what a libzmq option takes.
    var zmqMilliseconds: Int32 { Int32(clamping: inMilliseconds) }
}
