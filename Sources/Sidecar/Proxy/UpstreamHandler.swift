import NIOCore
import NIOHTTP1

/// The exchange an upstream connection currently serves.
protocol UpstreamResponseSink: AnyObject {
    func upstreamResponseHead(_ head: HTTPResponseHead)
    func upstreamResponseBody(_ buffer: ByteBuffer)
    func upstreamResponseEnd()
    func upstreamReadComplete()
    func upstreamWritabilityChanged(isWritable: Bool)
    /// The connection failed or closed before the response ended.
    func upstreamFailed(_ error: any Error)
}

/// The last handler of an upstream connection: hands the response to the exchange it serves and
/// takes its request parts. Its reads are held while the client can't take more (back-pressure).
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    weak var sink: (any UpstreamResponseSink)?
    private var context: ChannelHandlerContext?
    private var readsHeld = false
    private var readPending = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Toward the upstream

    func send(_ part: HTTPClientRequestPart) {
        context?.write(wrapOutboundOut(part), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    /// Stops or resumes reading the upstream, as the client's connection can take more or not.
    func holdReads(_ hold: Bool) {
        readsHeld = hold
        if !hold, readPending, let context {
            readPending = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if readsHeld {
            readPending = true
        } else {
            context.read()
        }
    }

    // MARK: From the upstream

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let sink else {
            // Nothing is expected on an idle connection: it can't be trusted with another request.
            context.close(promise: nil)
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head): sink.upstreamResponseHead(head)
        case .body(let buffer): sink.upstreamResponseBody(buffer)
        case .end: sink.upstreamResponseEnd()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        sink?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        sink?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let sink = self.sink
        self.sink = nil
        context.close(promise: nil)
        sink?.upstreamFailed(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let sink = self.sink
        self.sink = nil
        sink?.upstreamFailed(UpstreamClosed())
        context.fireChannelInactive()
    }
}

/// The upstream closed the connection before the response ended.
struct UpstreamClosed: Error, CustomStringConvertible {
    var description: String { "the upstream closed the connection before the response ended" }
}

/// The upstream said nothing for longer than the upstream timeout.
struct UpstreamTimedOut: Error, CustomStringConvertible {
    let timeout: TimeAmount
    var description: String { "the upstream sent nothing for \(timeout.nanoseconds / 1_000_000_000) s" }
}
