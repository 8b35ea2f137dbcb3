import Logging
import NIOCore
import NIOHTTP1
import Wire

/// One client connection, of the reverse listener or of a MITM tunnel: each request becomes an
/// exchange forwarded to the upstream over a pooled connection, with bodies streamed both ways and
/// copied onto the wire. What an exchange does next is `ExchangeStateMachine`'s decision; this
/// handler feeds it what happens and does what it says.
///
/// Back-pressure holds `read()` on whichever side is ahead: the client's while the upstream can't
/// take more, the upstream's while the client can't. Requests pipelined behind the current one wait
/// in the parser, so the sidecar may answer early (an error while the body still arrives) without
/// breaking order.
final class ClientConnectionHandler: ChannelDuplexHandler {
    /// The client's bytes, read by `ClientRequestParser`: the only other handler is the socket (or TLS).
    typealias InboundIn = ByteBuffer
    /// Responses are written as bytes: the upstream's head re-written by `HeaderRules`, its body
    /// slices as they were read. No HTTP encoder sits in the pipeline.
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    typealias Machine = ExchangeStateMachine<UpstreamConnection, ExchangeTap>

    private let settings: ProxySettings
    /// Where this connection's requests go: the reverse listener's upstream, or the host a MITM
    /// client reached.
    private let target: UpstreamTarget
    private let ingress: IngressMode
    /// For a MITM connection carrying absolute-form requests: the host they must all name.
    private let requiredHost: String?
    private let pools: UpstreamPools
    private let publisher: any RecordPublishing
    private let counters: SidecarCounters
    /// With the client's address as metadata, once it is known.
    private var logger: Logger
    // The machine and the parser are values that only this handler touches, on its event loop,
    // through methods that are plain value code: none calls back into the handler, so no two
    // accesses can overlap. The compiler can't see that through a class's stored properties and
    // would check every access at run time (about 4k instructions of a request: benchmarks/cpu.sh).
    @exclusivity(unchecked) private var machine: Machine
    @exclusivity(unchecked) private var parser: ClientRequestParser
    private var response = ClientResponseWriter()
    private var context: ChannelHandlerContext!
    private var pool: UpstreamConnectionPool?
    private var clientAddress = ""
    private var clientIP: String?
    private var counted = false
    /// False where the listener counts its connections itself: behind the protocol sniffer, and on
    /// an HTTP/2 stream, which is no connection of its own.
    private let countsConnection: Bool
    /// The HTTP version the client spoke, where the bytes this handler reads say another: HTTP/2
    /// for a stream, whose request `HTTP2StreamBridge` writes as HTTP/1.1. The records carry it.
    private let clientVersion: HTTPVersion?
    /// A `read()` held back (by the machine's decision), to be issued when it allows.
    private var readPending = false
    private var upstreamNeedsFlush = false
    /// A keep-alive client sends the same credential again and again: its tenant is worked out once.
    private var lastCredential: String?
    private var lastTenant = ""
    private var exchangeTimer = ConnectionTimer()
    /// While a gateway's request waits for its connection: what a retry on another provider needs.
    private var retry: Retry?
    /// The gateway's routes as this connection last read them.
    private var cachedRoutes: GatewayState.Cached?
    /// After a 101: the WebSocket session the connection now carries.
    private var relay: WebSocketRelay?
    /// The exchange under way asks to switch to WebSocket: it goes on a connection of its own
    /// (servers take an upgrade as a connection's first request only, and it is never pooled again).
    private var upgrading = false

    private struct Retry {
        /// The routes the exchange began with.
        let routes: GatewayRoutes?
        let head: ClientRequestHead
        let host: String?
        var tried: [ObjectIdentifier]
        var left: Int
        /// A virtual key's project credential, for a provider without keys of its own.
        let grantCredential: (header: CredentialHeader, value: String)?
        /// The request's body parts so far (and its end), kept to send again after the upstream
        /// took them: nil once they pass `maxHeldBytes` (then only an unsent request is retried).
        var held: [UpstreamRequestPart]? = []
        var heldBytes = 0
        /// The attempt under way writes to a connection from the pool, which may have broken
        /// while idle: if it fails before any answer, the same request goes on a new one.
        var pooled = false

        /// A body up to this size is held for a retry.
        static let maxHeldBytes = 64 << 10

        mutating func hold(_ part: UpstreamRequestPart) {
            guard held != nil else { return }
            if case .body(let buffer) = part {
                heldBytes += buffer.readableBytes
                guard heldBytes <= Self.maxHeldBytes else {
                    held = nil
                    return
                }
            }
            held!.append(part)
        }
    }
    private var idleTimer = ConnectionTimer()

    init(
        settings: ProxySettings, target: UpstreamTarget, ingress: IngressMode = .reverse, requiredHost: String? = nil,
        pools: UpstreamPools, publisher: any RecordPublishing, counters: SidecarCounters, logger: Logger,
        countsConnection: Bool = true, clientVersion: HTTPVersion? = nil
    ) {
        self.countsConnection = countsConnection
        self.clientVersion = clientVersion
        self.settings = settings
        self.target = target
        self.ingress = ingress
        self.requiredHost = requiredHost
        self.pools = pools
        self.publisher = publisher
        self.counters = counters
        self.logger = logger
        self.parser = ClientRequestParser(maxHeadBytes: settings.maxHeaderBytes)
        self.machine = Machine(limits: settings.exchangeLimits, now: .now())
    }

    // MARK: The client connection

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        noteClientAddress(context)
        if context.channel.isActive { countConnection() }
        armIdleTimer()
    }

    func channelActive(context: ChannelHandlerContext) {
        noteClientAddress(context)
        countConnection()
        context.fireChannelActive()
    }

    /// The client's address, once known: in every log line of the connection.
    private func noteClientAddress(_ context: ChannelHandlerContext) {
        guard clientIP == nil, let remote = context.channel.remoteAddress else { return }
        clientIP = remote.ipAddress
        clientAddress = remote.ipAddress.map { "\($0):\(remote.port ?? 0)" } ?? "\(remote)"
        logger[metadataKey: "client"] = "\(clientAddress)"
    }

    /// Once per connection, whether it was active before this handler came (MITM) or after.
    private func countConnection() {
        guard countsConnection, !counted else { return }
        counted = true
        counters.openConnections.add(1, ordering: .relaxed)
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleTimer.cancel()
        exchangeTimer.cancel()
        if counted { counters.openConnections.subtract(1, ordering: .relaxed) }
        counted = false
        if let relay {
            endSession(
                relay.closeHandshakeBegun ? .completed : .clientAborted,
                error: relay.closeHandshakeBegun ? "" : "the client closed the connection without a Close frame")
        }
        if let settlement = machine.clientClosed() { settle(settlement) }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let relay { return relayFromClient(unwrapInboundIn(data), relay) }
        parser.receive(unwrapInboundIn(data))
        processRequests()
    }

    /// Acts on what the client sent, as far as it can be acted on now.
    private func processRequests() {
        while machine.takesRequestEvents {
            let event: ClientRequestParser.Event?
            do {
                event = try parser.next()
            } catch {
                return refuseMalformed(error)
            }
            guard let event else { return }
            handle(event)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushUpstream()
        context.fireChannelReadComplete()
    }

    /// Sends what was written upstream since the last flush: once per read of the client.
    fileprivate func flushUpstream() {
        if upstreamNeedsFlush, let upstream = machine.attachedUpstream { upstream.handler.flush() }
        upstreamNeedsFlush = false
    }

    func read(context: ChannelHandlerContext) {
        switch machine.readDecision(bufferedBytes: parser.bufferedBytes) {
        case .read:
            context.read()
        case .readIfWritable(let upstream) where upstream.channel.isWritable:
            context.read()
        case .hold, .readIfWritable:
            readPending = true
        }
    }

    fileprivate func resumeReading() {
        if readPending {
            readPending = false
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let isWritable = context.channel.isWritable
        let (upstream, deadline) = machine.clientWritabilityChanged(isWritable: isWritable, now: .now())
        upstream?.handler.holdReads(!isWritable)
        if let deadline { armExchangeTimer(by: deadline) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, let relay {
            // A WebSocket session is asked to end: the client answers the Close, the upstream
            // answers the client's, and it closes.
            if relay.clientBoundAtBoundary && !relay.closeHandshakeBegun {
                relay.sidecarCloses(code: 1001)
                context.writeAndFlush(
                    wrapOutboundOut(
                        WebSocketRelay.closeFrame(
                            code: 1001, reason: "the sidecar is shutting down", masked: false,
                            allocator: context.channel.allocator)),
                    promise: nil)
            }
            return
        }
        if event is ChannelShouldQuiesceEvent {
            // Graceful shutdown: finish the exchange under way, then close; an idle connection
            // closes once its client has had a moment to send the request it may have sent already.
            if let deadline = machine.quiesce() {
                idleTimer.set(at: deadline, on: context.eventLoop) { self.idleTimerFired() }
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // I/O errors: the connection is gone; channelInactive settles the exchange.
        logger.debug("client connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// A request that can't be trusted: never forwarded, and the connection closed, since where
    /// the next request would start is unknown.
    private func refuseMalformed(_ error: HTTPFramingError) {
        switch machine.requestMalformed(error, maxHeaderBytes: settings.maxHeaderBytes) {
        case .answer(let answer):
            perform(answer)
        case .closeNow(let settlement):
            if let settlement {
                logReason(.malformed(error), response: nil, exchangeID: settlement.tap.exchangeID)
                settle(settlement)
            }
            context.close(promise: nil)
        }
    }

    // MARK: Requests

    private func handle(_ event: ClientRequestParser.Event) {
        switch event {
        case .head(let head):
            begin(head)
        case .body(let buffer):
            // Parts after a request answered early, before its end arrived, belong to nothing.
            guard let tap = machine.tap else { return }
            tap.requestBody(buffer)
            if retry != nil { retry!.hold(.body(buffer)) }
            switch machine.requestBody(buffer, now: .now()) {
            case .forward(let upstream):
                upstream.handler.send(.body(buffer))
                upstreamNeedsFlush = true
            case .none:
                break
            case .answer(let answer):
                perform(answer)
            }
        case .end:
            guard let tap = machine.tap else { return }
            tap.requestEnded()
            if retry != nil { retry!.hold(.end) }
            switch machine.requestEnd() {
            case .forward(let upstream):
                upstream.handler.send(.end)
                upstreamNeedsFlush = true
            case .none:
                break
            case .connect:
                connectUpstream()
            case .answer(let answer):
                perform(answer)
            }
        }
    }

    private func begin(_ head: ClientRequestHead) {
        if let requiredHost, let (_, host, _) = ProxyTarget.absolute(head.uri), host != requiredHost {
            // One proxy connection, one host: this one was set up for another.
            let response = ProxyErrorResponse.misdirected(
                "this proxy connection serves \(requiredHost); open another for \(host)")
            return perform(machine.refuseHead(response, version: head.version))
        }
        counters.inFlight.add(1, ordering: .relaxed)
        upgrading = head.webSocketUpgrade
        var target = self.target
        let uri: String
        var refusal: ProxyErrorResponse?
        var provider: GatewayRoutes.Provider?
        // The routes as they are now: a reload while this exchange is under way does not move it.
        let routes = settings.gateway?.routes(cache: &cachedRoutes)
        var host: String?
        if let gateway = routes, !gateway.isEmpty {
            host = HeaderRules.host(of: head.headers)
            if let decision = gateway.route(host: host, uri: head.uri) {
                provider = decision.provider
                target = decision.provider.target
                uri = target.basePath + decision.uri
            } else {
                uri = HeaderRules.originForm(head.uri)
                refusal = .noRoute(host: host, path: Credentials.redactedPath(uri))
            }
        } else {
            uri = target.basePath + HeaderRules.originForm(head.uri)
        }
        let presented = Credentials.presented(in: head.headers)
        let decision: PolicyDecision =
            refusal != nil
            ? .passThrough
            : settings.policy.map {
                $0.decide(
                    presented: presented, uri: head.uri, path: uri, nowMs: WallClock.nowUnixNanos() / 1_000_000,
                    nowNanos: NIODeadline.now().uptimeNanoseconds)
            } ?? .passThrough
        var spoken = head
        if let clientVersion { spoken.version = clientVersion }
        let tap = ExchangeTap(
            exchangeID: counters.makeExchangeID(), head: spoken, upstream: target, path: uri,
            clientAddress: clientAddress,
            tenant: tenant(for: presented?.value ?? Credentials.inQuery(head.uri)),
            settings: settings.tap, ingress: ingress, publisher: publisher
        )
        // A provider's own key goes upstream in place of whatever the client sent (chosen only
        // for a request that goes: a refused one takes no turn of the keys' weights).
        var credential: (header: CredentialHeader, value: String)?
        var grantCredential: (header: CredentialHeader, value: String)?
        retry = nil
        var keyID = ""
        var holdsSlot = false
        var allowedModels: Set<String>?
        switch decision {
        case .passThrough:
            // Not a virtual key: a route with client keys wants one of them instead.
            if let clientKeys = provider?.clientKeys, !clientKeys.accepts(head.headers, uri: head.uri) {
                refusal = .invalidClientKey()
            } else if refusal == nil, let chosen = provider?.credential() {
                credential = chosen.pair
                tap.providerKeyID = chosen.keyID
            }
        case .reject(let response, let rejectedKeyID, let projectID):
            tap.policy(keyID: rejectedKeyID, projectID: projectID)
            keyID = rejectedKeyID
            refusal = response
        case .allow(let grant):
            tap.policy(keyID: grant.keyID, projectID: grant.projectID)
            keyID = grant.keyID
            holdsSlot = grant.holdsSlot
            grantCredential = (grant.header, grant.upstreamCredential)
            if let chosen = provider?.credential() {
                credential = chosen.pair
                tap.providerKeyID = chosen.keyID
            } else {
                credential = grantCredential
            }
            if !grant.allowedModels.isEmpty && ModelScanner.modelInPath(uri) == nil {
                allowedModels = grant.allowedModels
            }
        }
        let admission: Machine.Admission
        if let refusal {
            logPolicyRefusal(refusal, exchangeID: tap.exchangeID, keyID: keyID)
            admission = .refuse(refusal)
        } else {
            let headPart = upstreamHead(head, uri: uri, target: target, provider: provider, credential: credential)
            // The model is in the body: hold the request until it has all come, then decide.
            admission = allowedModels.map { .checkModel(head: headPart, allowed: $0) } ?? .forward(head: headPart)
            if let provider, provider.retries > 0 {
                retry = Retry(
                    routes: routes, head: head, host: host, tried: [],
                    left: provider.retries,
                    grantCredential: grantCredential, held: [headPart])
            }
        }
        if refusal == nil { tap.provider = provider }
        let action = machine.requestHead(
            tap: tap, target: target, keepAlive: head.keepAlive, version: head.version,
            expectsContinue: head.expectsContinue,
            path: uri, keyID: keyID, holdsPolicySlot: holdsSlot, admission: admission, now: .now())
        switch action {
        case .connect(let sendContinue):
            if sendContinue { self.sendContinue(version: head.version) }
            connectUpstream()
        case .awaitBody(let sendContinue, let deadline):
            if sendContinue { self.sendContinue(version: head.version) }
            armExchangeTimer(by: deadline)
        case .answer(let answer):
            perform(answer)
        }
    }

    /// The request's head as it goes upstream, to `target` (a gateway's provider, if one chose it).
    private func upstreamHead(
        _ head: ClientRequestHead, uri: String, target: UpstreamTarget, provider: GatewayRoutes.Provider?,
        credential: (header: CredentialHeader, value: String)?
    ) -> UpstreamRequestPart {
        var bytes = context.channel.allocator.buffer(capacity: 1024)
        // Anthropic's API wants its version header; a client of another SDK may not send one. An
        // OAuth token (a command's key) needs the beta that accepts it.
        var extra: StaticString?
        if let provider, provider.kind == .anthropic {
            let version = !HeaderRules.has("anthropic-version", in: head.headers)
            switch (version, provider.sendsOAuth(credential)) {
            case (true, true): extra = "anthropic-version: 2023-06-01\r\nanthropic-beta: oauth-2025-04-20\r\n"
            case (true, false): extra = "anthropic-version: 2023-06-01\r\n"
            case (false, true): extra = "anthropic-beta: oauth-2025-04-20\r\n"
            case (false, false): extra = nil
            }
        }
        HeaderRules.writeUpstreamRequestHead(
            head, uri: uri, target: target, clientIP: clientIP, credential: credential, extraLines: extra,
            webSocket: head.webSocketUpgrade, into: &bytes)
        return .head(bytes, chunked: head.chunked, isHEAD: head.method == .HEAD, upgrade: head.webSocketUpgrade)
    }

    private func sendContinue(version: HTTPVersion) {
        var interim = context.channel.allocator.buffer(capacity: 32)
        LocalResponse.writeContinue(version: version, into: &interim)
        context.writeAndFlush(wrapOutboundOut(interim), promise: nil)
    }

    private func tenant(for credential: String?) -> String {
        guard let credential else { return "" }
        if credential != lastCredential {
            lastCredential = credential
            lastTenant = settings.tenantHasher.tenant(for: credential)
        }
        return lastTenant
    }

    // MARK: The upstream connection

    /// `fresh`: a new connection, not one from the pool (the one before broke). `inClientRead`:
    /// called while a read of the client is handled, whose end flushes what goes upstream; a
    /// retry (called from an upstream's event) must flush itself.
    private func connectUpstream(fresh: Bool = false, inClientRead: Bool = true) {
        machine.tap?.attempts += 1
        retry?.pooled = false
        // One connection's requests go to one upstream unless a gateway routes them apart.
        let target = machine.target ?? self.target
        let pool =
            self.pool.flatMap { $0.target == target ? $0 : nil } ?? pools.pool(for: context.eventLoop, target: target)
        self.pool = pool
        if !fresh, !upgrading, let connection = pool.idleConnection() {
            retry?.pooled = true
            // Inside the read that brought the head: the rest of the request usually came with it,
            // so the flush at the end of this read sends it all in one write.
            connected(connection, flushNow: !inClientRead)
        } else {
            pool.connect().assumeIsolated().whenComplete { result in
                switch result {
                case .success(let connection): self.connected(connection, flushNow: true)
                case .failure(let error): self.connectFailed(error)
                }
            }
        }
    }

    private func connected(_ connection: UpstreamConnection, flushNow: Bool) {
        // Kept only while the request could be sent again: after it reached an upstream, a retry
        // needs its body.
        if retry?.held == nil { retry = nil }
        switch machine.upstreamConnected(connection, now: .now()) {
        case .release:
            pool?.release(connection)
        case .attach(let parts, let deadline):
            connection.handler.sink = self
            connection.handler.holdReads(!context.channel.isWritable)
            for part in parts { connection.handler.send(part) }
            if flushNow { connection.handler.flush() } else { upstreamNeedsFlush = true }
            armExchangeTimer(by: deadline)
            if connection.channel.isWritable { resumeReading() }
        }
    }

    private func connectFailed(_ error: any Error) {
        if retryElsewhere(after: error) { return }
        retry = nil
        if let answer = machine.upstreamConnectFailed(error) { perform(answer) }
    }

    /// A gateway's request whose provider could not be reached (so none of it got there) goes to
    /// the route's next choice, up to the provider's `retries`. True when it went.
    private func retryElsewhere(after error: any Error) -> Bool {
        guard var retry, let tap = machine.tap, let failed = tap.provider,
            let (decision, head, chosen) = nextAttempt(&retry, leaving: failed),
            machine.retarget(decision.provider.target, head: head)
        else { return false }
        failed.log(failed.health.failed(now: NIODeadline.now().uptimeNanoseconds), why: "\(error)", logger: logger)
        exchangeLogger(tap.exchangeID).info(
            "retrying on another provider: none of the request reached the first",
            metadata: ["failed": "\(failed.name)", "provider": "\(decision.provider.name)", "error": "\(error)"])
        go(to: decision.provider, with: chosen, retry: retry, tap: tap)
        return true
    }

    /// The exchange's next attempt, on `provider` with its key `chosen`: the tap says so, and the
    /// connection is asked for (from an upstream's event, so it flushes itself).
    private func go(
        to provider: GatewayRoutes.Provider, with chosen: GatewayRoutes.Provider.Credential?, retry: Retry,
        tap: ExchangeTap
    ) {
        tap.provider = provider
        tap.providerKeyID = chosen?.keyID ?? ""
        self.retry = retry
        connectUpstream(inClientRead: false)
    }

    /// The route's next provider for the request, and its head written for it; `retry` counts the
    /// try. Nil when no try is left, or no other provider.
    private func nextAttempt(_ retry: inout Retry, leaving failed: GatewayRoutes.Provider) -> (
        GatewayRoutes.Decision, UpstreamRequestPart, GatewayRoutes.Provider.Credential?
    )? {
        guard retry.left > 0, let gateway = retry.routes else { return nil }
        retry.tried.append(ObjectIdentifier(failed))
        retry.left -= 1
        guard let decision = gateway.route(host: retry.host, uri: retry.head.uri, excluding: retry.tried) else {
            return nil
        }
        let target = decision.provider.target
        let chosen = decision.provider.credential()
        let head = upstreamHead(
            retry.head, uri: target.basePath + decision.uri, target: target, provider: decision.provider,
            credential: chosen?.pair ?? retry.grantCredential)
        if retry.held != nil { retry.held![0] = head }
        return (decision, head, chosen)
    }

    /// The provider answered with a status it retries on (`retry_on`) before any of the answer
    /// went to the client: the request, held whole so far, goes to the route's next provider.
    /// True when it went.
    private func replayElsewhere(status: UInt) -> Bool {
        guard var retry, retry.held != nil, let tap = machine.tap, let failed = tap.provider,
            let (decision, _, chosen) = nextAttempt(&retry, leaving: failed), let parts = retry.held,
            let answered = machine.replay(to: decision.provider.target, parts: parts)
        else { return false }
        giveUp(answered)
        // A 5xx counts against its health; a 429 says only that it is busy.
        if status >= 500 {
            failed.log(
                failed.health.failed(now: NIODeadline.now().uptimeNanoseconds), why: "status \(status)", logger: logger)
        }
        exchangeLogger(tap.exchangeID).info(
            "retrying on another provider: the first answered a status its retry_on lists, and none of it reached the client",
            metadata: ["failed": "\(failed.name)", "provider": "\(decision.provider.name)", "status": "\(status)"])
        go(to: decision.provider, with: chosen, retry: retry, tap: tap)
        return true
    }

    /// A connection from the pool broke before any answer (it had been closed while idle): the
    /// request, held whole so far, goes again to the same provider on a new connection, once.
    private func replayOnNewConnection(after error: any Error) -> Bool {
        guard var retry, retry.pooled, let parts = retry.held, let target = machine.target, let tap = machine.tap,
            let broken = machine.replay(to: target, parts: parts)
        else { return false }
        giveUp(broken)
        retry.pooled = false
        self.retry = retry
        exchangeLogger(tap.exchangeID).info(
            "a pooled upstream connection broke before answering; sending the request again on a new one",
            metadata: ["error": "\(error)"])
        connectUpstream(fresh: true, inClientRead: false)
        return true
    }

    /// An upstream connection whose answer is not wanted: closed, and nothing of it read on.
    private func giveUp(_ connection: UpstreamConnection) {
        connection.handler.sink = nil
        connection.channel.close(promise: nil)
    }

    // MARK: Timers

    private func armExchangeTimer(by deadline: NIODeadline) {
        guard exchangeTimer.firesTooLate(for: deadline) else { return }
        exchangeTimer.set(at: deadline, on: context.eventLoop) { self.exchangeTimerFired() }
    }

    private func exchangeTimerFired() {
        exchangeTimer.fired()
        switch machine.exchangeTimerFired(now: .now(), readHeld: readPending) {
        case .none:
            break
        case .check(let deadline):
            exchangeTimer.set(at: deadline, on: context.eventLoop) { self.exchangeTimerFired() }
        case .answer(let answer):
            perform(answer)
        case .fail(let failure):
            perform(failure)
        case .clientStoppedReading(let settlement):
            if let relay {
                // A WebSocket session's client: its end record says how far the session went.
                self.relay = nil
                relay.tap.webSocket = relay.finalSession
            }
            let count = counters.stalledClients.add(1, ordering: .relaxed).newValue
            if LogSampling.isWorthLogging(occurrence: count) {
                exchangeLogger(settlement.tap.exchangeID).warning(
                    "a client stopped reading its response; closing",
                    metadata: [
                        "count": "\(count)", "timeout_s": "\(settings.clientTimeout.nanoseconds / 1_000_000_000)",
                    ])
            }
            settle(settlement)
            context.close(promise: nil)
        }
    }

    /// No exchange under way: the client has --client-timeout to start (and finish the head of)
    /// its next request. Set again only when it fires early.
    private func armIdleTimer() {
        guard let deadline = machine.idleDeadline, idleTimer.firesTooLate(for: deadline), let context else { return }
        idleTimer.set(at: deadline, on: context.eventLoop) { self.idleTimerFired() }
    }

    private func idleTimerFired() {
        idleTimer.fired()
        switch machine.idleTimerFired(now: .now(), bufferedBytes: parser.bufferedBytes) {
        case .none:
            break
        case .check(let deadline):
            idleTimer.set(at: deadline, on: context.eventLoop) { self.idleTimerFired() }
        case .answer(let answer):
            perform(answer)
        case .close:
            context.close(promise: nil)
        }
    }

    // MARK: Ending exchanges

    /// Writes an answer of the sidecar's own, settles the exchange it ends, then closes or moves on.
    private func perform(_ answer: Machine.LocalAnswer) {
        logReason(answer.reason, response: answer.response, exchangeID: answer.settlement?.tap.exchangeID)
        var bytes = context.channel.allocator.buffer(capacity: 512)
        LocalResponse.write(
            answer.response, shape: answer.shape, exchangeID: answer.settlement?.tap.exchangeID, close: answer.close,
            version: answer.version, into: &bytes)
        if let settlement = answer.settlement { settle(settlement) }
        context.write(wrapOutboundOut(bytes), promise: nil)
        endResponse(then: answer.close ? .close : .next, terminator: nil)
    }

    fileprivate func perform(_ failure: Machine.FailureAction) {
        switch failure {
        case .answer(let answer):
            perform(answer)
        case .closeNow(let settlement):
            exchangeLogger(settlement.tap.exchangeID).warning(
                "upstream failed mid-response; closing the client connection",
                metadata: ["error": "\(settlement.error)"])
            settle(settlement)
            context.close(promise: nil)
        }
    }

    /// The exchange is over: the tap records how, the upstream connection goes back to the pool or
    /// closes, and a policy slot it held is given back.
    fileprivate func settle(_ settlement: Machine.Settlement) {
        if let upstream = settlement.upstream, let pool {
            if settlement.reusable { pool.release(upstream) } else { pool.discard(upstream) }
        }
        settlement.tap.finish(
            outcome: settlement.outcome, status: settlement.status, error: settlement.error,
            rejectReason: settlement.rejectReason)
        if let provider = settlement.tap.provider { judge(provider, by: settlement) }
        counters.inFlight.subtract(1, ordering: .relaxed)
        if let keyID = settlement.releasesSlotOf { settings.policy?.release(keyID: keyID) }
    }

    /// Passive health: what the provider's answer (or its silence) says of it.
    private func judge(_ provider: GatewayRoutes.Provider, by settlement: Machine.Settlement) {
        let change: ProviderHealth.Change?
        switch settlement.outcome {
        case .upstreamError, .timeout:
            change = provider.health.failed(now: NIODeadline.now().uptimeNanoseconds)
        case .completed:
            change =
                settlement.tap.status >= 500
                ? provider.health.failed(now: NIODeadline.now().uptimeNanoseconds) : provider.health.succeeded()
            // Its key was refused: one from a command is fetched again.
            if settlement.tap.status == 401 { provider.keyRefused() }
        default:
            // Refused here, or the client left: nothing said of the provider.
            change = nil
        }
        provider.log(
            change, why: settlement.error.isEmpty ? "status \(settlement.tap.status)" : settlement.error, logger: logger
        )
    }

    /// Writes the response's end (the last chunk, when chunked), then closes once it is out, or
    /// moves on to the next request.
    private func endResponse(then: Machine.Then, terminator: ByteBuffer?) {
        if let head = response.takePending() { context.write(wrapOutboundOut(head), promise: nil) }
        let written = context.writeAndFlush(wrapOutboundOut(terminator ?? Self.noBytes))
        switch then {
        case .close:
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        case .next:
            exchangeDone()
        }
    }

    /// The exchange is over and the connection stays: start the next pipelined request, if any.
    private func exchangeDone() {
        machine.becameIdle(now: .now())
        armIdleTimer()
        processRequests()
        // A replayed request was not read just now, so no end of a read will flush it.
        flushUpstream()
        resumeReading()
    }

    fileprivate static let noBytes = ByteBuffer()

    // MARK: Logging

    /// The connection's logger with the exchange's id (when there is one): made only for a line
    /// that is logged, never per exchange.
    fileprivate func exchangeLogger(_ exchangeID: String?) -> Logger {
        var logger = self.logger
        if let exchangeID { logger[metadataKey: "exchange_id"] = "\(exchangeID)" }
        return logger
    }

    private func logPolicyRefusal(_ response: ProxyErrorResponse, exchangeID: String, keyID: String) {
        let count = counters.policyRejections.add(1, ordering: .relaxed).newValue
        guard LogSampling.isWorthLogging(occurrence: count) else { return }
        exchangeLogger(exchangeID).info(
            "refused a request by policy",
            metadata: [
                "status": "\(response.status.code)", "reason": "\(response.rejectReason)", "key_id": "\(keyID)",
                "count": "\(count)",
            ])
    }

    /// Logs (and counts) why the sidecar answered itself, as each reason deserves.
    private func logReason(_ reason: Machine.Reason, response: ProxyErrorResponse?, exchangeID: String?) {
        let status = response?.status
        let timeout = "\(settings.clientTimeout.nanoseconds / 1_000_000_000)"
        switch reason {
        case .malformed(let error):
            let count = counters.malformedRequests.add(1, ordering: .relaxed).newValue
            if LogSampling.isWorthLogging(occurrence: count) {
                exchangeLogger(exchangeID).warning(
                    "refused a malformed request",
                    metadata: ["status": "\(status?.code ?? 0)", "error": "\(error)", "count": "\(count)"])
            }
        case .modelNotAllowed(let keyID):
            if let response, let exchangeID { logPolicyRefusal(response, exchangeID: exchangeID, keyID: keyID) }
        case .requestHeadTimeout:
            exchangeLogger(exchangeID).warning(
                "a client took too long to send a request head", metadata: ["timeout_s": "\(timeout)"])
        case .requestBodyTimeout:
            exchangeLogger(exchangeID).warning(
                "a client stopped sending its request body", metadata: ["timeout_s": "\(timeout)"])
        case .upstreamFailed(let error):
            exchangeLogger(exchangeID).warning(
                "upstream failed", metadata: ["status": "\(status?.code ?? 0)", "error": "\(error)"])
        case .policy, .misdirected, .modelCheckTooLarge:
            // A refusal at the head was logged then.
            break
        }
    }
}

// MARK: Responses from the upstream

extension ClientConnectionHandler: UpstreamResponseSink {
    func upstreamResponseHead(_ head: UpstreamResponseHead) {
        if head.status == .switchingProtocols { return switchProtocols(head) }
        if retry != nil {
            if let provider = machine.tap?.provider, provider.retryOn.contains(head.status.code),
                replayElsewhere(status: head.status.code)
            {
                return
            }
            // Answered: nothing of the request is sent again, and its body need not be kept.
            retry = nil
        }
        guard
            case .write(let framing, let close, let version) = machine.upstreamHead(
                keepAlive: head.keepAlive, framing: head.framing, now: .now()), let tap = machine.tap
        else { return }
        tap.responseHead(status: head.status, headers: head.headers)
        var bytes = context.channel.allocator.buffer(capacity: 1024)
        HeaderRules.writeClientResponseHead(
            head, exchangeID: tap.exchangeID, framing: framing, close: close, version: version, into: &bytes)
        response.hold(bytes)
    }

    func upstreamResponseBody(_ buffer: ByteBuffer) {
        if let relay { return relayFromUpstream(buffer, relay) }
        guard buffer.readableBytes > 0, let framing = machine.upstreamBody(now: .now()), let tap = machine.tap else {
            return
        }
        tap.responseBody(buffer)
        response.body(buffer, framing: framing, allocator: context.channel.allocator) { bytes in
            context.write(wrapOutboundOut(bytes), promise: nil)
        }
        if !context.channel.isWritable, let upstream = machine.attachedUpstream {
            upstream.handler.holdReads(true)
        }
    }

    func upstreamReadComplete() {
        // Each read of the upstream leaves at once: a streamed event is never held back.
        if let head = response.takePending() { context.write(wrapOutboundOut(head), promise: nil) }
        context.flush()
    }

    func upstreamResponseEnd() {
        if let relay {
            return endSession(
                relay.closeHandshakeBegun ? .completed : .upstreamError,
                error: relay.closeHandshakeBegun ? "" : "the upstream closed the connection without a Close frame")
        }
        guard let completion = machine.upstreamEnd() else { return }
        settle(completion.settlement)
        endResponse(then: completion.then, terminator: completion.chunked ? ChunkedFraming.lastChunk : nil)
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { resumeReading() }
    }

    func upstreamFailed(_ error: any Error) {
        if let relay {
            return endSession(relay.closeHandshakeBegun ? .completed : .upstreamError, error: "\(error)")
        }
        if retry != nil, replayOnNewConnection(after: error) { return }
        if let failure = machine.upstreamFailed(error) { perform(failure) }
    }
}

// MARK: WebSocket

extension ClientConnectionHandler {
    /// The upstream accepted the upgrade: its 101 goes to the client, and from now on the bytes
    /// both ways are WebSocket frames, checked and tapped by a `WebSocketRelay` as they pass.
    fileprivate func switchProtocols(_ head: UpstreamResponseHead) {
        retry = nil
        guard machine.upstreamSwitchedProtocols(now: .now()), let tap = machine.tap else {
            // The parser takes a 101 only for an upgrade; one before the request ended can't be.
            if let failure = machine.upstreamFailed(
                UpstreamProtocolError(detail: "a 101 came before the upgrade request ended"))
            {
                perform(failure)
            }
            return
        }
        exchangeTimer.cancel()
        tap.responseHead(status: head.status, headers: head.headers)
        tap.webSocket = WebSocketSessionFields()
        var bytes = context.channel.allocator.buffer(capacity: 512)
        HeaderRules.writeSwitchingProtocolsHead(head, exchangeID: tap.exchangeID, into: &bytes)
        context.write(wrapOutboundOut(bytes), promise: nil)
        let relay = WebSocketRelay(
            tap: tap, maxMessageBytes: settings.maxWebSocketMessageBytes, maxCaptureBytes: settings.tap.maxCaptureBytes)
        self.relay = relay
        // Frames the client sent before the 101 came wait in the parser.
        let early = parser.takeBuffered()
        if early.readableBytes > 0 {
            relayFromClient(early, relay)
            flushUpstream()
        }
        resumeReading()
    }

    /// The client's bytes, as far as they are valid frames, go upstream (flushed at the read's end).
    fileprivate func relayFromClient(_ buffer: ByteBuffer, _ relay: WebSocketRelay) {
        guard let upstream = machine.attachedUpstream else { return }
        let scan = relay.client(buffer)
        if let carried = scan.carried { upstream.handler.send(.body(carried)) }
        if scan.forward > 0 {
            upstream.handler.send(.body(buffer.getSlice(at: buffer.readerIndex, length: scan.forward)!))
        }
        upstreamNeedsFlush = true
        if let violation = scan.violation { violated(violation, byClient: true) }
    }

    /// The upstream's bytes, as far as they are valid frames, go to the client (flushed at the
    /// upstream read's end); its reads wait while the client can't take more.
    fileprivate func relayFromUpstream(_ buffer: ByteBuffer, _ relay: WebSocketRelay) {
        let scan = relay.upstream(buffer)
        if let carried = scan.carried { context.write(wrapOutboundOut(carried), promise: nil) }
        if scan.forward > 0 {
            context.write(wrapOutboundOut(buffer.getSlice(at: buffer.readerIndex, length: scan.forward)!), promise: nil)
        }
        if !context.channel.isWritable, let upstream = machine.attachedUpstream { upstream.handler.holdReads(true) }
        if let violation = scan.violation { violated(violation, byClient: false) }
    }

    /// A frame broke the protocol: nothing of it went on. The client gets a Close with the
    /// violation's code (1002 or 1009) and the upstream one too (1001, going away, when the client
    /// broke it), each only where no frame is half written to it; then both connections close.
    private func violated(_ violation: WebSocketViolation, byClient: Bool) {
        guard let relay else { return }
        relay.violated(violation)
        let count = counters.malformedRequests.add(1, ordering: .relaxed).newValue
        if LogSampling.isWorthLogging(occurrence: count) {
            exchangeLogger(relay.tap.exchangeID).warning(
                "closed a WebSocket session that broke the protocol",
                metadata: [
                    "by": "\(byClient ? "client" : "upstream")", "error": "\(violation.reason)",
                    "close_code": "\(violation.code)", "count": "\(count)",
                ])
        }
        let allocator = context.channel.allocator
        if relay.clientBoundAtBoundary {
            let reason = byClient ? violation.reason : "the upstream broke the protocol: \(violation.reason)"
            context.write(
                wrapOutboundOut(
                    WebSocketRelay.closeFrame(code: violation.code, reason: reason, masked: false, allocator: allocator)
                ),
                promise: nil)
        }
        if relay.upstreamBoundAtBoundary, let upstream = machine.attachedUpstream {
            let frame =
                byClient
                ? WebSocketRelay.closeFrame(
                    code: 1001, reason: "the client broke the protocol", masked: true, allocator: allocator)
                : WebSocketRelay.closeFrame(
                    code: violation.code, reason: violation.reason, masked: true, allocator: allocator)
            upstream.handler.send(.body(frame))
            upstream.handler.flush()
        }
        endSession(
            byClient ? .clientAborted : .upstreamError,
            error: "\(byClient ? "the client" : "the upstream") broke the WebSocket protocol: \(violation)")
    }

    /// The session is over: its end record goes out, the upstream connection closes, and the
    /// client's closes once what was written to it is out.
    fileprivate func endSession(_ outcome: Outcome, error: String) {
        guard let relay else { return }
        self.relay = nil
        relay.tap.webSocket = relay.finalSession
        if let settlement = machine.tunnelEnded(outcome: outcome, error: error) { settle(settlement) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(Self.noBytes)).whenComplete { _ in channel.close(promise: nil) }
    }
}
