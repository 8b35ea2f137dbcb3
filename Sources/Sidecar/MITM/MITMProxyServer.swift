import Logging
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import Wire

/// The MITM listener (`--mitm-listen`): apps use it as their `HTTPS_PROXY`. Drains like the
/// reverse listener on graceful shutdown.
struct MITMProxyServer: Service {
    let listen: ListenAddress
    let group: MultiThreadedEventLoopGroup
    let settings: MITMSettings
    let pools: UpstreamPools
    let leaves: LeafContextCache
    let publisher: any RecordPublishing
    let counters: SidecarCounters
    let drainTimeout: TimeAmount
    let logger: Logger

    func run() async throws {
        let quiesce = ServerQuiescingHelper(group: group)
        let (settings, pools, leaves, publisher, counters, logger) = (self.settings, self.pools, self.leaves, self.publisher, self.counters, self.logger)
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
                        try channel.pipeline.syncOperations.addHandler(MITMFrontHandler(
                            settings: settings, pools: pools, leaves: leaves, publisher: publisher, counters: counters, logger: logger
                        ))
                    }
                }
                .bind(host: listen.host, port: listen.port).get()
        } catch {
            throw ConfigurationError("cannot listen on --mitm-listen \(listen): \(error)")
        }
        logger.info("MITM listener ready", metadata: [
            "listen": "\(channel.localAddress.map { "\($0)" } ?? "\(listen)")", "allowlist": "\(settings.allowlist)",
            "ports": "\(settings.ports.sorted())", "deny_unlisted": "\(settings.denyUnlisted)",
        ])
        try? await gracefulShutdown()
        let drained = group.next().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        let timer = group.next().scheduleTask(in: drainTimeout) { drained.fail(DrainTimedOut()) }
        do {
            try await drained.futureResult.get()
            timer.cancel()
        } catch {
            logger.warning("the drain timeout passed with MITM connections still open; closing them")
        }
    }
}
