import NIOCore
import NIOHTTP1

/// The exchange an upstream connection currently serves.
protocol UpstreamResponseSink: AnyObject {
    func upstreamResponseHead(_ head: UpstreamResponseHead)
    func upstreamResponseBody(_ buffer: ByteBuffer)
    func upstreamResponseEnd()
    func upstreamReadComplete()
    func upstreamWritabilityChanged(isWritable: Bool)
    /// The connection failed or closed before the response ended.
    func upstreamFailed(_ error: any Error)
}

/// A piece of a request on its way upstream.
enum UpstreamRequestPart {
    /// The head, written already (`HeaderRules.writeUpstreamRequestHead`), and how its body is
    /// framed; `upgrade`: it asks to switch to WebSocket, so a 101 may answer it.
    case head(ByteBuffer, chunked: Bool, isHEAD: Bool, upgrade: Bool = false)
    case body(ByteBuffer)
    case end
}

/// The only handler of an upstream connection (after TLS, for https): it writes request parts as
/// bytes, reads the response with `UpstreamResponseParser`, and hands it to the exchange it serves.
/// Its reads are held while the client can't take more (back-pressure).
final class UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    weak var sink: (any UpstreamResponseSink)?
    private var context: ChannelHandlerContext?
    private var parser: UpstreamResponseParser
    private var requestChunked = false
    /// A request head not yet written: a small body that follows it in the same read joins it, so
    /// the two go out as one write (one TLS record to an https upstream, not two).
    private var pendingHead: ByteBuffer?
    static let coalesceLimit = 16 << 10
    private var readsHeld = false
    private var readPending = false

    init(maxHeadBytes: Int) {
        self.parser = UpstreamResponseParser(maxHeadBytes: maxHeadBytes)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Toward the upstream

    func send(_ part: UpstreamRequestPart) {
        guard let context else { return }
        switch part {
        case .head(let head, let chunked, let isHEAD, let upgrade):
            writePendingHead(context)
            requestChunked = chunked
            parser.expectResponse(toHEAD: isHEAD, upgrade: upgrade)
            pendingHead = head
        case .body(let buffer):
            guard buffer.readableBytes > 0 else { return }
            if !requestChunked, var head = pendingHead, head.readableBytes + buffer.readableBytes <= Self.coalesceLimit
            {
                head.writeImmutableBuffer(buffer)
                pendingHead = head
                return
            }
            writePendingHead(context)
            if requestChunked {
                context.write(
                    wrapOutboundOut(
                        ChunkedFraming.sizeLine(buffer.readableBytes, allocator: context.channel.allocator)),
                    promise: nil)
                context.write(wrapOutboundOut(buffer), promise: nil)
                context.write(wrapOutboundOut(ChunkedFraming.crlf), promise: nil)
            } else {
                context.write(wrapOutboundOut(buffer), promise: nil)
            }
        case .end:
            writePendingHead(context)
            if requestChunked { context.write(wrapOutboundOut(ChunkedFraming.lastChunk), promise: nil) }
        }
    }

    func flush() {
        guard let context else { return }
        writePendingHead(context)
        context.flush()
    }

    /// The connection goes back to the pool: nothing of the last request may linger.
    func dropUnsent() {
        pendingHead = nil
    }

    private func writePendingHead(_ context: ChannelHandlerContext) {
        if let head = pendingHead {
            pendingHead = nil
            context.write(wrapOutboundOut(head), promise: nil)
        }
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
        guard sink != nil else {
            // Nothing is expected on an idle connection: it can't be trusted with another request.
            context.close(promise: nil)
            return
        }
        parser.receive(unwrapInboundIn(data))
        do {
            // One event at a time: the sink may end the exchange and start the next on this very
            // connection (its request is sent from inside `upstreamResponseEnd`).
            while let event = try parser.next() {
                guard let sink = self.sink else {
                    // The exchange let go of the connection mid-response; what follows can't be used.
                    context.close(promise: nil)
                    return
                }
                switch event {
                case .head(let head): sink.upstreamResponseHead(head)
                case .body(let buffer): sink.upstreamResponseBody(buffer)
                case .end: sink.upstreamResponseEnd()
                }
            }
        } catch {
            fail(context: context, error: UpstreamProtocolError(detail: error.description))
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        sink?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        sink?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(context: context, error: error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let sink = self.sink
        do {
            // A body that runs until the upstream closes ends here.
            if case .end = try parser.endOfInput() { sink?.upstreamResponseEnd() }
            if !parser.isBusy, self.sink != nil {
                // Closed between a request and its response.
                self.sink = nil
                sink?.upstreamFailed(UpstreamClosed())
            }
        } catch {
            self.sink = nil
            sink?.upstreamFailed(UpstreamClosed())
        }
        context.fireChannelInactive()
    }

    private func fail(context: ChannelHandlerContext, error: any Error) {
        let sink = self.sink
        self.sink = nil
        context.close(promise: nil)
        sink?.upstreamFailed(error)
    }
}

/// The upstream broke HTTP/1.1: its response can't be relayed or its connection reused.
struct UpstreamProtocolError: Error, CustomStringConvertible {
    let detail: String
    var description: String { "the upstream's response is not valid HTTP/1.1: \(detail)" }
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
