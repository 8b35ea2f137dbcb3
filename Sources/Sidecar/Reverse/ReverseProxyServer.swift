import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Wire

/// The reverse listener (`--listen`): the app's `base_url` points here, over HTTP/1.1 or HTTP/2
/// with prior knowledge. With `tls`, the same behind TLS (a configuration's `https_port`): the
/// sidecar serves HTTPS itself.
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
    let startup: Startup
    let logger: Logger
    /// The certificate for each new connection (a reload may change it); nil: plain HTTP.
    var tls: (@Sendable () -> ServerTLS?)? = nil
    /// With `connect_tunnel_enabled`: a connection whose first request is CONNECT becomes a tunnel.
    var tunnels: MITMSettings? = nil

    func run() async throws {
        let (settings, target, pools, publisher, counters, logger, tls, tunnels) = (
            self.settings, self.target, self.pools, self.publisher, self.counters, self.logger, self.tls, self.tunnels
        )
        let listener = DrainingListener(
            name: tls == nil ? "reverse" : "https", flag: tls == nil ? "--listen" : "https_port", listen: listen,
            group: group, drainTimeout: drainTimeout, maxConnections: settings.maxConnections, counters: counters,
            startup: startup, logger: logger
        )
        try await listener.run(
            transport: { channel, refused in
                guard let tls else { return }
                guard let contexts = tls() else { throw ConfigurationError("no certificate to serve HTTPS with") }
                try channel.pipeline.syncOperations.addHandler(
                    NIOSSLServerHandler(context: refused ? contexts.http1Only : contexts.negotiating))
            },
            childInitializer: { channel in
                if let tunnels {
                    return try channel.pipeline.syncOperations.addHandler(
                        MITMFrontHandler(
                            settings: tunnels, pools: pools, leaves: nil,
                            reverse: .init(settings: settings, target: target), publisher: publisher,
                            counters: counters, logger: logger))
                }
                // HTTP/1.1 and HTTP/2 (h2c, or ALPN's h2 over TLS) on one port.
                try ExchangePipeline.install(on: channel, settings: settings, counters: counters, logger: logger) {
                    ClientConnectionHandler(
                        settings: settings, target: target, pools: pools, publisher: publisher, counters: counters,
                        logger: logger, countsConnection: false, clientVersion: $0)
                }
            },
            ready: { channel in
                logger.info(
                    tls == nil ? "reverse listener ready" : "https listener ready",
                    metadata: [
                        "listen": "\(channel.localAddress.map { "\($0)" } ?? "\(listen)")", "upstream": "\(target)",
                    ])
            },
            untilShutdown: { try? await gracefulShutdown() }
        )
        await pools.closeAll()
    }
}
