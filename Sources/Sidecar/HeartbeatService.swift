import ServiceLifecycle
import Wire

/// Sends the sidecar's own counters to the collector every `interval`, and one last time on
/// graceful shutdown, so the collector sees the final drop count.
struct HeartbeatService: Service {
    let publisher: AnalysisPublisher
    let counters: SidecarCounters
    let interval: Duration
    let app: String
    let mode: String
    /// A configuration's providers (the routes in use now, after any reload), for their state.
    let gateway: GatewayState?
    private let started = ContinuousClock.now

    init(
        publisher: AnalysisPublisher, counters: SidecarCounters, interval: Duration, app: String, mode: String,
        gateway: GatewayState? = nil
    ) {
        self.publisher = publisher
        self.counters = counters
        self.interval = interval
        self.app = app
        self.mode = mode
        self.gateway = gateway
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
        beat.inFlight = UInt64(max(0, counters.inFlight.load(ordering: .relaxed)))
        beat.openConnections = UInt64(max(0, counters.openConnections.load(ordering: .relaxed)))
        beat.malformedRequests = counters.malformedRequests.load(ordering: .relaxed)
        beat.refusedConnections = counters.refusedConnections.load(ordering: .relaxed)
        beat.stalledClients = counters.stalledClients.load(ordering: .relaxed)
        beat.uptimeMs = UInt64(max(0, started.duration(to: .now).inMilliseconds))
        beat.version = LLMTapVersion.current
        beat.mode = mode
        beat.app = app
        beat.intervalMs = UInt32(clamping: interval.inMilliseconds)
        beat.providers = (gateway?.routes.providers ?? []).map { provider in
            let (isDown, failures) = provider.health.snapshot
            var state = WireProviderState()
            state.name = provider.name
            state.up = !isDown
            state.failures = UInt32(clamping: failures)
            return state
        }
        return beat
    }
}
