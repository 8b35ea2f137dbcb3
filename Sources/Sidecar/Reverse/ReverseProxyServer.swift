import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Wire

/// The reverse listener (`--listen`): the app's `base_url` points here.
///
/// On graceful shutdown it stops accepting, lets every exchange under way finish within the drain
/// timeout (idle keep-alive connections close at once), then closes what is left.
struct ReverseProxyServer: Service {
    let listen: ListenAddress
    let group: MultiThreadedEventLoopGroup
    let target: UpstreamTarget
    let settings: ProxySettings
    let pools: UpstreamPools
    let publisher: any RecordPublishing
    let counters: SidecarCounters
    let drainTimeout: TimeAmount
    let logger: Logger

    func run() async throws {
        let quiesce = ServerQuiescingHelper(group: group)
        let (settings, target, pools, publisher, counters, logger) = (self.settings, self.target, self.pools, self.publisher, self.counters, self.logger)
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                    }
                }
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ReverseProxyHandler(
                            settings: settings, target: target, pools: pools, publisher: publisher, counters: counters, logger: logger
                        ))
                    }
                }
                .bind(host: listen.host, port: listen.port).get()
        } catch {
            throw ConfigurationError("cannot listen on --listen \(listen): \(error)")
        }
        logger.info("reverse listener ready", metadata: [
            "listen": "\(channel.localAddress.map { "\($0)" } ?? "\(listen)")", "upstream": "\(target)",
        ])

        try? await gracefulShutdown()
        logger.info("draining", metadata: ["in_flight": "\(counters.inFlight.load(ordering: .relaxed))", "drain_timeout_s": "\(drainTimeout.nanoseconds / 1_000_000_000)"])
        let drained = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        let timer = group.next().scheduleTask(in: drainTimeout) {
            drained.fail(DrainTimedOut())
        }
        do {
            try await drained.futureResult.get()
            timer.cancel()
        } catch {
            logger.warning("the drain timeout passed with exchanges still under way; closing them", metadata: [
                "in_flight": "\(counters.inFlight.load(ordering: .relaxed))",
            ])
        }
        await pools.closeAll()
    }
}

struct DrainTimedOut: Error {}
