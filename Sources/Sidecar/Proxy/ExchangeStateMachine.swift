import NIOCore
import NIOHTTP1
import Wire

/// The limits an exchange works within (from `ProxySettings`).
struct ExchangeLimits: Sendable {
    /// The upstream may be silent this long (before its answer, or between two pieces of it).
    var upstreamTimeout: TimeAmount
    /// Idle between requests, sending a head, between two pieces of a body, or not reading.
    var clientTimeout: TimeAmount
    /// Body bytes held to find the model for a key limited to some models; past it, 413.
    var maxModelCheckBytes: Int
    /// Bytes of pipelined requests held while an exchange is under way; past it, reading pauses.
    var maxPipelinedBytes: Int
}

/// The life of the exchanges on one client connection, one at a time, as a value: no channel, no
/// clock, no I/O. `ClientConnectionHandler` feeds it what happens (a request's head, body and end,
/// the upstream's connection, head, body, end or failure, a timer, a quiesce) and performs the
/// action each input returns. The inputs are HTTP semantics, not HTTP/1 bytes, so an HTTP/2 stream
/// or a WebSocket upgrade can drive the same machine.
///
/// An exchange has three sides, each an enum carrying its own data: the request (`RequestSide`),
/// the link to the upstream (`Link`: refused, held for a model check, connecting with the parts
/// buffered, attached) and the response (`ResponseSide`). It ends in one `Settlement`, which says
/// what the upstream connection becomes, and the connection then goes idle or closes.
///
/// Generic over the upstream connection and the tap only so that tests can drive it without either.
/// Both are references: then an exchange's layout is the same for every pair, and the compiler
/// copies and destroys states inline, not through the generic value witnesses (which cost about
/// 7k instructions of a 124k request: benchmarks/cpu.sh).
struct ExchangeStateMachine<Upstream: AnyObject, Tap: AnyObject> {
    enum State {
        /// No exchange under way, since then: the next request has `clientTimeout` to come.
        case idle(since: NIODeadline)
        case exchanging(Exchange)
        /// The upstream answered an upgrade with 101: the connection carries WebSocket frames both
        /// ways (`WebSocketRelay` reads them) until either side closes. No HTTP input applies.
        case tunnel(Exchange)
        /// The last answer is being written and the connection closes after it: nothing more is read.
        case closing
        case closed
        /// Only while an input changes an exchange in place (no copy of its buffers).
        case modifying
    }

    /// One request and its response. What the request settled for its whole exchange is one
    /// shared reference, so that every input's copy of an exchange is a few words and one retain.
    struct Exchange {
        let facts: Facts
        var request: RequestSide
        var link: Link
        var response: ResponseSide

        var tap: Tap { facts.tap }
        var target: UpstreamTarget { facts.target }
        var clientKeepAlive: Bool { facts.clientKeepAlive }
        var version: HTTPVersion { facts.version }
        var path: String { facts.path }
        var keyID: String { facts.keyID }
        var holdsPolicySlot: Bool { facts.holdsPolicySlot }
    }

    /// What a request's head settled, for the whole of its exchange.
    final class Facts {
        let tap: Tap
        /// Where it goes: the listener's upstream, or the provider its route chose.
        let target: UpstreamTarget
        /// The client's request allows the connection to stay open after its response.
        let clientKeepAlive: Bool
        let version: HTTPVersion
        /// The path as sent upstream: which provider's error shape a local answer takes (worked
        /// out only when there is one: it is a string search).
        let path: String
        /// The virtual key the request came with (empty without one).
        let keyID: String
        /// The request holds a slot of that key's limiter, given back when it ends.
        let holdsPolicySlot: Bool

        /// The same facts, for another upstream (a retry's).
        func retargeted(_ target: UpstreamTarget) -> Facts {
            Facts(
                tap: tap, target: target, clientKeepAlive: clientKeepAlive, version: version, path: path, keyID: keyID,
                holdsPolicySlot: holdsPolicySlot)
        }

        init(
            tap: Tap, target: UpstreamTarget, clientKeepAlive: Bool, version: HTTPVersion, path: String, keyID: String,
            holdsPolicySlot: Bool
        ) {
            self.tap = tap
            self.target = target
            self.clientKeepAlive = clientKeepAlive
            self.version = version
            self.path = path
            self.keyID = keyID
            self.holdsPolicySlot = holdsPolicySlot
        }
    }

    enum RequestSide {
        /// The body still comes; it last moved then (`distantPast`: no piece yet, no wait begun).
        case receiving(lastActivity: NIODeadline)
        case ended
    }

    enum Link {
        /// Refused by policy: the body is read (and dropped) to its end, then the refusal is sent,
        /// so the connection stays usable. (Rare cases are boxed: the common ones copy cheaply.)
        indirect case refusing(ProxyErrorResponse)
        /// A key limited to some models: the whole request is held until its end to read the model.
        indirect case checkingModel(parts: [UpstreamRequestPart], bytes: Int, allowed: Set<String>)
        /// Waiting for an upstream connection; the request's parts so far wait here.
        case connecting(buffered: [UpstreamRequestPart])
        /// The upstream was last heard from (or written to) then.
        case attached(Upstream, lastActivity: NIODeadline)
    }

    enum ResponseSide {
        case notStarted
        /// The head went out: how the body is framed to the client, whether the connection closes
        /// after it, and whether the upstream's connection can be reused.
        case streaming(framing: HeaderRules.ClientFraming, closeAfter: Bool, upstreamKeepAlive: Bool)
    }

    /// How an exchange ended: what the tap records and what becomes of the upstream connection.
    struct Settlement {
        var tap: Tap
        var outcome: Outcome
        var status: UInt32?
        var error: String
        var rejectReason = ""
        /// The key whose limiter slot is given back, if the exchange held one.
        var releasesSlotOf: String?
        /// The upstream connection, back to the pool (`reusable`) or closed.
        var upstream: Upstream?
        var reusable = false
    }

    /// Why the sidecar answers itself: the handler logs and counts by it.
    enum Reason {
        case malformed(HTTPFramingError)
        case misdirected
        /// Refused when its head came (and logged then).
        case policy(keyID: String)
        /// Refused once its body was read: it names a model the key may not use, or none.
        case modelNotAllowed(keyID: String)
        case modelCheckTooLarge
        case requestHeadTimeout
        case requestBodyTimeout
        case upstreamFailed(any Error)
    }

    /// An answer the sidecar writes itself, in place of the upstream's.
    struct LocalAnswer {
        var response: ProxyErrorResponse
        var version: HTTPVersion
        var shape: ProxyErrorResponse.Shape
        var close: Bool
        var reason: Reason
        /// Nil when there is no exchange to settle (a malformed head, a head that never came).
        var settlement: Settlement?
    }

    /// After an exchange ends: the connection closes once the last write is out, or it serves the
    /// next (pipelined) request.
    enum Then: Equatable {
        case close
        case next
    }

    private(set) var state: State
    let limits: ExchangeLimits
    /// Graceful shutdown: the exchange under way finishes, then the connection closes.
    private(set) var quiescing = false
    /// How long a connection that is idle when the sidecar drains stays open for the request its
    /// client may already have sent (answered with `Connection: close`): a keep-alive client that
    /// sends its next request as the connection closes loses it, and sees an error it did nothing for.
    static var quiesceGrace: TimeAmount { .milliseconds(250) }
    /// Since when the client's connection can't take more (it does not read), while an exchange is under way.
    private(set) var unwritableSince: NIODeadline?

    init(limits: ExchangeLimits, now: NIODeadline) {
        self.limits = limits
        self.state = .idle(since: now)
    }

    // MARK: Reading the client

    /// Whether the parser may hand over its next event: a request pipelined behind one whose
    /// exchange is still under way waits in the parser until that exchange is done.
    var takesRequestEvents: Bool {
        switch state {
        case .idle: true
        case .exchanging(let exchange):
            if case .receiving = exchange.request { true } else { false }
        case .tunnel, .closing, .closed, .modifying: false
        }
    }

    enum ReadDecision {
        case read
        case hold
        /// Read only if this upstream connection can take more.
        case readIfWritable(Upstream)
    }

    /// Whether to read the client now (back-pressure), given what the parser holds unread.
    func readDecision(bufferedBytes: Int) -> ReadDecision {
        if case .tunnel(let exchange) = state, case .attached(let upstream, _) = exchange.link {
            return .readIfWritable(upstream)
        }
        guard case .exchanging(let exchange) = state else { return .read }
        switch (exchange.request, exchange.link) {
        case (.ended, _):
            // Keep reading (so a client that goes away is noticed), but not without bound.
            return bufferedBytes >= limits.maxPipelinedBytes ? .hold : .read
        case (.receiving, .connecting):
            return .hold
        case (.receiving, .attached(let upstream, _)):
            return .readIfWritable(upstream)
        case (.receiving, .refusing), (.receiving, .checkingModel):
            return .read
        }
    }

    /// The upstream connection the current exchange writes to, if it has one.
    var attachedUpstream: Upstream? {
        switch state {
        case .exchanging(let exchange), .tunnel(let exchange):
            if case .attached(let upstream, _) = exchange.link { return upstream }
            return nil
        default:
            return nil
        }
    }

    /// The current exchange's tap.
    var tap: Tap? {
        switch state {
        case .exchanging(let exchange), .tunnel(let exchange): exchange.tap
        default: nil
        }
    }

    /// True once the exchange switched protocols.
    var isTunnel: Bool {
        if case .tunnel = state { return true }
        return false
    }

    /// Where the current exchange goes.
    var target: UpstreamTarget? {
        if case .exchanging(let exchange) = state { return exchange.target }
        return nil
    }

    // MARK: Requests

    /// What the policy (and the model check it may ask for) made of a request, before any of its body.
    enum Admission {
        /// On to the upstream: the head, written already.
        case forward(head: UpstreamRequestPart)
        /// Held to its end, then forwarded only if its body names one of these models.
        case checkModel(head: UpstreamRequestPart, allowed: Set<String>)
        /// Refused: answered once the body is read (at once if the client waits to send it).
        case refuse(ProxyErrorResponse)
    }

    enum HeadAction {
        /// Ask the pool for a connection (`upstreamConnected` or `upstreamConnectFailed` follows).
        case connect(sendContinue: Bool)
        /// Read the body before anything goes upstream; the timer must fire by `deadline`.
        case awaitBody(sendContinue: Bool, deadline: NIODeadline)
        case answer(LocalAnswer)
    }

    /// A request head: an exchange begins. Only when `takesRequestEvents` and no exchange is under way.
    mutating func requestHead(
        tap: Tap, target: UpstreamTarget, keepAlive: Bool, version: HTTPVersion, expectsContinue: Bool, path: String,
        keyID: String, holdsPolicySlot: Bool, admission: Admission, now: NIODeadline
    ) -> HeadAction {
        precondition(isIdle, "a request head arrived while an exchange was under way")
        var exchange = Exchange(
            facts: Facts(
                tap: tap, target: target, clientKeepAlive: keepAlive, version: version, path: path, keyID: keyID,
                holdsPolicySlot: holdsPolicySlot),
            request: .receiving(lastActivity: .distantPast),
            link: .connecting(buffered: []), response: .notStarted)
        switch admission {
        case .forward(let head):
            exchange.link = .connecting(buffered: [head])
            state = .exchanging(exchange)
            return .connect(sendContinue: expectsContinue)
        case .checkModel(let head, let allowed):
            exchange.link = .checkingModel(parts: [head], bytes: 0, allowed: allowed)
            exchange.request = .receiving(lastActivity: now)
            state = .exchanging(exchange)
            return .awaitBody(sendContinue: expectsContinue, deadline: now + limits.clientTimeout)
        case .refuse(let response):
            exchange.link = .refusing(response)
            if expectsContinue {
                // The client waits before sending its body: answer now, and close (its body may still come).
                state = .exchanging(exchange)
                return .answer(answer(response, reason: .policy(keyID: keyID), outcome: .rejected, forceClose: true))
            }
            exchange.request = .receiving(lastActivity: now)
            state = .exchanging(exchange)
            return .awaitBody(sendContinue: false, deadline: now + limits.clientTimeout)
        }
    }

    /// A head refused before any exchange began (a MITM connection's request for another host):
    /// answered, and the connection closes.
    mutating func refuseHead(_ response: ProxyErrorResponse, version: HTTPVersion) -> LocalAnswer {
        state = .closing
        return LocalAnswer(response: response, version: version, shape: .openAI, close: true, reason: .misdirected)
    }

    enum BodyAction {
        case forward(Upstream)
        /// Kept (buffered for the upstream, held for the model check) or dropped (a refusal's body).
        case none
        case answer(LocalAnswer)
    }

    mutating func requestBody(_ buffer: ByteBuffer, now: NIODeadline) -> BodyAction {
        guard case .exchanging(var exchange) = state else { return .none }
        state = .modifying
        defer { if case .modifying = state { state = .exchanging(exchange) } }
        // The body has --client-timeout between two pieces, whatever the upstream does.
        exchange.request = .receiving(lastActivity: now)
        switch exchange.link {
        case .refusing:
            return .none
        case .checkingModel(var parts, let bytes, let allowed):
            exchange.link = .connecting(buffered: [])
            parts.append(.body(buffer))
            let held = bytes + buffer.readableBytes
            exchange.link = .checkingModel(parts: parts, bytes: held, allowed: allowed)
            guard held > limits.maxModelCheckBytes else { return .none }
            let response = ModelCheck.tooLarge(limit: limits.maxModelCheckBytes)
            state = .exchanging(exchange)
            return .answer(answer(response, reason: .modelCheckTooLarge, outcome: .rejected, forceClose: true))
        case .connecting(var buffered):
            exchange.link = .connecting(buffered: [])
            buffered.append(.body(buffer))
            exchange.link = .connecting(buffered: buffered)
            return .none
        case .attached(let upstream, _):
            exchange.link = .attached(upstream, lastActivity: now)
            return .forward(upstream)
        }
    }

    enum EndAction {
        case forward(Upstream)
        case none
        /// The model check passed: ask the pool for a connection, the whole request buffered.
        case connect
        case answer(LocalAnswer)
    }

    /// The request's end. Its trailers are not forwarded: they are rare, and no LLM API reads them.
    mutating func requestEnd() -> EndAction {
        guard case .exchanging(var exchange) = state else { return .none }
        state = .modifying
        defer { if case .modifying = state { state = .exchanging(exchange) } }
        exchange.request = .ended
        switch exchange.link {
        case .refusing(let response):
            // Refused by policy: answered now the body is read, so the connection stays usable.
            state = .exchanging(exchange)
            return .answer(
                answer(response, reason: .policy(keyID: exchange.keyID), outcome: .rejected, forceClose: false))
        case .checkingModel(var parts, _, let allowed):
            exchange.link = .connecting(buffered: [])
            parts.append(.end)
            if let refusal = ModelCheck.refusal(parts, allowed: allowed) {
                exchange.link = .refusing(refusal)
                state = .exchanging(exchange)
                return .answer(
                    answer(
                        refusal, reason: .modelNotAllowed(keyID: exchange.keyID), outcome: .rejected, forceClose: false)
                )
            }
            exchange.link = .connecting(buffered: parts)
            return .connect
        case .connecting(var buffered):
            exchange.link = .connecting(buffered: [])
            buffered.append(.end)
            exchange.link = .connecting(buffered: buffered)
            return .none
        case .attached(let upstream, _):
            return .forward(upstream)
        }
    }

    /// The request could not be parsed: answered with 400 (or 431) when no response has started,
    /// and the connection closes, since where the next request would start is unknown.
    mutating func requestMalformed(_ error: HTTPFramingError, maxHeaderBytes: Int) -> MalformedAction {
        let response =
            error.status == .requestHeaderFieldsTooLarge
            ? ProxyErrorResponse.headersTooLarge(limit: maxHeaderBytes)
            : ProxyErrorResponse.badRequest(error.description)
        switch state {
        case .idle:
            state = .closing
            return .answer(
                LocalAnswer(
                    response: response, version: .http1_1, shape: .openAI, close: true, reason: .malformed(error)))
        case .exchanging(let exchange):
            guard case .notStarted = exchange.response else {
                // Mid-response: the answer can't change now; the exchange ends here, cut short.
                let settlement = settle(exchange, outcome: .rejected, error: error.description)
                state = .closing
                return .closeNow(settlement)
            }
            // Whatever was already sent upstream is cut off unfinished, so the upstream never acts on it.
            return .answer(answer(response, reason: .malformed(error), outcome: .rejected, forceClose: true))
        case .tunnel, .closing, .closed, .modifying:
            return .closeNow(nil)
        }
    }

    enum MalformedAction {
        case answer(LocalAnswer)
        /// Close without a word (a response is under way, or one is closing already).
        case closeNow(Settlement?)
    }

    // MARK: The upstream connection

    enum ConnectedAction {
        /// Send these parts to it; the timer must fire by `deadline`.
        case attach(send: [UpstreamRequestPart], deadline: NIODeadline)
        /// The exchange ended while connecting (the client left, or a malformed body): the
        /// connection was never used, so it can serve the next one.
        case release
    }

    mutating func upstreamConnected(_ upstream: Upstream, now: NIODeadline) -> ConnectedAction {
        guard case .exchanging(var exchange) = state, case .connecting(let buffered) = exchange.link else {
            return .release
        }
        state = .modifying
        exchange.link = .attached(upstream, lastActivity: now)
        if case .receiving(let last) = exchange.request, last == .distantPast {
            // No body piece yet: the body's clock starts now.
            exchange.request = .receiving(lastActivity: now)
        }
        state = .exchanging(exchange)
        return .attach(send: buffered, deadline: now + min(limits.upstreamTimeout, limits.clientTimeout))
    }

    /// No connection could be made, so nothing of the request reached that upstream: it goes to
    /// `target` instead, `head` (written for it) in place of the one buffered. False when the
    /// exchange no longer waits for a connection.
    mutating func retarget(_ target: UpstreamTarget, head: UpstreamRequestPart) -> Bool {
        guard case .exchanging(let exchange) = state, case .connecting(var buffered) = exchange.link,
            !buffered.isEmpty
        else { return false }
        state = .modifying
        buffered[0] = head
        state = .exchanging(
            Exchange(
                facts: exchange.facts.retargeted(target), request: exchange.request,
                link: .connecting(buffered: buffered), response: exchange.response))
        return true
    }

    /// The upstream's connection is given up before any of its answer went to the client (a
    /// status the gateway retries on, or a pooled connection that broke): the request goes again
    /// on a new connection to `target`, from `parts` (its head written for `target`, and every
    /// piece of it sent so far; what is still to come is buffered as it comes). The connection
    /// given up, for the caller to close; nil when no exchange is in that state.
    mutating func replay(to target: UpstreamTarget, parts: [UpstreamRequestPart]) -> Upstream? {
        guard case .exchanging(let exchange) = state, case .attached(let upstream, _) = exchange.link,
            case .notStarted = exchange.response
        else { return nil }
        state = .exchanging(
            Exchange(
                facts: exchange.facts.retargeted(target), request: exchange.request,
                link: .connecting(buffered: parts), response: .notStarted))
        return upstream
    }

    /// No connection could be made: a 502, if the exchange still waits for one.
    mutating func upstreamConnectFailed(_ error: any Error) -> LocalAnswer? {
        guard case .exchanging(let exchange) = state, case .connecting = exchange.link else { return nil }
        guard case .answer(let answer) = failUpstream(exchange, error: error, timedOut: false) else { return nil }
        return answer
    }

    enum HeadOutcome {
        /// Write the head with this framing, and say `close` in it.
        case write(framing: HeaderRules.ClientFraming, close: Bool, version: HTTPVersion)
        /// No exchange waits for it.
        case ignore
    }

    mutating func upstreamHead(keepAlive: Bool, framing upstreamFraming: UpstreamResponseHead.Framing, now: NIODeadline)
        -> HeadOutcome
    {
        guard case .exchanging(var exchange) = state, case .attached(let upstream, _) = exchange.link else {
            return .ignore
        }
        state = .modifying
        exchange.link = .attached(upstream, lastActivity: now)
        let framing = HeaderRules.clientFraming(for: upstreamFraming, clientVersion: exchange.version)
        var requestEnded = false
        if case .ended = exchange.request { requestEnded = true }
        // A response that starts before the request ended can't leave the connection reusable,
        // nor can a body that only its close delimits.
        let close = !exchange.clientKeepAlive || !requestEnded || quiescing || framing == .untilClose
        exchange.response = .streaming(framing: framing, closeAfter: close, upstreamKeepAlive: keepAlive)
        state = .exchanging(exchange)
        return .write(framing: framing, close: close, version: exchange.version)
    }

    /// The upstream answered the exchange's upgrade with 101 (the parser accepts one only for a
    /// request that asked): from now on the connection is a tunnel. False when no exchange can
    /// switch: none waits for an answer, or its request has not ended (an upgrade has no body).
    mutating func upstreamSwitchedProtocols(now: NIODeadline) -> Bool {
        guard case .exchanging(var exchange) = state, case .attached(let upstream, _) = exchange.link,
            case .notStarted = exchange.response, case .ended = exchange.request
        else { return false }
        exchange.link = .attached(upstream, lastActivity: now)
        state = .tunnel(exchange)
        return true
    }

    /// The tunnel's session is over (`WebSocketRelay` says how): its settlement, status 101, its
    /// upstream closed, and the connection closes.
    mutating func tunnelEnded(outcome: Outcome, error: String) -> Settlement? {
        guard case .tunnel(let exchange) = state else { return nil }
        var settlement = settle(exchange, outcome: outcome, error: error)
        settlement.status = 101
        state = .closing
        return settlement
    }

    /// A piece of the response's body: how to frame it, or nil when no exchange waits for it.
    mutating func upstreamBody(now: NIODeadline) -> HeaderRules.ClientFraming? {
        guard case .exchanging(var exchange) = state, case .attached(let upstream, _) = exchange.link,
            case .streaming(let framing, _, _) = exchange.response
        else { return nil }
        state = .modifying
        exchange.link = .attached(upstream, lastActivity: now)
        state = .exchanging(exchange)
        return framing
    }

    struct Completion {
        var settlement: Settlement
        /// Write the last chunk.
        var chunked: Bool
        var then: Then
    }

    mutating func upstreamEnd() -> Completion? {
        guard case .exchanging(let exchange) = state, case .attached = exchange.link,
            case .streaming(let framing, let closeAfter, let upstreamKeepAlive) = exchange.response
        else { return nil }
        var requestEnded = false
        if case .ended = exchange.request { requestEnded = true }
        var settlement = settle(exchange, outcome: .completed)
        settlement.reusable = requestEnded && upstreamKeepAlive
        // While draining, a response that did not say `Connection: close` leaves the connection
        // idle for `quiesceGrace`: its client may send the next request at once.
        let then: Then = closeAfter || !requestEnded ? .close : .next
        finish(then)
        return Completion(settlement: settlement, chunked: framing == .chunked, then: then)
    }

    enum FailureAction {
        /// No response had started: answer in its place.
        case answer(LocalAnswer)
        /// Mid-response: closing is the only honest answer; a client must never take a cut-short
        /// body for a whole one.
        case closeNow(Settlement)
    }

    /// The upstream connection failed or closed before the response ended (`timedOut`: it was
    /// silent past --upstream-timeout).
    mutating func upstreamFailed(_ error: any Error, timedOut: Bool = false) -> FailureAction? {
        guard case .exchanging(let exchange) = state, case .attached = exchange.link else { return nil }
        return failUpstream(exchange, error: error, timedOut: timedOut)
    }

    private mutating func failUpstream(_ exchange: Exchange, error: any Error, timedOut: Bool) -> FailureAction? {
        let outcome: Outcome = timedOut ? .timeout : .upstreamError
        guard case .notStarted = exchange.response else {
            let settlement = settle(exchange, outcome: outcome, error: "\(error)")
            state = .closing
            return .closeNow(settlement)
        }
        let response =
            timedOut
            ? ProxyErrorResponse.upstreamTimeout(exchange.target, limits.upstreamTimeout)
            : ProxyErrorResponse.upstreamUnreachable(exchange.target, error)
        return .answer(answer(response, reason: .upstreamFailed(error), outcome: outcome, forceClose: false))
    }

    // MARK: The client connection

    /// The client's connection closed: an exchange under way ends as the client's abort.
    mutating func clientClosed() -> Settlement? {
        defer { state = .closed }
        if case .tunnel(let exchange) = state {
            var settlement = settle(exchange, outcome: .clientAborted, error: "the client closed the connection")
            settlement.status = 101
            return settlement
        }
        guard case .exchanging(let exchange) = state else { return nil }
        return settle(
            exchange, outcome: .clientAborted, error: "the client closed the connection before the response ended")
    }

    /// The client's connection can take more, or can't. Returns the upstream whose reads follow it,
    /// and a deadline the timer must fire by.
    mutating func clientWritabilityChanged(isWritable: Bool, now: NIODeadline) -> (
        upstream: Upstream?, deadline: NIODeadline?
    ) {
        let upstream = attachedUpstream
        if isWritable {
            unwritableSince = nil
            return (upstream, nil)
        }
        switch state {
        case .exchanging, .tunnel: break
        default: return (upstream, nil)
        }
        guard unwritableSince == nil else { return (upstream, nil) }
        // A client that stops reading its response (or a WebSocket session's messages) holds the
        // upstream too: it has --client-timeout to start reading again.
        unwritableSince = now
        return (upstream, now + limits.clientTimeout)
    }

    /// Graceful shutdown: the exchange under way finishes, with `Connection: close` when its
    /// response has not started, then the connection closes. An idle connection closes by
    /// `idleDeadline`, `quiesceGrace` after it went idle; a request that comes first is answered,
    /// and closes it. The new deadline, when the connection is idle.
    mutating func quiesce() -> NIODeadline? {
        quiescing = true
        return idleDeadline
    }

    /// When an idle connection closes (or a head begun by then gets 408).
    var idleDeadline: NIODeadline? {
        guard case .idle(let since) = state else { return nil }
        return since + (quiescing ? min(Self.quiesceGrace, limits.clientTimeout) : limits.clientTimeout)
    }

    // MARK: Timers

    enum TimerAction {
        case none
        /// Look again then.
        case check(at: NIODeadline)
        case answer(LocalAnswer)
        case fail(FailureAction)
        /// The client has not read its response for --client-timeout: the exchange ends as its
        /// abort, and both connections close (the upstream's answer can't be delivered).
        case clientStoppedReading(Settlement)
    }

    /// The exchange timer fired. `readHeld`: the handler holds the client's reads back (for the upstream).
    mutating func exchangeTimerFired(now: NIODeadline, readHeld: Bool) -> TimerAction {
        if case .tunnel(let exchange) = state {
            // A session may be silent for as long as it likes; a client that does not read may not.
            guard let since = unwritableSince else { return .none }
            guard now >= since + limits.clientTimeout else { return .check(at: since + limits.clientTimeout) }
            var settlement = settle(
                exchange, outcome: .clientAborted,
                error:
                    "the client stopped reading the session's messages for \(limits.clientTimeout.nanoseconds / 1_000_000_000) s"
            )
            settlement.status = 101
            state = .closing
            return .clientStoppedReading(settlement)
        }
        guard case .exchanging(var exchange) = state else { return .none }
        switch exchange.link {
        case .attached(let upstream, var lastUpstream):
            state = .modifying
            defer { if case .modifying = state { state = .exchanging(exchange) } }
            if let since = unwritableSince {
                // The upstream is not read while the client does not read: its silence is not its fault.
                lastUpstream = now
                exchange.link = .attached(upstream, lastActivity: now)
                if now >= since + limits.clientTimeout {
                    let settlement = settle(
                        exchange, outcome: .clientAborted,
                        error:
                            "the client stopped reading the response for \(limits.clientTimeout.nanoseconds / 1_000_000_000) s"
                    )
                    state = .closing
                    return .clientStoppedReading(settlement)
                }
            }
            var due = lastUpstream + limits.upstreamTimeout
            if let since = unwritableSince { due = min(due, since + limits.clientTimeout) }
            if case .receiving(var lastClient) = exchange.request, case .notStarted = exchange.response {
                // The body is still coming: while the client is read (not held back by the
                // upstream), a silence is the client's, and the answer is 408, not 504.
                if readHeld {
                    lastClient = now
                    exchange.request = .receiving(lastActivity: now)
                }
                let clientDue = lastClient + limits.clientTimeout
                if now >= clientDue {
                    state = .exchanging(exchange)
                    return .answer(
                        answer(
                            .requestTimeout(limits.clientTimeout, body: true), reason: .requestBodyTimeout,
                            outcome: .rejected, forceClose: true))
                }
                due = min(due, clientDue)
            }
            if now >= lastUpstream + limits.upstreamTimeout {
                state = .exchanging(exchange)
                return failUpstream(exchange, error: UpstreamTimedOut(timeout: limits.upstreamTimeout), timedOut: true)
                    .map { .fail($0) } ?? .none
            }
            // Never further than --client-timeout ahead: then a later exchange's client deadline
            // is never earlier than this timer, and it need not be set again.
            return .check(at: min(due, now + limits.clientTimeout))
        case .checkingModel, .refusing:
            // The request is being read before anything is sent (a model check, or a refusal
            // waiting for the body's end): the client has --client-timeout between two pieces.
            guard case .receiving(let lastClient) = exchange.request else { return .none }
            let due = lastClient + limits.clientTimeout
            guard now >= due else { return .check(at: due) }
            return .answer(
                answer(
                    .requestTimeout(limits.clientTimeout, body: true), reason: .requestBodyTimeout, outcome: .rejected,
                    forceClose: true))
        case .connecting:
            return .none
        }
    }

    enum IdleTimerAction {
        case none
        case check(at: NIODeadline)
        /// A head began and did not finish in time: 408, and close.
        case answer(LocalAnswer)
        case close
    }

    /// The idle timer fired. `bufferedBytes`: what the parser holds of a head not yet whole.
    mutating func idleTimerFired(now: NIODeadline, bufferedBytes: Int) -> IdleTimerAction {
        guard let due = idleDeadline else { return .none }
        guard now >= due else { return .check(at: due) }
        state = .closing
        guard bufferedBytes > 0 else { return .close }
        return .answer(
            LocalAnswer(
                response: .requestTimeout(limits.clientTimeout), version: .http1_1, shape: .openAI, close: true,
                reason: .requestHeadTimeout))
    }

    /// The handler moved on after an answer whose connection stays (`Then.next`): the connection is idle from now.
    mutating func becameIdle(now: NIODeadline) {
        if case .idle = state { state = .idle(since: now) }
    }

    // MARK: Ending exchanges

    private var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// The local answer that ends the current exchange: the upstream, if any, is closed, and the
    /// connection closes unless it can serve another.
    private mutating func answer(
        _ response: ProxyErrorResponse, reason: Reason, outcome: Outcome, forceClose: Bool
    ) -> LocalAnswer {
        guard case .exchanging(let exchange) = state else {
            preconditionFailure("a local answer without an exchange")
        }
        var requestEnded = false
        if case .ended = exchange.request { requestEnded = true }
        let close = forceClose || quiescing || !requestEnded || !exchange.clientKeepAlive
        var settlement = settle(
            exchange, outcome: outcome, error: outcomeError(response, reason: reason),
            rejectReason: response.rejectReason)
        settlement.status = UInt32(response.status.code)
        finish(close ? .close : .next)
        return LocalAnswer(
            response: response, version: exchange.version, shape: .forPath(exchange.path), close: close, reason: reason,
            settlement: settlement)
    }

    private func outcomeError(_ response: ProxyErrorResponse, reason: Reason) -> String {
        switch reason {
        case .malformed(let error): error.description
        case .misdirected: "misdirected"
        case .requestHeadTimeout: "request head timeout"
        case .requestBodyTimeout: "request body timeout"
        case .upstreamFailed(let error): "\(error)"
        case .policy, .modelNotAllowed, .modelCheckTooLarge: response.message
        }
    }

    /// The settlement of an exchange that ends now: an attached upstream connection is closed
    /// (whatever was sent to it is cut off unfinished) unless the caller finds it reusable.
    private func settle(_ exchange: Exchange, outcome: Outcome, error: String = "", rejectReason: String = "")
        -> Settlement
    {
        var settlement = Settlement(
            tap: exchange.tap, outcome: outcome, status: nil, error: error, rejectReason: rejectReason,
            releasesSlotOf: exchange.holdsPolicySlot ? exchange.keyID : nil)
        if case .attached(let upstream, _) = exchange.link { settlement.upstream = upstream }
        return settlement
    }

    private mutating func finish(_ then: Then) {
        switch then {
        case .close: state = .closing
        // The idle clock is set again by `becameIdle` once the handler has written the end.
        case .next: state = .idle(since: .distantPast)
        }
    }
}

extension ExchangeStateMachine.LocalAnswer {
    init(
        response: ProxyErrorResponse, version: HTTPVersion, shape: ProxyErrorResponse.Shape, close: Bool,
        reason: ExchangeStateMachine.Reason
    ) {
        self.init(response: response, version: version, shape: shape, close: close, reason: reason, settlement: nil)
    }
}
