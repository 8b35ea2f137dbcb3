import ServiceLifecycle
import Wire

/// Sends the sidecar's own counters to the collector every `interval`, and one last time on
/// graceful shutdown, so the collector sees the final drop count.
struct HeartbeatService: Service {
    let publisher: AnalysisPublisher
    let interval: Duration
    let app: String
    let mode: String
    private let started = ContinuousClock.now

    init(publisher: AnalysisPublisher, interval: Duration, app: String, mode: String) {
        self.publisher = publisher
        self.interval = interval
        self.app = app
        self.mode = mode
    }

    func run() async throws {
        publisher.publish(.heartbeat(beat()))
        while !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            publisher.publish(.heartbeat(beat()))
        }
    }

    func beat() -> WireHeartbeat {
        let stats = publisher.stats
        var beat = WireHeartbeat()
        beat.published = stats.published
        beat.dropped = stats.dropped
        beat.queueDepth = UInt64(stats.queueDepth)
        beat.queueBytes = UInt64(stats.queueBytes)
        // The data path arrives with the [sidecar] issue; until then nothing is ever in flight.
        beat.inFlight = 0
        beat.openConnections = 0
        beat.uptimeMs = UInt64(max(0, started.duration(to: .now).inMilliseconds))
        beat.version = LLMTapVersion.current
        beat.mode = mode
        beat.app = app
        beat.intervalMs = UInt32(clamping: interval.inMilliseconds)
        return beat
    }
}
