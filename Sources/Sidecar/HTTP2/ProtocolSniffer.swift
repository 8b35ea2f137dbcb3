import NIOCore

/// The first handler of a reverse-listener connection: holds the client's first bytes until
/// `ConnectionPreface` can tell HTTP/1 from HTTP/2, asks `configure` to build the pipeline for
/// that protocol after it, hands it the bytes held, and leaves.
///
/// Bytes that leave it undecided are a prefix of the preface, never a whole HTTP/1 request: a
/// client that sends nothing more within `undecidedTimeout` (the client timeout an idle HTTP/1
/// connection gets) is closed, and so is one still undecided when the listener drains.
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum Spoken {
        case http1
        case http2
    }

    private enum State {
        case sniffing(ByteBuffer?)
        case decided
    }

    private let configure: (ChannelHandlerContext, Spoken) throws -> Void
    private let undecidedTimeout: TimeAmount
    private var state = State.sniffing(nil)
    private var timer: Scheduled<Void>?

    /// - Parameter configure: adds the protocol's handlers after this one (`.after(self)`).
    init(undecidedTimeout: TimeAmount, configure: @escaping (ChannelHandlerContext, Spoken) throws -> Void) {
        self.undecidedTimeout = undecidedTimeout
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: undecidedTimeout) {
            let (sniffer, context) = loopBound.value
            guard case .sniffing = sniffer.state else { return }
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .sniffing(let held) = state else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        if var held {
            held.writeBuffer(&bytes)
            bytes = held
        }
        switch ConnectionPreface.classify(bytes) {
        case .undecided:
            state = .sniffing(bytes)
        case .http1:
            state = .sniffing(bytes)
            decide(.http1, context: context)
        case .http2:
            state = .sniffing(bytes)
            decide(.http2, context: context)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .sniffing = state, event is ChannelShouldQuiesceEvent else {
            return context.fireUserInboundEventTriggered(event)
        }
        // No request has begun: as an idle HTTP/1 connection, it closes at once.
        context.close(promise: nil)
    }

    private func decide(_ protocol: Spoken, context: ChannelHandlerContext) {
        guard case .sniffing(let held) = state else { return }
        state = .decided
        timer?.cancel()
        do {
            try configure(context, `protocol`)
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        if let held {
            context.fireChannelRead(wrapInboundOut(held))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
