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
    /// What every pool shares; each pool adds its target.
    struct Settings: Sendable {
        /// For https targets: system roots plus `--upstream-ca-file`.
        let sslContext: NIOSSLContext?
        let connectTimeout: TimeAmount
        /// Idle connections kept per loop and target; more are closed when they come back.
        let maxIdle: Int
        /// An idle connection unused this long is closed.
        let idleTimeout: TimeAmount
    }

    /// An upstream's response head larger than this is refused (a 502), rather than held without bound.
    static let maxResponseHeadBytes = 256 * 1024

    let eventLoop: any EventLoop
    let target: UpstreamTarget
    private let settings: Settings
    private var idle: [UpstreamConnection] = []
    private var sweeper: RepeatedTask?
    private var closed = false

    init(eventLoop: any EventLoop, target: UpstreamTarget, settings: Settings) {
        self.eventLoop = eventLoop
        self.target = target
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
        connection.handler.dropUnsent()
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
        let target = self.target
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(settings.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if target.isTLS {
                        guard let sslContext = settings.sslContext else { throw UpstreamTLSUnavailable() }
                        let tls = try NIOSSLClientHandler(context: sslContext, serverHostname: target.serverName)
                        try channel.pipeline.syncOperations.addHandler(tls)
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        UpstreamHandler(maxHeadBytes: Self.maxResponseHeadBytes))
                }
            }
            .connect(host: target.host, port: target.port)
            .flatMapThrowing { channel in
                UpstreamConnection(
                    channel: channel, handler: try channel.pipeline.syncOperations.handler(type: UpstreamHandler.self))
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

/// The pools of one event loop, one per upstream target (reverse mode has one; MITM mode one per
/// host reached). Touched only on its loop.
final class LoopPools {
    let eventLoop: any EventLoop
    private let settings: UpstreamConnectionPool.Settings
    private var pools: [UpstreamTarget: UpstreamConnectionPool] = [:]
    private var closed = false

    init(eventLoop: any EventLoop, settings: UpstreamConnectionPool.Settings) {
        self.eventLoop = eventLoop
        self.settings = settings
    }

    func pool(for target: UpstreamTarget) -> UpstreamConnectionPool {
        if let pool = pools[target] { return pool }
        let pool = UpstreamConnectionPool(eventLoop: eventLoop, target: target, settings: settings)
        if closed { pool.closeAll() }
        pools[target] = pool
        return pool
    }

    func closeAll() {
        closed = true
        for pool in pools.values { pool.closeAll() }
    }
}

/// The upstream pools of every event loop of the group, made up front; each is touched only on its own loop.
final class UpstreamPools: Sendable {
    private let loops: [ObjectIdentifier: NIOLoopBound<LoopPools>]

    private init(loops: [ObjectIdentifier: NIOLoopBound<LoopPools>]) {
        self.loops = loops
    }

    static func make(group: MultiThreadedEventLoopGroup, settings: UpstreamConnectionPool.Settings) async throws
        -> UpstreamPools
    {
        var loops: [ObjectIdentifier: NIOLoopBound<LoopPools>] = [:]
        for loop in group.makeIterator() {
            loops[ObjectIdentifier(loop)] = try await loop.submit {
                NIOLoopBound(LoopPools(eventLoop: loop, settings: settings), eventLoop: loop)
            }.get()
        }
        return UpstreamPools(loops: loops)
    }

    /// The pools of one loop, made on it: for a handler driven on an `EmbeddedEventLoop`.
    static func single(loop: any EventLoop, settings: UpstreamConnectionPool.Settings) -> UpstreamPools {
        UpstreamPools(loops: [
            ObjectIdentifier(loop): NIOLoopBound(LoopPools(eventLoop: loop, settings: settings), eventLoop: loop)
        ])
    }

    /// The pool for `target` on the loop the caller runs on.
    func pool(for eventLoop: any EventLoop, target: UpstreamTarget) -> UpstreamConnectionPool {
        guard let loop = loops[ObjectIdentifier(eventLoop)] else {
            preconditionFailure(
                "no upstream pools for event loop \(eventLoop): channels must use the proxy's own group")
        }
        return loop.value.pool(for: target)
    }

    func closeAll() async {
        for loop in loops.values {
            try? await loop.eventLoop.submit { loop.value.closeAll() }.get()
        }
    }
}

/// An https upstream with no TLS set up: a configuration mistake, said plainly.
struct UpstreamTLSUnavailable: Error, CustomStringConvertible {
    var description: String { "TLS to the upstream is not set up" }
}
