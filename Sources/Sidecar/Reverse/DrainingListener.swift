import Logging
import NIOCore
import NIOExtras
import NIOPosix
import Wire

#if canImport(Glibc)
    import Glibc
#endif

/// A listening socket for proxy connections that drains on graceful shutdown: it stops accepting,
/// lets what is under way finish within the drain timeout (idle connections close at once), then
/// closes the rest. The reverse and MITM listeners are both one.
struct DrainingListener {
    let name: String
    let flag: String
    let listen: ListenAddress
    let group: MultiThreadedEventLoopGroup
    let drainTimeout: TimeAmount
    /// Client connections open at once on all listeners; past it a new one gets 503 and is closed.
    let maxConnections: Int
    let counters: SidecarCounters
    /// The listening sockets (a hot upgrade hands them on) and the word that the process is up.
    let startup: Startup
    let logger: Logger

    /// Binds (or takes the socket handed over by a hot upgrade), reports readiness with `ready`, waits for `untilShutdown`, then drains.
    /// `transport` comes first on every connection, one refused at `maxConnections` too (TLS: its
    /// 503 is then read as HTTPS, as the client speaks it; `refused` says which it is),
    /// `childInitializer` after it on the rest.
    func run(
        transport: @escaping @Sendable (_ channel: any Channel, _ refused: Bool) throws -> Void = { _, _ in },
        childInitializer: @escaping @Sendable (any Channel) throws -> Void,
        ready: (any Channel) -> Void,
        untilShutdown: () async -> Void
    ) async throws {
        let quiesce = ServerQuiescingHelper(group: group)
        let channel: any Channel
        let descriptor: CInt
        do {
            descriptor = try startup.sockets.socket(for: name, address: listen)
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            quiesce.makeServerChannelHandler(channel: channel))
                    }
                }
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                .childChannelInitializer { [counters, logger, name, maxConnections] channel in
                    channel.eventLoop.makeCompletedFuture {
                        let refused = counters.openConnections.load(ordering: .relaxed) >= maxConnections
                        try transport(channel, refused)
                        guard !refused else {
                            Self.logRefusal(
                                channel, maxConnections: maxConnections, listener: name, counters: counters,
                                logger: logger)
                            return try channel.pipeline.syncOperations.addHandler(
                                RefusingHandler(maxConnections: maxConnections))
                        }
                        try childInitializer(channel)
                    }
                }
                .withBoundSocket(descriptor).get()
        } catch {
            throw ConfigurationError("cannot listen on \(flag) \(listen): \(error)")
        }
        // NIO listens again with its own, shorter backlog; this sets it back.
        _ = Glibc.listen(descriptor, 1024)
        startup.sockets.listening(name, descriptor: descriptor)
        ready(channel)
        startup.listenerReady()

        await untilShutdown()
        // From here on the socket closes: an upgrade no longer hands it on.
        startup.sockets.stopped(name)
        logger.info(
            "draining",
            metadata: [
                "listener": "\(name)", "in_flight": "\(counters.inFlight.load(ordering: .relaxed))",
                "drain_timeout_s": "\(drainTimeout.nanoseconds / 1_000_000_000)",
            ])
        let drained = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        let timer = group.next().scheduleTask(in: drainTimeout) {
            drained.fail(DrainTimedOut())
        }
        do {
            try await drained.futureResult.get()
            timer.cancel()
        } catch {
            logger.warning(
                "the drain timeout passed with exchanges still under way; closing them",
                metadata: [
                    "listener": "\(name)", "in_flight": "\(counters.inFlight.load(ordering: .relaxed))",
                ])
        }
    }
}

struct DrainTimedOut: Error {}

extension DrainingListener {
    static func logRefusal(
        _ channel: any Channel, maxConnections: Int, listener: String, counters: SidecarCounters, logger: Logger
    ) {
        let count = counters.refusedConnections.add(1, ordering: .relaxed).newValue
        if LogSampling.isWorthLogging(occurrence: count) {
            logger.warning(
                "refused a connection: --max-connections are open",
                metadata: [
                    "listener": "\(listener)", "max_connections": "\(maxConnections)", "count": "\(count)",
                    "client": "\(channel.remoteAddress.map { "\($0)" } ?? "?")",
                ])
        }
    }
}
