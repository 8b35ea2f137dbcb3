import NIOCore

/// One connection too many: 503 in the error shape every client reads, then close, whatever it
/// sent. File descriptors and memory stay bounded however many connections a peer opens.
final class RefusingHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let maxConnections: Int

    init(maxConnections: Int) {
        self.maxConnections = maxConnections
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context)
    }

    /// Whatever the client sends is read and dropped, so the close is a FIN after the answer, not
    /// a reset that could destroy the answer in the client's buffer.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    private var refused = false

    private func refuse(_ context: ChannelHandlerContext) {
        guard !refused else { return }
        refused = true
        let response = ProxyErrorResponse(
            status: .serviceUnavailable, type: "llmtap_proxy_error", code: "too_many_connections",
            message: "llmtap-sidecar has \(maxConnections) connections open, its limit; retry shortly", retryAfter: 1
        )
        var bytes = context.channel.allocator.buffer(capacity: 256)
        LocalResponse.write(response, exchangeID: nil, close: true, version: .http1_1, into: &bytes)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(bytes)).whenComplete { _ in channel.close(mode: .output, promise: nil) }
        // The client's own close ends it; this bounds a client that never closes.
        channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
    }
}
