import NIOCore
import NIOPosix
import NIOSSL

/// An open connection to the upstream, and the handler at its end.
/// Only ever touched on its channel's event loop; it crosses futures of that same loop, hence unchecked.
final class UpstreamConnection: @unchecked Sendable {
    let channel: any Channel
    let handler: UpstreamHandler
    fileprivate var idleSince = NIODeadline.now()

    init(channel: any Channel, handler: UpstreamHandler) {
        self.channel = channel
        self.handler = handler
    }
}

/// Keep-alive connections to the upstream, for one event loop. It is only ever used on that loop,
/// so it needs no lock; each loop has its own, so a request never hops threads.
final class UpstreamConnectionPool {
    struct Settings: Sendable {
        let target: UpstreamTarget
        let sslContext: NIOSSLContext?
        let connectTimeout: TimeAmount
        /// Idle connections kept per loop; more are closed when they come back.
        let maxIdle: Int
        /// An idle connection unused this long is closed.
        let idleTimeout: TimeAmount
    }

    /// An upstream's response head larger than this is refused (a 502), rather than held without bound.
    static let maxResponseHeadBytes = 256 * 1024

    let eventLoop: any EventLoop
    private let settings: Settings
    private var idle: [UpstreamConnection] = []
    private var sweeper: RepeatedTask?
    private var closed = false

    init(eventLoop: any EventLoop, settings: Settings) {
        self.eventLoop = eventLoop
        self.settings = settings
    }

    /// An idle connection that is still open, if there is one: the common case, with no future.
    func idleConnection() -> UpstreamConnection? {
        eventLoop.preconditionInEventLoop()
        while let connection = idle.popLast() {
            if connection.channel.isActive { return connection }
        }
        return nil
    }



    /// Takes back a connection whose last exchange ended cleanly, or closes it if there is no room.
    func release(_ connection: UpstreamConnection) {
        eventLoop.preconditionInEventLoop()
        connection.handler.sink = nil
        connection.handler.holdReads(false)
        guard !closed, connection.channel.isActive, idle.count < settings.maxIdle else {
            connection.channel.close(promise: nil)
            return
        }
        connection.idleSince = .now()
        idle.append(connection)
        startSweeping()
    }

    /// Closes a connection that can't be reused (it failed, or its exchange was cut short).
    func discard(_ connection: UpstreamConnection) {
        connection.handler.sink = nil
        connection.channel.close(promise: nil)
    }

    func closeAll() {
        eventLoop.preconditionInEventLoop()
        closed = true
        sweeper?.cancel()
        for connection in idle { connection.channel.close(promise: nil) }
        idle.removeAll()
    }

    /// A new connection: TLS (with SNI) when the upstream is https, then the HTTP client codec.
    func connect() -> EventLoopFuture<UpstreamConnection> {
        let settings = self.settings
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(settings.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext = settings.sslContext {
                        let tls = try NIOSSLClientHandler(context: sslContext, serverHostname: settings.target.serverName)
                        try channel.pipeline.syncOperations.addHandler(tls)
                    }
                    try channel.pipeline.syncOperations.addHandler(UpstreamHandler(maxHeadBytes: Self.maxResponseHeadBytes))
                }
            }
            .connect(host: settings.target.host, port: settings.target.port)
            .flatMapThrowing { channel in
                UpstreamConnection(channel: channel, handler: try channel.pipeline.syncOperations.handler(type: UpstreamHandler.self))
            }
    }

    private func startSweeping() {
        guard sweeper == nil else { return }
        let timeout = settings.idleTimeout
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        sweeper = eventLoop.scheduleRepeatedTask(initialDelay: timeout, delay: timeout) { _ in
            let pool = loopBound.value
            let now = NIODeadline.now()
            pool.idle.removeAll { connection in
                let stale = !connection.channel.isActive || now - connection.idleSince >= timeout
                if stale { connection.channel.close(promise: nil) }
                return stale
            }
        }
    }
}

/// One pool per event loop of the group, made up front; each is touched only on its own loop.
final class UpstreamPools: Sendable {
    private let pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>]

    private init(pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>]) {
        self.pools = pools
    }

    static func make(group: MultiThreadedEventLoopGroup, settings: UpstreamConnectionPool.Settings) async throws -> UpstreamPools {
        var pools: [ObjectIdentifier: NIOLoopBound<UpstreamConnectionPool>] = [:]
        for loop in group.makeIterator() {
            pools[ObjectIdentifier(loop)] = try await loop.submit {
                NIOLoopBound(UpstreamConnectionPool(eventLoop: loop, settings: settings), eventLoop: loop)
            }.get()
        }
        return UpstreamPools(pools: pools)
    }

    /// The pool of the loop the caller runs on.
    func pool(for eventLoop: any EventLoop) -> UpstreamConnectionPool {
        guard let pool = pools[ObjectIdentifier(eventLoop)] else {
            preconditionFailure("no upstream pool for event loop \(eventLoop): channels must use the proxy's own group")
        }
        return pool.value
    }

    func closeAll() async {
        for pool in pools.values {
            try? await pool.eventLoop.submit { pool.value.closeAll() }.get()
        }
    }
}
