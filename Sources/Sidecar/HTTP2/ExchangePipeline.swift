import Logging
import NIOCore
import NIOHTTP1

/// What a client connection's bytes go through once they are HTTP (after TLS, if any): the protocol
/// sniffer, then HTTP/1.1's exchange handler or HTTP/2's connection handlers with one exchange
/// handler per stream. The reverse listener, the HTTPS listener and a decrypted MITM connection
/// all use it; over TLS, ALPN (`h2, http/1.1`) has told the client which to send, and the preface
/// says which it chose.
enum ExchangePipeline {
    /// ALPN's offer on the sidecar's own TLS (the HTTPS listener, MITM leaves).
    static let applicationProtocols = ["h2", "http/1.1"]

    /// Adds the sniffer at the end of `channel`'s pipeline. The connection counts against
    /// --max-connections from now until it closes, whatever it turns out to speak; the handlers
    /// `exchanges` makes (one per HTTP/2 stream) count none.
    static func install(
        on channel: any Channel, settings: ProxySettings, counters: SidecarCounters, logger: Logger,
        exchanges: @escaping @Sendable (_ clientVersion: HTTPVersion?) -> ClientConnectionHandler
    ) throws {
        counters.openConnections.add(1, ordering: .relaxed)
        channel.closeFuture.whenComplete { _ in counters.openConnections.subtract(1, ordering: .relaxed) }
        try channel.pipeline.syncOperations.addHandler(
            ProtocolSniffer(undecidedTimeout: settings.clientTimeout) { context, spoken in
                let pipeline = context.pipeline.syncOperations
                switch spoken {
                case .http1:
                    try pipeline.addHandler(exchanges(nil), position: .after(context.handler))
                case .http2:
                    // The sniffer is the pipeline's last handler: HTTP/2's go after it.
                    try HTTP2Frontend.configure(
                        pipeline, settings: settings, counters: counters, logger: logger,
                        streamHandler: { exchanges(.http2) })
                }
            })
    }
}
