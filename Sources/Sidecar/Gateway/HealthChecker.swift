import Logging
import NIOCore
import ServiceLifecycle

/// Active health checks (`health_check: {enabled, interval}`): every interval, each provider with a
/// `health_check` request gets it, with its credential, on a connection of its own; a 2xx answer
/// within the timeout brings it back or keeps it in, anything else takes it out (`ProviderHealth`).
/// The probes run on one event loop, which alone touches the ones in flight.
final class HealthChecker: Service, @unchecked Sendable {
    /// Whose providers are probed: the ones of each round's routes (a reload changes them).
    private let state: GatewayState
    private let pools: UpstreamPools
    private let eventLoop: any EventLoop
    private let interval: Duration
    private let logger: Logger
    /// The probes under way, by identity: only on `eventLoop`.
    private var inFlight: [ObjectIdentifier: Probe] = [:]

    init(state: GatewayState, pools: UpstreamPools, eventLoop: any EventLoop, interval: Duration, logger: Logger) {
        self.state = state
        self.pools = pools
        self.eventLoop = eventLoop
        self.interval = interval
        self.logger = logger
    }

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            eventLoop.execute { self.probeAll() }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
        }
    }

    private func probeAll() {
        // A probe may take at most the interval (and 10 s), so rounds never pile up.
        let timeout = TimeAmount.nanoseconds(min(Int64(interval.inMilliseconds) * 1_000_000, 10_000_000_000))
        for provider in state.routes.providers {
            guard let probe = provider.probe else { continue }
            let pool = pools.pool(for: eventLoop, target: provider.target)
            let running = Probe(provider: provider, logger: logger) { [self] done in
                inFlight[ObjectIdentifier(done)] = nil
            }
            inFlight[ObjectIdentifier(running)] = running
            running.start(
                pool: pool, request: Self.request(probe, provider: provider), isHEAD: probe.method == "HEAD",
                timeout: timeout)
        }
    }

    /// The probe's request, as bytes: its method, path, headers and body, the provider's `Host` and credential.
    static func request(_ probe: HealthProbe, provider: GatewayRoutes.Provider) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeString(
            "\(probe.method) \(provider.target.basePath)\(probe.path) HTTP/1.1\r\nhost: \(provider.target.authority)\r\n"
        )
        let credential = provider.credential(advancing: false)?.pair
        if let credential { credential.header.writeField(credential.value, into: &out) }
        if provider.kind == .anthropic { out.writeStaticString("anthropic-version: 2023-06-01\r\n") }
        if provider.sendsOAuth(credential) { out.writeStaticString("anthropic-beta: oauth-2025-04-20\r\n") }
        for (name, value) in probe.headers { out.writeString("\(name): \(value)\r\n") }
        if !probe.body.isEmpty || ["POST", "PUT", "PATCH"].contains(probe.method) {
            out.writeString("content-length: \(probe.body.utf8.count)\r\n")
        }
        out.writeString("user-agent: llmtap-sidecar health check\r\nconnection: close\r\n\r\n")
        out.writeString(probe.body)
        return out
    }
}

/// One health check request, start to verdict.
private final class Probe: UpstreamResponseSink {
    private let provider: GatewayRoutes.Provider
    private let logger: Logger
    private let done: (Probe) -> Void
    private var connection: UpstreamConnection?
    private var timer: Scheduled<Void>?
    private var finished = false

    init(provider: GatewayRoutes.Provider, logger: Logger, done: @escaping (Probe) -> Void) {
        self.provider = provider
        self.logger = logger
        self.done = done
    }

    func start(pool: UpstreamConnectionPool, request: ByteBuffer, isHEAD: Bool, timeout: TimeAmount) {
        let seconds = timeout.nanoseconds / 1_000_000_000
        timer = pool.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.finish(healthy: false, why: "no answer within \(seconds) s")
        }
        pool.connect().assumeIsolated().whenComplete { result in
            switch result {
            case .success(let connection):
                guard !self.finished else {
                    connection.channel.close(promise: nil)
                    return
                }
                self.connection = connection
                connection.handler.sink = self
                connection.handler.send(.head(request, chunked: false, isHEAD: isHEAD))
                connection.handler.send(.end)
                connection.handler.flush()
            case .failure(let error):
                self.finish(healthy: false, why: "\(error)")
            }
        }
    }

    func upstreamResponseHead(_ head: UpstreamResponseHead) {
        let code = head.status.code
        finish(healthy: (200..<300).contains(code), why: "the health check got \(code)")
    }

    func upstreamResponseBody(_ buffer: ByteBuffer) {}
    func upstreamResponseEnd() {}
    func upstreamReadComplete() {}
    func upstreamWritabilityChanged(isWritable: Bool) {}

    func upstreamFailed(_ error: any Error) {
        finish(healthy: false, why: "\(error)")
    }

    private func finish(healthy: Bool, why: String) {
        guard !finished else { return }
        finished = true
        timer?.cancel()
        connection?.handler.sink = nil
        connection?.channel.close(promise: nil)
        let change =
            healthy
            ? provider.health.succeeded() : provider.health.failed(now: NIODeadline.now().uptimeNanoseconds)
        provider.log(change, why: why, logger: logger)
        done(self)
    }
}
