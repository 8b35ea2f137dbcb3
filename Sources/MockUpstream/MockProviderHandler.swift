import Foundation
import NIOCore
import NIOHTTP1

/// Answers one connection's requests as the provider their path names.
final class MockProviderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let settings: MockSettings
    private let log: RequestLog?
    private var head: HTTPRequestHead?
    private var body = ByteBuffer()
    private var peer = ""
    private var requests = 0

    /// False on an HTTP/2 stream: the connection is logged once, by `ConnectionLogger`.
    private let logsConnections: Bool

    init(settings: MockSettings, log: RequestLog?, logsConnections: Bool = true) {
        self.settings = settings
        self.log = log
        self.logsConnections = logsConnections
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // Added after the TLS handshake (ALPN chose http/1.1): the connection is active already.
        if context.channel.isActive { logOpened(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        logOpened(context)
        context.fireChannelActive()
    }

    private func logOpened(_ context: ChannelHandlerContext) {
        // An HTTP/2 stream channel has no address of its own (asking for one traps).
        guard logsConnections, peer.isEmpty else { return }
        peer = context.remoteAddress.map { "\($0)" } ?? "?"
        log?.append(["event": "connection_opened", "peer": peer, "protocol": "http1"])
    }

    func channelInactive(context: ChannelHandlerContext) {
        if logsConnections { log?.append(["event": "connection_closed", "peer": peer]) }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
        case .body(var buffer):
            body.writeBuffer(&buffer)
        case .end:
            guard let head else { return }
            self.head = nil
            requests += 1
            if let limit = settings.requestsPerConnection, requests > limit {
                log?.append(["event": "dropped_unanswered", "peer": peer, "path": head.uri])
                context.close(promise: nil)
                return
            }
            respond(context: context, to: head, body: body.readableBytesView.map { $0 })
        }
    }

    private func respond(context: ChannelHandlerContext, to head: HTTPRequestHead, body: [UInt8]) {
        let control = MockControl(head.headers, defaults: settings)
        log?.append([
            "method": head.method.rawValue, "path": head.uri, "body_bytes": body.count,
            "headers": Dictionary(
                head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { "\($0), \($1)" }),
        ])
        if control.hang { return }
        let response = MockRoutes.response(
            method: head.method, uri: head.uri, headers: head.headers, body: body, control: control)

        var headers = HTTPHeaders(response.headers)
        if !head.isKeepAlive { headers.replaceOrAdd(name: "connection", value: "close") }
        // x-mock-response-header: "name: value" adds that header to the answer (repeatable).
        for extra in head.headers["x-mock-response-header"] {
            guard let colon = extra.firstIndex(of: ":") else { continue }
            headers.add(
                name: String(extra[..<colon]),
                value: extra[extra.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        switch response.body {
        case .whole(let text):
            headers.replaceOrAdd(name: "content-length", value: "\(text.utf8.count)")
            context.write(
                wrapOutboundOut(
                    .head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))),
                promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
            finish(context: context, keepAlive: head.isKeepAlive)
        case .events(let events):
            context.writeAndFlush(
                wrapOutboundOut(
                    .head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))),
                promise: nil)
            stream(events[...], index: 0, context: context, head: head, control: control)
        }
    }

    /// Sends one event now and schedules the next after the delay, so each leaves on its own.
    private func stream(
        _ events: ArraySlice<String>, index: Int, context: ChannelHandlerContext, head: HTTPRequestHead,
        control: MockControl
    ) {
        if let resetAfter = control.resetAfter, index == resetAfter {
            context.close(promise: nil)
            return
        }
        if let hangAfter = control.hangAfter, index == hangAfter { return }
        guard let event = events.first else {
            finish(context: context, keepAlive: head.isKeepAlive)
            return
        }
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: event)))), promise: nil)
        log?.append(["event": "sent", "index": index, "path": head.uri])
        let rest = events.dropFirst()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .milliseconds(Int64(control.eventDelayMs))) {
            let (handler, context) = loopBound.value
            guard context.channel.isActive else { return }
            handler.stream(rest, index: index + 1, context: context, head: head, control: control)
        }
    }

    private func finish(context: ChannelHandlerContext, keepAlive: Bool) {
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

/// The per-request knobs, from headers, with the command line's defaults.
struct MockControl {
    var events: Int
    var eventDelayMs: Int
    var status: Int?
    var hang = false
    var hangAfter: Int?
    var resetAfter: Int?
    /// Pad each streamed piece of text to this many bytes (for back-pressure tests).
    var eventBytes: Int?

    init(_ headers: HTTPHeaders, defaults: MockSettings) {
        events = headers.first(name: "x-mock-events").flatMap(Int.init) ?? defaults.events
        eventDelayMs = headers.first(name: "x-mock-event-delay-ms").flatMap(Int.init) ?? defaults.eventDelayMs
        status = headers.first(name: "x-mock-status").flatMap(Int.init) ?? defaults.status
        if !defaults.acceptedKeys.isEmpty {
            let bearer = headers.first(name: "authorization").map {
                $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : $0
            }
            let presented = [bearer, headers.first(name: "x-api-key"), headers.first(name: "x-goog-api-key")]
            if !presented.contains(where: { $0.map(defaults.acceptedKeys.contains) ?? false }) { status = 401 }
        }
        eventBytes = headers.first(name: "x-mock-event-bytes").flatMap(Int.init)
        let fail = headers.first(name: "x-mock-fail") ?? ""
        if fail == "hang" { hang = true }
        if fail.hasPrefix("hang-after:") { hangAfter = Int(fail.dropFirst("hang-after:".count)) }
        if fail.hasPrefix("reset-after:") { resetAfter = Int(fail.dropFirst("reset-after:".count)) }
    }
}
