import NIOCore

/// Holds an HTTP/2 connection's flushes to one per turn of its event loop. Each stream's response
/// ends in a read of its own upstream connection, and NIOHTTP2 flushes the client's connection for
/// each: with 32 streams under way that was a `writev` per response, about a third of the
/// sidecar's time (perf, `benchmarks/h2.sh`). Writes go down at once; the flush that sends them is
/// run once, after the loop's I/O of this turn, so the responses that ended together leave together.
final class FlushCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = Any

    private var scheduled = false

    func flush(context: ChannelHandlerContext) {
        guard !scheduled else { return }
        scheduled = true
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = loopBound.value
            handler.scheduled = false
            context.flush()
        }
    }

    /// What was to be flushed goes before a close (a GOAWAY, the last frames of a drain).
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if scheduled { context.flush() }
        context.close(mode: mode, promise: promise)
    }
}
