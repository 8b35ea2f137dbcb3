import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Wire

/// The first handler of a connection to the MITM listener (an app's `HTTPS_PROXY`). It reads the
/// first request and turns the connection into what it asks for:
/// - `CONNECT` to an allowlisted host: 200, then TLS with a leaf minted for that host, then the
///   same proxy path as reverse mode (`ClientConnectionHandler`), ingress `mitm`;
/// - `CONNECT` to any other host: 200, then a blind tunnel (or 403 with `--deny-unlisted`);
/// - an absolute-form `http://` request: to an allowlisted host, forwarded over https; to any
///   other, as plain HTTP without analysis (or 403).
/// It then takes itself out of the pipeline.
///
/// In front of a gateway listener with `connect_tunnel_enabled` (`reverse`), a connection whose
/// first request is `CONNECT` becomes a blind tunnel (its port in --mitm-ports, its client key in
/// `Proxy-Authorization` when `auth_keys` are set: else 407); any other becomes the gateway's.
final class MITMFrontHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        case reading
        /// Deciding, connecting or minting: bytes that come meanwhile wait in `held`.
        case switching
        case done
    }

    /// A gateway listener's: where its other requests go, and the client keys a tunnel needs.
    struct Reverse: Sendable {
        let settings: ProxySettings
        let target: UpstreamTarget
    }

    private let settings: MITMSettings
    private let pools: UpstreamPools
    private let leaves: LeafContextCache?
    private let reverse: Reverse?
    private let publisher: any RecordPublishing
    private let counters: SidecarCounters
    private let logger: Logger
    private var state = State.reading
    private var parser: ClientRequestParser
    /// Every byte read so far, for a plain request that is handed whole to the proxy handler.
    private var received = ByteBuffer()
    private var held = ByteBuffer()
    /// A graceful drain began while switching: the handler that takes over is told when it is in place.
    private var quiesceWhenSwitched = false

    init(
        settings: MITMSettings, pools: UpstreamPools, leaves: LeafContextCache?, reverse: Reverse? = nil,
        publisher: any RecordPublishing, counters: SidecarCounters, logger: Logger
    ) {
        self.settings = settings
        self.pools = pools
        self.leaves = leaves
        self.reverse = reverse
        self.publisher = publisher
        self.counters = counters
        self.logger = logger
        self.parser = ClientRequestParser(maxHeadBytes: settings.proxy.maxHeaderBytes)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // The first request (CONNECT, usually) must arrive within the client timeout.
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: settings.proxy.clientTimeout) {
            let (handler, context) = loopBound.value
            guard case .reading = handler.state, context.channel.isActive else { return }
            handler.refuse(
                context, .requestTimeout(handler.settings.proxy.clientTimeout),
                why: "no proxy request within the client timeout")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        switch state {
        case .done:
            context.fireChannelRead(data)
        case .switching:
            held.writeImmutableBuffer(buffer)
        case .reading:
            received.writeImmutableBuffer(buffer)
            parser.receive(buffer)
            do {
                guard case .head(let head) = try parser.next() else { return }
                state = .switching
                route(head, context: context)
            } catch {
                refuse(
                    context,
                    error.status == .requestHeaderFieldsTooLarge
                        ? .headersTooLarge(limit: settings.proxy.maxHeaderBytes) : .badRequest(error.description),
                    why: error.description)
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            switch state {
            case .reading:
                // No request yet, so nothing to finish: a graceful drain need not wait for this client.
                state = .done
                context.close(promise: nil)
                return
            case .switching:
                quiesceWhenSwitched = true
                return
            case .done:
                break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func route(_ head: ClientRequestHead, context: ChannelHandlerContext) {
        if let reverse { return routeForGateway(head, reverse: reverse, context: context) }
        if head.method == .CONNECT {
            guard let (host, port) = connectTarget(head, context: context) else { return }
            let tunnelBytes = parser.takeBuffered()
            held.writeImmutableBuffer(tunnelBytes)
            if settings.allowlist.contains(host) {
                intercept(host: host, port: port, context: context)
            } else if settings.denyUnlisted {
                refuse(
                    context, .forbidden("\(host) is not on the allowlist"),
                    why: "CONNECT to \(host), not allowlisted (--deny-unlisted)")
            } else {
                tunnel(host: host, port: port, context: context)
            }
            return
        }
        guard let (scheme, host, port) = ProxyTarget.absolute(head.uri) else {
            return refuse(
                context, .badRequest("this is an HTTP proxy: send CONNECT host:port, or an absolute http:// URL"),
                why: "a request in origin form: \(head.uri)")
        }
        guard scheme == "http" else {
            return refuse(
                context, .badRequest("\(scheme):// requests go through CONNECT"),
                why: "absolute-form \(scheme):// request")
        }
        let allowlisted = settings.allowlist.contains(host)
        if !allowlisted && settings.denyUnlisted {
            return refuse(
                context, .forbidden("\(host) is not on the allowlist"),
                why: "a request for \(host), not allowlisted (--deny-unlisted)")
        }
        // Allowlisted hosts are reached over https, as the app meant to; others as asked, unanalysed.
        let target =
            (try? UpstreamTarget(
                url: allowlisted
                    ? "https://\(Authority(host: host, port: nil).bracketedHost)"
                    : "http://\(Authority(host: host, port: nil).bracketedHost):\(port)"))
        guard let target else {
            return refuse(context, .badRequest("cannot forward to \(host)"), why: "unusable host \(host)")
        }
        let handler = ClientConnectionHandler(
            settings: settings.proxy, target: target, ingress: .mitm, requiredHost: host, pools: pools,
            publisher: allowlisted ? publisher : NoRecords(), counters: counters, logger: logger
        )
        // The proxy handler reads the request again, from its first byte.
        hand(over: handler, replaying: received, context: context)
    }

    /// A gateway listener's connection: a tunnel, or the gateway's from its first byte.
    private func routeForGateway(_ head: ClientRequestHead, reverse: Reverse, context: ChannelHandlerContext) {
        guard head.method == .CONNECT else {
            let handler = ClientConnectionHandler(
                settings: reverse.settings, target: reverse.target, pools: pools, publisher: publisher,
                counters: counters, logger: logger)
            return hand(over: handler, replaying: received, context: context)
        }
        guard let (host, port) = connectTarget(head, context: context) else { return }
        if let keys = reverse.settings.gateway?.routes.clientKeys, !keys.acceptsProxyAuthorization(head.headers) {
            return refuse(
                context, .proxyAuthenticationRequired(), why: "CONNECT to \(host):\(port) without a client key")
        }
        held.writeImmutableBuffer(parser.takeBuffered())
        tunnel(host: host, port: port, context: context)
    }

    // MARK: CONNECT

    /// A CONNECT's host and port, when it names both and the port is in --mitm-ports; otherwise
    /// it is refused (400, 403) and nil.
    private func connectTarget(_ head: ClientRequestHead, context: ChannelHandlerContext) -> (String, Int)? {
        guard let (host, port) = ProxyTarget.connect(head.uri) else {
            refuse(
                context, .badRequest("CONNECT needs host:port, not \(head.uri)"),
                why: "CONNECT without a port: \(head.uri)")
            return nil
        }
        guard settings.ports.contains(port) else {
            refuse(
                context, .forbidden("CONNECT to port \(port) is not allowed (--mitm-ports)"),
                why: "CONNECT to \(host):\(port), outside --mitm-ports")
            return nil
        }
        return (host, port)
    }

    private func intercept(host: String, port: Int, context: ChannelHandlerContext) {
        guard let leaves else { return refuse(context, .forbidden("this listener does not decrypt"), why: "no CA") }
        respond200(context)
        let channel = context.channel
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        leaves.context(for: host, on: context.eventLoop).whenComplete {
            [settings, pools, publisher, counters, logger] result in
            let (handler, context) = loopBound.value
            switch result {
            case .failure(let error):
                logger.error(
                    "closing a MITM connection: no certificate for its host",
                    metadata: ["host": "\(host)", "error": "\(error)"])
                channel.close(promise: nil)
            case .success(let tlsContext):
                guard
                    let target = try? UpstreamTarget(
                        url: "https://\(Authority(host: host, port: nil).bracketedHost)\(port == 443 ? "" : ":\(port)")"
                    )
                else {
                    channel.close(promise: nil)
                    return
                }
                do {
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .after(handler))
                    let tls = try operations.handler(type: NIOSSLServerHandler.self)
                    try operations.addHandler(TLSFailureLogger(host: host, logger: logger), position: .after(tls))
                    // The TLS failure logger is the last handler: HTTP/1.1 or HTTP/2 (ALPN) after it.
                    try ExchangePipeline.install(
                        on: channel, settings: settings.proxy, counters: counters, logger: logger
                    ) {
                        ClientConnectionHandler(
                            settings: settings.proxy, target: target, ingress: .mitm, pools: pools,
                            publisher: publisher, counters: counters, logger: logger, countsConnection: false,
                            clientVersion: $0)
                    }
                } catch {
                    logger.error(
                        "closing a MITM connection: cannot set up TLS",
                        metadata: ["host": "\(host)", "error": "\(error)"])
                    channel.close(promise: nil)
                    return
                }
                handler.finishSwitch(context: context)
            }
        }
    }

    private func tunnel(host: String, port: Int, context: ChannelHandlerContext) {
        let channel = context.channel
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let started = NIODeadline.now()
        let logger = self.logger
        let (inside, outside) = TunnelHandler.matchedPair { bytes in
            logger.debug(
                "tunnel closed",
                metadata: [
                    "host": "\(host)", "port": "\(port)", "bytes": "\(bytes)",
                    "ms": "\((NIODeadline.now() - started).nanoseconds / 1_000_000)",
                ])
        }
        // Both ends live on this connection's loop (the upstream channel is made on it too).
        let ends = NIOLoopBound((inside, outside), eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .connectTimeout(settings.connectTimeout)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { upstream in
                upstream.eventLoop.makeCompletedFuture { try upstream.pipeline.syncOperations.addHandler(ends.value.1) }
            }
            .connect(host: host, port: port)
            .whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .failure(let error):
                    handler.refuse(
                        context, .tunnelUnreachable(host: host, port: port, error),
                        why: "cannot open a tunnel to \(host):\(port): \(error)")
                case .success:
                    handler.respond200(context)
                    _ = channel.setOption(.allowRemoteHalfClosure, value: true)
                    do {
                        try channel.pipeline.syncOperations.addHandler(ends.value.0, position: .after(handler))
                    } catch {
                        channel.close(promise: nil)
                        return
                    }
                    handler.finishSwitch(context: context)
                }
            }
    }

    // MARK: Switching

    private func hand(over next: any ChannelHandler, replaying bytes: ByteBuffer, context: ChannelHandlerContext) {
        do {
            try context.pipeline.syncOperations.addHandler(next, position: .after(self))
        } catch {
            context.close(promise: nil)
            return
        }
        held = bytes
        finishSwitch(context: context)
    }

    /// The handlers after this one are in place: they get what was held, and this one leaves.
    private func finishSwitch(context: ChannelHandlerContext) {
        state = .done
        let bytes = held
        held = ByteBuffer()
        received = ByteBuffer()
        if bytes.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
        }
        if quiesceWhenSwitched { context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        context.read()
    }

    private func respond200(_ context: ChannelHandlerContext) {
        var bytes = context.channel.allocator.buffer(capacity: 64)
        LocalResponse.writeConnectionEstablished(into: &bytes)
        context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ response: ProxyErrorResponse, why: String) {
        state = .done
        logger.warning(
            "refused a proxy request",
            metadata: [
                "client": "\(context.channel.remoteAddress.map { "\($0)" } ?? "")", "status": "\(response.status.code)",
                "reason": "\(why)",
            ])
        var bytes = context.channel.allocator.buffer(capacity: 256)
        LocalResponse.write(response, exchangeID: nil, close: true, version: .http1_1, into: &bytes)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(bytes)).whenComplete { _ in channel.close(promise: nil) }
    }
}
