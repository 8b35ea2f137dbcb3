import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import Wire

/// HTTP/2 from clients: NIOHTTP2's handler on the connection, and on each stream the pipeline that
/// makes it one exchange (`HTTP2StreamBridge`, then the handler HTTP/1.1 connections get).
///
/// NIOHTTP2's protections stay on: header block and content-length validation, the bound on
/// concurrent streams, on the header list, on empty DATA and CONTINUATION frames, and the rapid
/// reset defence (CVE-2023-44487: more than 200 RST_STREAM in 30 s is a connection error).
/// `HTTP2ConnectionWatcher` counts, logs and closes after what they catch.
enum HTTP2Frontend {
    /// Adds the connection's handlers at the end of `pipeline`; `streamHandler` makes each stream's
    /// last handler.
    static func configure(
        _ pipeline: ChannelPipeline.SynchronousOperations, settings: ProxySettings, counters: SidecarCounters,
        logger: Logger,
        streamHandler: @escaping @Sendable () -> any ChannelHandler
    ) throws {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: settings.maxConcurrentStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: settings.maxHeaderBytes),
            // WebSocket over HTTP/2 (RFC 8441): extended CONNECT with `:protocol websocket`.
            HTTP2Setting(parameter: .enableConnectProtocol, value: 1),
        ]
        let maxHeadBytes = settings.maxHeaderBytes
        let watcher = HTTP2ConnectionWatcher(idleTimeout: settings.clientTimeout, counters: counters, logger: logger)
        try pipeline.addHandler(FlushCoalescer())
        _ = try pipeline.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: .init(), streamDelegate: watcher
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                // The bridge writes whole heads: one is held to the same bound as an HTTP/1.1 head.
                let bridge = HTTP2StreamBridge(maxHeadBytes: maxHeadBytes + 4096)
                try stream.pipeline.syncOperations.addHandlers([
                    ExtendedConnectDetector(bridge: bridge), HTTP2FramePayloadToHTTP1ServerCodec(), bridge,
                    streamHandler(),
                ])
            }
        }
        try pipeline.addHandler(watcher)
    }
}
