import Logging
import NIOCore
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
        let (settings, target, pools, publisher, counters, logger) = (
            self.settings, self.target, self.pools, self.publisher, self.counters, self.logger
        )
        let listener = DrainingListener(
            name: "reverse", flag: "--listen", listen: listen, group: group, drainTimeout: drainTimeout,
            maxConnections: settings.maxConnections, counters: counters, logger: logger
        )
        try await listener.run(
            childInitializer: { channel in
                try channel.pipeline.syncOperations.addHandler(
                    ClientConnectionHandler(
                        settings: settings, target: target, pools: pools, publisher: publisher, counters: counters,
                        logger: logger
                    ))
            },
            ready: { channel in
                logger.info(
                    "reverse listener ready",
                    metadata: [
                        "listen": "\(channel.localAddress.map { "\($0)" } ?? "\(listen)")", "upstream": "\(target)",
                    ])
            },
            untilShutdown: { try? await gracefulShutdown() }
        )
        await pools.closeAll()
    }
}
