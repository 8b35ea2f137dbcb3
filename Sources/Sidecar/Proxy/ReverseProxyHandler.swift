import Logging
import NIOCore
import NIOHTTP1
import Wire

/// What every connection's handler shares.
struct ProxySettings: Sendable {
    let tap: TapSettings
    let tenantHasher: TenantHasher
    /// The upstream may be silent this long (before its answer, or between two pieces of it).
    let upstreamTimeout: TimeAmount
    /// A client connection may be idle this long between requests, or take this long to send a
    /// request head (a slow-loris client gets 408).
    let clientTimeout: TimeAmount
    let maxHeaderBytes: Int
    /// Virtual keys, limits and budgets; nil without `--policy`.
    var policy: PolicyGate?
    /// Client connections open at once, both listeners together (`--max-connections`).
    var maxConnections = 10_000
    /// Bytes of pipelined requests held while an exchange is under way; past it, reading pauses.
    let maxPipelinedBytes = 1 << 20
    /// Body bytes held to find the model for a key limited to some models; past it, 413.
    let maxModelCheckBytes = 4 << 20
}

/// One client connection of the reverse listener: each request becomes an exchange forwarded to
/// the upstream over a pooled connection, with bodies streamed both ways and copied onto the wire.
///
/// Back-pressure holds `read()` on whichever side is ahead: the client's while the upstream can't
/// take more, the upstream's while the client can't. Requests pipelined behind the current one wait
/// here, so the sidecar may answer early (an error while the body still arrives) without breaking order.
final class ReverseProxyHandler: ChannelDuplexHandler {
    /// The client's bytes, read by `ClientRequestParser`: the only other handler is the socket.
    typealias InboundIn = ByteBuffer
    /// Responses are written as bytes: the upstream's head re-written by `HeaderRules`, its body
    /// slices as they were read. No HTTP encoder sits in the pipeline.
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    fileprivate enum State {
        case idle
        case exchanging(Exchange)
        case closed
    }

    private let settings: ProxySettings
    /// Where this connection's requests go: the reverse listener's upstream, or the host a MITM
    /// client reached.
    private let target: UpstreamTarget
    private let ingress: IngressMode
    /// For a MITM connection carrying absolute-form requests: the host they must all name.
    private let requiredHost: String?
    private var counted = false
    private let pools: UpstreamPools
    private let publisher: any RecordPublishing
    private let counters: SidecarCounters
    private let logger: Logger
    private var state = State.idle
    private var context: ChannelHandlerContext!
    private var clientAddress = ""
    private var clientIP: String?
    private var parser: ClientRequestParser
    private var readPending = false
    private var upstreamNeedsFlush = false
    private var quiescing = false
    /// A keep-alive client sends the same credential again and again: its tenant is worked out once.
    private var lastCredential: String?
    private var lastTenant = ""
    private var timeoutCheck: Scheduled<Void>?
    private var timeoutCheckDeadline = NIODeadline.distantFuture
    /// Since when the client's connection can't take more (it does not read), while an exchange is under way.
    private var unwritableSince: NIODeadline?
    /// The response head, held until the end of the upstream read that brought it: a small body
    /// in the same read joins it, so the client gets one write (one TLS record in MITM mode).
    private var pendingResponse: ByteBuffer?
    private var idleCheck: Scheduled<Void>?
    private var idleSince = NIODeadline.now()

    init(
        settings: ProxySettings, target: UpstreamTarget, ingress: IngressMode = .reverse, requiredHost: String? = nil,
        pools: UpstreamPools, publisher: any RecordPublishing, counters: SidecarCounters, logger: Logger
    ) {
        self.settings = settings
        self.target = target
        self.ingress = ingress
        self.requiredHost = requiredHost
        self.pools = pools
        self.publisher = publisher
        self.counters = counters
        self.logger = logger
        self.parser = ClientRequestParser(maxHeadBytes: settings.maxHeaderBytes)
    }

    // MARK: The client connection

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { countConnection() }
        becameIdle()
        if let remote = context.channel.remoteAddress {
            clientIP = remote.ipAddress
            clientAddress = remote.ipAddress.map { "\($0):\(remote.port ?? 0)" } ?? "\(remote)"
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        countConnection()
        context.fireChannelActive()
    }

    /// Once per connection, whether it was active before this handler came (MITM) or after.
    private func countConnection() {
        guard !counted else { return }
        counted = true
        counters.openConnections.add(1, ordering: .relaxed)
    }

    func channelInactive(context: ChannelHandlerContext) {
        idleCheck?.cancel()
        idleCheck = nil
        if counted { counters.openConnections.subtract(1, ordering: .relaxed) }
        counted = false
        timeoutCheck?.cancel()
        timeoutCheck = nil
        if case .exchanging(let exchange) = state, !exchange.finished {
            detachUpstream(exchange, reusable: false)
            exchange.tap.finish(
                outcome: .clientAborted, error: "the client closed the connection before the response ended")
            markFinished(exchange)
        }
        state = .closed
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.receive(unwrapInboundIn(data))
        processRequests()
    }

    /// Acts on what the client sent, as far as it can be acted on now: a request behind one whose
    /// exchange is still under way (pipelining) stays in the parser until that exchange is done.
    private func processRequests() {
        while true {
            switch state {
            case .closed: return
            case .exchanging(let exchange) where exchange.requestEnded: return
            case .idle, .exchanging: break
            }
            let event: ClientRequestParser.Event?
            do {
                event = try parser.next()
            } catch {
                refuseMalformed(error)
                return
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
    private func flushUpstream() {
        if upstreamNeedsFlush, case .exchanging(let exchange) = state, case .attached(let upstream) = exchange.upstream
        {
            upstream.handler.flush()
        }
        upstreamNeedsFlush = false
    }

    func read(context: ChannelHandlerContext) {
        if case .exchanging(let exchange) = state {
            if exchange.requestEnded {
                // Keep reading (so a client that goes away is noticed), but not without bound.
                if parser.bufferedBytes >= settings.maxPipelinedBytes {
                    readPending = true
                    return
                }
            } else {
                switch exchange.upstream {
                case .connecting:
                    readPending = true
                    return
                case .attached(let upstream) where !upstream.channel.isWritable:
                    readPending = true
                    return
                case .attached, .detached, .holding:
                    break
                }
            }
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .exchanging(let exchange) = state, case .attached(let upstream) = exchange.upstream {
            upstream.handler.holdReads(!context.channel.isWritable)
        }
        if context.channel.isWritable {
            unwritableSince = nil
        } else if unwritableSince == nil, currentExchange != nil {
            // A client that stops reading its response holds the upstream too: it has
            // --client-timeout to start reading again.
            let now = NIODeadline.now()
            unwritableSince = now
            ensureTimeoutCheck(by: now + settings.clientTimeout)
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Graceful shutdown: finish the exchange under way, then close; close an idle connection now.
            quiescing = true
            if case .idle = state { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // I/O errors: the connection is gone; channelInactive settles the exchange.
        logger.debug("client connection error", metadata: ["client": "\(clientAddress)", "error": "\(error)"])
        context.close(promise: nil)
    }

    /// A request that can't be trusted: answered with 400 (or 431), never forwarded, and the
    /// connection closed, since where the next request would start is unknown.
    private func refuseMalformed(_ error: ClientRequestParser.Malformed) {
        let count = counters.malformedRequests.add(1, ordering: .relaxed).newValue
        let response =
            error.status == .requestHeaderFieldsTooLarge
            ? ProxyErrorResponse.headersTooLarge(limit: settings.maxHeaderBytes)
            : ProxyErrorResponse.badRequest(error.description)
        if LogSampling.isWorthLogging(occurrence: count) {
            logger.warning(
                "refused a malformed request",
                metadata: [
                    "client": "\(clientAddress)", "status": "\(response.status.code)", "error": "\(error)",
                    "count": "\(count)",
                ])
        }
        switch state {
        case .idle:
            respondLocally(response, exchange: nil, outcome: .rejected, error: error.description, forceClose: true)
        case .exchanging(let exchange) where !exchange.responseStarted && !exchange.finished:
            // Whatever was already sent upstream is cut off unfinished, so the upstream never acts on it.
            detachUpstream(exchange, reusable: false)
            respondLocally(response, exchange: exchange, outcome: .rejected, error: error.description, forceClose: true)
        case .exchanging, .closed:
            context.close(promise: nil)
        }
        state = .closed
    }

    // MARK: Requests

    private func handle(_ event: ClientRequestParser.Event) {
        switch state {
        case .closed:
            return
        case .idle:
            // Parts after a request answered early, before its end arrived, belong to nothing.
            guard case .head(let head) = event else { return }
            begin(head)
        case .exchanging(let exchange):
            switch event {
            case .head:
                preconditionFailure("the request parser delivered a head before the previous request's end")
            case .body(let buffer):
                // The body has --client-timeout between two pieces, whatever the upstream does.
                exchange.lastClientActivity = .now()
                exchange.tap.requestBody(buffer)
                forward(.body(buffer), exchange)
            case .end:
                // Request trailers are not forwarded: they are rare, and no LLM API reads them.
                exchange.requestEnded = true
                exchange.tap.requestEnded()
                if let rejection = exchange.pendingRejection {
                    // Refused by policy: answered now the body is read, so the connection stays usable.
                    exchange.pendingRejection = nil
                    return respondLocally(
                        rejection, exchange: exchange, outcome: .rejected, error: rejection.message, forceClose: false)
                }
                forward(.end, exchange)
                if case .holding(let parts, _) = exchange.upstream, let allowed = exchange.allowedModels {
                    return checkModel(exchange, parts: parts, allowed: allowed)
                }
                if exchange.finished && !exchange.closeAfterResponse { exchangeDone() }
            }
        }
    }

    private func begin(_ head: ClientRequestHead) {
        if let requiredHost, let (_, host, _) = MITMFrontHandler.absoluteURL(head.uri), host != requiredHost {
            // One proxy connection, one host: this one was set up for another.
            respondLocally(
                .misdirected("this proxy connection serves \(requiredHost); open another for \(host)"),
                exchange: nil, outcome: .rejected, error: "misdirected", forceClose: true)
            state = .closed
            return
        }
        counters.inFlight.add(1, ordering: .relaxed)
        let uri = target.basePath + HeaderRules.originForm(head.uri)
        let presented = HeaderRules.presentedCredential(in: head.headers)
        let decision =
            settings.policy.map {
                $0.decide(
                    presented: presented, uri: head.uri, path: uri, nowMs: WallClock.nowUnixNanos() / 1_000_000,
                    nowNanos: NIODeadline.now().uptimeNanoseconds)
            } ?? .passThrough
        let tenant = tenant(for: presented?.value ?? HeaderRules.queryCredential(head.uri))
        let tap = ExchangeTap(
            exchangeID: counters.makeExchangeID(), head: head, upstream: target, path: uri,
            clientAddress: clientAddress, tenant: tenant, settings: settings.tap, ingress: ingress, publisher: publisher
        )
        let exchange = Exchange(tap: tap, clientKeepAlive: head.keepAlive, version: head.version, path: uri)
        state = .exchanging(exchange)
        var credential: (header: CredentialHeader, value: String)?
        switch decision {
        case .passThrough:
            break
        case .reject(let response, let keyID, let projectID):
            tap.policy(keyID: keyID, projectID: projectID)
            logPolicyRefusal(response, exchange: exchange, keyID: keyID)
            if head.expectsContinue {
                // The client waits before sending its body: answer now, and close (its body may still come).
                respondLocally(
                    response, exchange: exchange, outcome: .rejected, error: response.message, forceClose: true)
            } else {
                exchange.pendingRejection = response
                watchClientBody(exchange)
            }
            return
        case .allow(let grant):
            tap.policy(keyID: grant.keyID, projectID: grant.projectID)
            exchange.keyID = grant.keyID
            exchange.holdsPolicySlot = grant.holdsSlot
            credential = (grant.header, grant.upstreamCredential)
            if !grant.allowedModels.isEmpty && ModelScanner.modelInPath(uri) == nil {
                exchange.allowedModels = grant.allowedModels
            }
        }
        var upstreamHead = context.channel.allocator.buffer(capacity: 1024)
        HeaderRules.writeUpstreamRequestHead(
            head, uri: uri, target: target, clientIP: clientIP, credential: credential, into: &upstreamHead)
        let headPart = UpstreamRequestPart.head(upstreamHead, chunked: head.chunked, isHEAD: head.method == .HEAD)
        if exchange.allowedModels != nil {
            // The model is in the body: hold the request until it has all come, then decide.
            exchange.upstream = .holding([headPart], bytes: 0)
            watchClientBody(exchange)
            if head.expectsContinue { sendContinue(version: head.version) }
            return
        }
        exchange.upstream = .connecting(buffered: [headPart])
        if head.expectsContinue { sendContinue(version: head.version) }
        connectUpstream(exchange)
    }

    private func sendContinue(version: HTTPVersion) {
        let status: StaticString =
            version.minor >= 1 ? "HTTP/1.1 100 Continue\r\n\r\n" : "HTTP/1.0 100 Continue\r\n\r\n"
        var interim = context.channel.allocator.buffer(capacity: 32)
        interim.writeStaticString(status)
        context.writeAndFlush(wrapOutboundOut(interim), promise: nil)
    }

    private func logPolicyRefusal(_ response: ProxyErrorResponse, exchange: Exchange, keyID: String) {
        let count = counters.policyRejections.add(1, ordering: .relaxed).newValue
        if LogSampling.isWorthLogging(occurrence: count) {
            logger.info(
                "refused a request by policy",
                metadata: [
                    "exchange_id": "\(exchange.tap.exchangeID)", "status": "\(response.status.code)",
                    "reason": "\(response.rejectReason)",
                    "key_id": "\(keyID)", "client": "\(clientAddress)", "count": "\(count)",
                ])
        }
    }

    /// A key limited to some models, and the request has ended: forward it if its model is allowed.
    private func checkModel(_ exchange: Exchange, parts: [UpstreamRequestPart], allowed: Set<String>) {
        exchange.allowedModels = nil
        var body: [UInt8] = []
        for case .body(let buffer) in parts { body.append(contentsOf: buffer.readableBytesView) }
        let refusal: ProxyErrorResponse?
        switch ModelScanner.topLevelModel(body) {
        case .model(let model) where allowed.contains(model):
            refusal = nil
        case .model(let model):
            refusal = PolicyGate.refusal(
                .forbidden, "model_not_allowed", "this virtual key may not use the model \(model)")
        case .none, .unreadable:
            refusal = PolicyGate.refusal(
                .forbidden, "model_not_allowed",
                "this virtual key is limited to some models, and the request names none")
        }
        if let refusal {
            exchange.upstream = .detached
            logPolicyRefusal(refusal, exchange: exchange, keyID: exchange.keyID)
            return respondLocally(
                refusal, exchange: exchange, outcome: .rejected, error: refusal.message, forceClose: false)
        }
        exchange.upstream = .connecting(buffered: parts)
        connectUpstream(exchange)
    }

    private func connectUpstream(_ exchange: Exchange) {
        let pool = pools.pool(for: context.eventLoop, target: target)
        if let connection = pool.idleConnection() {
            // Inside the read that brought the head: the rest of the request usually came with it,
            // so the flush at the end of this read sends it all in one write.
            connected(.success(connection), exchange: exchange, pool: pool, flushNow: false)
        } else {
            pool.connect().assumeIsolated().whenComplete { result in
                self.connected(result, exchange: exchange, pool: pool, flushNow: true)
            }
        }
    }

    private func tenant(for credential: String?) -> String {
        guard let credential else { return "" }
        if credential != lastCredential {
            lastCredential = credential
            lastTenant = settings.tenantHasher.tenant(for: credential)
        }
        return lastTenant
    }

    private func connected(
        _ result: Result<UpstreamConnection, any Error>, exchange: Exchange, pool: UpstreamConnectionPool,
        flushNow: Bool
    ) {
        guard case .connecting(let buffered) = exchange.upstream, !exchange.finished else {
            // The exchange ended while connecting (the client left, or a malformed body): the
            // connection was never used, so it can serve the next one.
            if case .success(let connection) = result { pool.release(connection) }
            return
        }
        switch result {
        case .failure(let error):
            exchange.upstream = .detached
            fail(exchange, error: error)
        case .success(let connection):
            exchange.upstream = .attached(connection)
            exchange.pool = pool
            connection.handler.sink = self
            connection.handler.holdReads(!context.channel.isWritable)
            for part in buffered { connection.handler.send(part) }
            if flushNow { connection.handler.flush() } else { upstreamNeedsFlush = true }
            exchange.lastUpstreamActivity = .now()
            // No body piece yet: the body's clock starts now.
            if !exchange.requestEnded && exchange.lastClientActivity == .distantPast {
                exchange.lastClientActivity = exchange.lastUpstreamActivity
            }
            ensureTimeoutCheck(
                by: exchange.lastUpstreamActivity + min(settings.upstreamTimeout, settings.clientTimeout))
            if readPending && connection.channel.isWritable {
                readPending = false
                context.read()
            }
        }
    }

    private func forward(_ part: UpstreamRequestPart, _ exchange: Exchange) {
        switch exchange.upstream {
        case .connecting(var buffered):
            buffered.append(part)
            exchange.upstream = .connecting(buffered: buffered)
        case .holding(var parts, var bytes):
            exchange.lastClientActivity = .now()
            if case .body(let buffer) = part { bytes += buffer.readableBytes }
            parts.append(part)
            exchange.upstream = .holding(parts, bytes: bytes)
            if bytes > settings.maxModelCheckBytes {
                exchange.upstream = .detached
                exchange.allowedModels = nil
                let response = ProxyErrorResponse(
                    status: .payloadTooLarge, type: "invalid_request_error", code: "request_too_large",
                    message:
                        "this virtual key is limited to some models, and a request body over \(settings.maxModelCheckBytes) bytes can't be checked",
                    rejectReason: "model_not_allowed"
                )
                respondLocally(
                    response, exchange: exchange, outcome: .rejected, error: response.message, forceClose: true)
            }
        case .attached(let upstream):
            upstream.handler.send(part)
            upstreamNeedsFlush = true
            exchange.lastUpstreamActivity = .now()
        case .detached:
            break
        }
    }

    private func resumeReading() {
        if readPending {
            readPending = false
            context.read()
        }
    }

    // MARK: Ending exchanges

    private func markFinished(_ exchange: Exchange) {
        guard !exchange.finished else { return }
        exchange.finished = true
        counters.inFlight.subtract(1, ordering: .relaxed)
        if exchange.holdsPolicySlot {
            exchange.holdsPolicySlot = false
            settings.policy?.release(keyID: exchange.keyID)
        }
    }

    private func detachUpstream(_ exchange: Exchange, reusable: Bool) {
        if case .attached(let upstream) = exchange.upstream, let pool = exchange.pool {
            if reusable { pool.release(upstream) } else { pool.discard(upstream) }
        }
        exchange.upstream = .detached
    }

    /// The exchange is over and the connection stays: start the next pipelined request, if any.
    private func exchangeDone() {
        state = .idle
        becameIdle()
        processRequests()
        // A replayed request was not read just now, so no end of a read will flush it.
        flushUpstream()
        resumeReading()
    }

    private func fail(_ exchange: Exchange, error: any Error) {
        detachUpstream(exchange, reusable: false)
        let timedOut = error is UpstreamTimedOut
        if !exchange.responseStarted {
            let response =
                timedOut
                ? ProxyErrorResponse.upstreamTimeout(target, settings.upstreamTimeout)
                : ProxyErrorResponse.upstreamUnreachable(target, error)
            logger.warning(
                "upstream failed",
                metadata: [
                    "exchange_id": "\(exchange.tap.exchangeID)", "status": "\(response.status.code)",
                    "error": "\(error)",
                ])
            respondLocally(
                response, exchange: exchange, outcome: timedOut ? .timeout : .upstreamError, error: "\(error)",
                forceClose: false)
        } else {
            // Mid-response: closing is the only honest answer; a client must never take a cut-short body for a whole one.
            logger.warning(
                "upstream failed mid-response; closing the client connection",
                metadata: [
                    "exchange_id": "\(exchange.tap.exchangeID)", "error": "\(error)",
                ])
            exchange.tap.finish(outcome: timedOut ? .timeout : .upstreamError, error: "\(error)")
            markFinished(exchange)
            state = .closed
            context.close(promise: nil)
        }
    }

    /// Answers in the provider's error shape, and settles the exchange if there is one.
    private func respondLocally(
        _ response: ProxyErrorResponse, exchange: Exchange?, outcome: Outcome, error: String, forceClose: Bool
    ) {
        let close = forceClose || quiescing || exchange.map { !$0.requestEnded || !$0.clientKeepAlive } ?? true
        var bytes = context.channel.allocator.buffer(capacity: 512)
        HeaderRules.writeLocalResponse(
            status: response.status, contentType: "application/json",
            body: response.body(shape: exchange.map { .forPath($0.path) } ?? .openAI),
            exchangeID: exchange?.tap.exchangeID, close: close, version: exchange?.version ?? .http1_1,
            retryAfter: response.retryAfter, into: &bytes
        )
        context.write(wrapOutboundOut(bytes), promise: nil)
        if let exchange {
            exchange.responseStarted = true
            exchange.closeAfterResponse = close
            exchange.tap.finish(
                outcome: outcome, status: UInt32(response.status.code), error: error,
                rejectReason: response.rejectReason)
            markFinished(exchange)
        }
        endResponse(close: close, requestEnded: exchange?.requestEnded == true, terminator: nil)
    }

    /// Writes the response's end (the last chunk, when chunked), then closes once it is out, or
    /// moves on to the next request if this one has been read whole.
    private func endResponse(close: Bool, requestEnded: Bool, terminator: ByteBuffer?) {
        writePendingResponse()
        let written = context.writeAndFlush(wrapOutboundOut(terminator ?? Self.noBytes))
        if close {
            state = .closed
            let channel = context.channel
            written.whenComplete { _ in channel.close(promise: nil) }
        } else if requestEnded {
            exchangeDone()
        }
    }

    /// One timer per connection, not per exchange: when it fires it looks at whichever exchange is
    /// under way, and it is only set again while one is. Setting and cancelling a timer for every
    /// request costs more than the request's own bookkeeping.
    private func scheduleTimeoutCheck(at deadline: NIODeadline) {
        timeoutCheckDeadline = deadline
        timeoutCheck = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.timeoutCheck = nil
            guard let exchange = self.currentExchange else { return }
            switch exchange.upstream {
            case .attached:
                let now = NIODeadline.now()
                if let since = self.unwritableSince {
                    // The upstream is not read while the client does not read: its silence is not its fault.
                    exchange.lastUpstreamActivity = now
                    if now >= since + self.settings.clientTimeout {
                        return self.clientStoppedReading(exchange)
                    }
                }
                var due = exchange.lastUpstreamActivity + self.settings.upstreamTimeout
                if let since = self.unwritableSince { due = min(due, since + self.settings.clientTimeout) }
                if !exchange.requestEnded && !exchange.responseStarted {
                    // The body is still coming: while the client is read (not held back by the
                    // upstream), a silence is the client's, and the answer is 408, not 504.
                    if self.readPending { exchange.lastClientActivity = now }
                    let clientDue = exchange.lastClientActivity + self.settings.clientTimeout
                    if now >= clientDue {
                        self.logger.warning(
                            "a client stopped sending its request body",
                            metadata: [
                                "exchange_id": "\(exchange.tap.exchangeID)", "client": "\(self.clientAddress)",
                                "timeout_s": "\(self.settings.clientTimeout.nanoseconds / 1_000_000_000)",
                            ])
                        self.detachUpstream(exchange, reusable: false)
                        return self.respondLocally(
                            .requestTimeout(self.settings.clientTimeout, body: true), exchange: exchange,
                            outcome: .rejected, error: "request body timeout", forceClose: true)
                    }
                    due = min(due, clientDue)
                }
                if now >= exchange.lastUpstreamActivity + self.settings.upstreamTimeout {
                    self.fail(exchange, error: UpstreamTimedOut(timeout: self.settings.upstreamTimeout))
                } else {
                    // Never further than --client-timeout ahead: then a later exchange's client
                    // deadline is never earlier than this timer, and it need not be set again.
                    self.scheduleTimeoutCheck(at: min(due, now + self.settings.clientTimeout))
                }
            case .holding,
                .detached where exchange.pendingRejection != nil:
                // The request is being read before anything is sent (a model check, or a refusal
                // waiting for the body's end): the client has --client-timeout between two pieces.
                let due = exchange.lastClientActivity + self.settings.clientTimeout
                if NIODeadline.now() >= due {
                    exchange.upstream = .detached
                    exchange.pendingRejection = nil
                    self.respondLocally(
                        .requestTimeout(self.settings.clientTimeout, body: true), exchange: exchange,
                        outcome: .rejected,
                        error: "request body timeout", forceClose: true)
                } else {
                    self.scheduleTimeoutCheck(at: due)
                }
            case .connecting, .detached:
                return
            }
        }
    }

    /// The client has not read its response for --client-timeout: the exchange ends as the client's
    /// abort, and both connections close (the upstream's answer can't be delivered).
    private func clientStoppedReading(_ exchange: Exchange) {
        let count = counters.stalledClients.add(1, ordering: .relaxed).newValue
        if LogSampling.isWorthLogging(occurrence: count) {
            logger.warning(
                "a client stopped reading its response; closing",
                metadata: [
                    "exchange_id": "\(exchange.tap.exchangeID)", "client": "\(clientAddress)", "count": "\(count)",
                    "timeout_s": "\(settings.clientTimeout.nanoseconds / 1_000_000_000)",
                ])
        }
        detachUpstream(exchange, reusable: false)
        exchange.tap.finish(
            outcome: .clientAborted,
            error: "the client stopped reading the response for \(settings.clientTimeout.nanoseconds / 1_000_000_000) s"
        )
        markFinished(exchange)
        state = .closed
        context.close(promise: nil)
    }

    /// Makes sure the timer fires by `deadline`. Timers are set at most --client-timeout ahead, so
    /// one under way is almost always soon enough, and cancelling it is rare.
    private func ensureTimeoutCheck(by deadline: NIODeadline) {
        if let timeoutCheck {
            guard timeoutCheckDeadline > deadline else { return }
            timeoutCheck.cancel()
        }
        scheduleTimeoutCheck(at: deadline)
    }

    /// Waits for the client's body with a deadline (see `scheduleTimeoutCheck`).
    private func watchClientBody(_ exchange: Exchange) {
        exchange.lastClientActivity = .now()
        ensureTimeoutCheck(by: exchange.lastClientActivity + settings.clientTimeout)
    }

    private static let noBytes = ByteBuffer()

    /// No exchange under way: the client has `clientTimeout` to start (and finish the head of) its
    /// next request. One timer per connection, set again only when it fires early.
    private func becameIdle() {
        idleSince = .now()
        guard idleCheck == nil, let context else { return }
        scheduleIdleCheck(at: idleSince + settings.clientTimeout, context: context)
    }

    private func scheduleIdleCheck(at deadline: NIODeadline, context: ChannelHandlerContext) {
        idleCheck = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.idleCheck = nil
            guard case .idle = self.state else { return }
            let due = self.idleSince + self.settings.clientTimeout
            guard NIODeadline.now() >= due else { return self.scheduleIdleCheck(at: due, context: context) }
            if self.parser.bufferedBytes > 0 {
                self.logger.warning(
                    "a client took too long to send a request head",
                    metadata: [
                        "client": "\(self.clientAddress)",
                        "timeout_s": "\(self.settings.clientTimeout.nanoseconds / 1_000_000_000)",
                    ])
                self.respondLocally(
                    .requestTimeout(self.settings.clientTimeout), exchange: nil, outcome: .rejected,
                    error: "request head timeout", forceClose: true)
            } else {
                self.state = .closed
                context.close(promise: nil)
            }
        }
    }

    private var currentExchange: Exchange? {
        if case .exchanging(let exchange) = state, !exchange.finished { return exchange }
        return nil
    }
}

// MARK: Responses from the upstream

extension ReverseProxyHandler: UpstreamResponseSink {
    func upstreamResponseHead(_ head: UpstreamResponseHead) {
        guard let exchange = currentExchange else { return }
        exchange.lastUpstreamActivity = .now()
        exchange.upstreamKeepAlive = head.keepAlive
        exchange.tap.responseHead(status: head.status, headers: head.headers)
        exchange.framing = HeaderRules.clientFraming(for: head.framing, clientVersion: exchange.version)
        // A response that starts before the request ended can't leave the connection reusable,
        // nor can a body that only its close delimits.
        exchange.closeAfterResponse =
            !exchange.clientKeepAlive || !exchange.requestEnded || quiescing || exchange.framing == .untilClose
        exchange.responseStarted = true
        var bytes = context.channel.allocator.buffer(capacity: 1024)
        HeaderRules.writeClientResponseHead(
            head, exchangeID: exchange.tap.exchangeID, framing: exchange.framing, close: exchange.closeAfterResponse,
            version: exchange.version, into: &bytes
        )
        pendingResponse = bytes
    }

    private func writePendingResponse() {
        if let bytes = pendingResponse {
            pendingResponse = nil
            context.write(wrapOutboundOut(bytes), promise: nil)
        }
    }

    func upstreamResponseBody(_ buffer: ByteBuffer) {
        guard let exchange = currentExchange, buffer.readableBytes > 0 else { return }
        exchange.lastUpstreamActivity = .now()
        exchange.tap.responseBody(buffer)
        if var pending = pendingResponse, pending.readableBytes + buffer.readableBytes <= UpstreamHandler.coalesceLimit
        {
            if exchange.framing == .chunked {
                ChunkedFraming.writeSizeLine(buffer.readableBytes, into: &pending)
                pending.writeImmutableBuffer(buffer)
                pending.writeStaticString("\r\n")
            } else {
                pending.writeImmutableBuffer(buffer)
            }
            pendingResponse = pending
            return
        }
        writePendingResponse()
        if exchange.framing == .chunked {
            context.write(
                wrapOutboundOut(ChunkedFraming.sizeLine(buffer.readableBytes, allocator: context.channel.allocator)),
                promise: nil)
            context.write(wrapOutboundOut(buffer), promise: nil)
            context.write(wrapOutboundOut(ChunkedFraming.crlf), promise: nil)
        } else {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        if !context.channel.isWritable, case .attached(let upstream) = exchange.upstream {
            upstream.handler.holdReads(true)
        }
    }

    func upstreamReadComplete() {
        // Each read of the upstream leaves at once: a streamed event is never held back.
        writePendingResponse()
        context.flush()
    }

    func upstreamResponseEnd() {
        guard let exchange = currentExchange else { return }
        detachUpstream(exchange, reusable: exchange.requestEnded && exchange.upstreamKeepAlive)
        exchange.tap.finish(outcome: .completed)
        markFinished(exchange)
        endResponse(
            close: exchange.closeAfterResponse || quiescing, requestEnded: exchange.requestEnded,
            terminator: exchange.framing == .chunked ? ChunkedFraming.lastChunk : nil
        )
    }

    func upstreamWritabilityChanged(isWritable: Bool) {
        if isWritable { resumeReading() }
    }

    func upstreamFailed(_ error: any Error) {
        guard let exchange = currentExchange else { return }
        exchange.upstream = .detached
        fail(exchange, error: error)
    }
}

/// One request and its response.
private final class Exchange {
    enum Upstream {
        /// Waiting for a connection; the request's parts so far wait here.
        case connecting(buffered: [UpstreamRequestPart])
        case attached(UpstreamConnection)
        /// Not connecting yet: the whole request is read first (a model check). Its parts and body bytes so far.
        case holding([UpstreamRequestPart], bytes: Int)
        /// No upstream any more: answered locally, failed, or done. Further request parts are dropped.
        case detached
    }

    let tap: ExchangeTap
    let clientKeepAlive: Bool
    let version: HTTPVersion
    /// The path as sent upstream: which provider's error shape a local answer takes.
    let path: String
    /// A policy refusal, sent once the request's body has been read.
    var pendingRejection: ProxyErrorResponse?
    /// The virtual key the request was allowed with; empty otherwise.
    var keyID = ""
    /// Whether it holds a slot of that key's limiter, given back when it ends.
    var holdsPolicySlot = false
    /// Models the key allows, while the body is held to find which one the request asks for.
    var allowedModels: Set<String>?
    var upstream = Upstream.detached
    var pool: UpstreamConnectionPool?
    var requestEnded = false
    var responseStarted = false
    var closeAfterResponse = false
    var upstreamKeepAlive = true
    var framing = HeaderRules.ClientFraming.asIs
    var lastUpstreamActivity = NIODeadline.now()
    /// When the request's body last moved (or its wait began): it has --client-timeout between
    /// two pieces, while it is held (a model check, a refusal) or forwarded.
    var lastClientActivity = NIODeadline.distantPast
    var finished = false

    init(tap: ExchangeTap, clientKeepAlive: Bool, version: HTTPVersion, path: String) {
        self.tap = tap
        self.clientKeepAlive = clientKeepAlive
        self.version = version
        self.path = path
    }
}
