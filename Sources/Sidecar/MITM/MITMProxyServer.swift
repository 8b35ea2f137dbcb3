import Logging
import NIOCore
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
    let startup: Startup
    let logger: Logger

    func run() async throws {
        let (settings, pools, leaves, publisher, counters, logger) = (
            self.settings, self.pools, self.leaves, self.publisher, self.counters, self.logger
        )
        let listener = DrainingListener(
            name: "mitm", flag: "--mitm-listen", listen: listen, group: group, drainTimeout: drainTimeout,
            maxConnections: settings.proxy.maxConnections, counters: counters, startup: startup, logger: logger
        )
        try await listener.run(
            childInitializer: { channel in
                try channel.pipeline.syncOperations.addHandler(
                    MITMFrontHandler(
                        settings: settings, pools: pools, leaves: leaves, publisher: publisher, counters: counters,
                        logger: logger
                    ))
            },
            ready: { channel in
                logger.info(
                    "MITM listener ready",
                    metadata: [
                        "listen": "\(channel.localAddress.map { "\($0)" } ?? "\(listen)")",
                        "allowlist": "\(settings.allowlist)",
                        "ports": "\(settings.ports.sorted())", "deny_unlisted": "\(settings.denyUnlisted)",
                    ])
            },
            untilShutdown: { try? await gracefulShutdown() }
        )
    }
}
