import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// One keep-alive connection sending requests one after another while any are left.
enum Worker {
    static func run(
        group: MultiThreadedEventLoopGroup, target: Target, sslContext: NIOSSLContext?, head: HTTPRequestHead,
        body: ByteBuffer, remaining: RequestBudget, timeout: TimeAmount
    ) async throws -> [Sample] {
        var samples: [Sample] = []
        var connection: Connection?
        while remaining.take() {
            do {
                if connection == nil {
                    connection = try await Connection.open(group: group, target: target, sslContext: sslContext)
                }
                let sample = try await connection!.send(head: head, body: body, timeout: timeout)
                samples.append(sample)
                if !sample.ok || !sample.keepAlive {
                    connection?.close()
                    connection = nil
                }
            } catch {
                samples.append(Sample(latency: .zero, timeToFirstByte: nil, ok: false))
                connection?.close()
                connection = nil
            }
        }
        connection?.close()
        return samples
    }
}

/// A client connection with one request in flight at a time.
final class Connection: Sendable {
    let channel: any Channel
    let handler: ResponseTimer

    init(channel: any Channel, handler: ResponseTimer) {
        self.channel = channel
        self.handler = handler
    }

    static func open(group: MultiThreadedEventLoopGroup, target: Target, sslContext: NIOSSLContext?) async throws
        -> Connection
    {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: sslContext, serverHostname: target.host))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseTimer())
                }
            }
            .connect(host: target.host, port: target.port).get()
        let handler = try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: ResponseTimer.self)
        }.get()
        return Connection(channel: channel, handler: handler)
    }

    func send(head: HTTPRequestHead, body: ByteBuffer, timeout: TimeAmount) async throws -> Sample {
        let promise = channel.eventLoop.makePromise(of: Sample.self)
        let handler = self.handler
        let channel = self.channel
        channel.eventLoop.execute {
            handler.start(promise: promise, timeout: timeout)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        return try await promise.futureResult.get()
    }

    func close() {
        channel.close(promise: nil)
    }
}

/// Times the response to the request under way: first body byte, end, status.
final class ResponseTimer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart

    // Only touched on the channel's event loop.
    private var promise: EventLoopPromise<Sample>?
    private var started = NIODeadline.now()
    private var firstByte: NIODeadline?
    private var status = 0
    private var keepAlive = true
    private var timer: Scheduled<Void>?

    func start(promise: EventLoopPromise<Sample>, timeout: TimeAmount) {
        self.promise = promise
        started = .now()
        firstByte = nil
        status = 0
        timer = promise.futureResult.eventLoop.scheduleTask(in: timeout) { [self] in
            self.finish(ok: false)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
            keepAlive = head.isKeepAlive
        case .body:
            if firstByte == nil { firstByte = .now() }
        case .end:
            finish(ok: (200..<300).contains(status))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(ok: false)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(ok: false)
        context.close(promise: nil)
    }

    private func finish(ok: Bool) {
        guard let promise else { return }
        self.promise = nil
        timer?.cancel()
        let end = NIODeadline.now()
        let latency = Duration.nanoseconds((end - started).nanoseconds)
        let ttfb = firstByte.map { Duration.nanoseconds(($0 - started).nanoseconds) }
        promise.succeed(Sample(latency: latency, timeToFirstByte: ttfb, ok: ok, keepAlive: keepAlive))
    }
}
