import NIOCore
import NIOHTTP1

/// One HTTP/2 stream from a client, presented to `ClientConnectionHandler` as a connection that
/// carries one HTTP/1.1 request: the same exchange machine, policy, routing, upstream pool and tap
/// serve it, stream by stream.
///
/// NIOHTTP2's `HTTP2FramePayloadToHTTP1ServerCodec` sits before it and turns the stream's frames
/// into request parts (`:authority` as `Host`, and for a body of unknown length
/// `transfer-encoding: chunked`); this bridge writes them as the bytes of an HTTP/1.1 request, and
/// reads the handler's response bytes back into parts with `UpstreamResponseParser`, which
/// de-chunks them. NIOHTTP2 has already refused what HTTP/1.1 could not carry (CR, LF or NUL in a
/// field, connection-specific fields, a body longer or shorter than its `content-length`); a field
/// this bridge could still not write safely ends the stream, as does a body sent with neither.
///
/// Flow control is the stream's own: the handler holds `read()` while its upstream is slow, so the
/// stream's window is not opened again, and the stream's writability reaches the handler as a
/// connection's would. Resetting the stream closes this channel, which the handler sees as a client
/// that left.
final class HTTP2StreamBridge: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTPServerResponsePart

    /// How the request's body is framed in the HTTP/1.1 bytes.
    enum RequestFraming {
        /// Neither `content-length` nor chunked: a method with no body (GET, HEAD, DELETE): none may come.
        case bodiless
        case contentLength
        case chunked
        /// A WebSocket over HTTP/2 (RFC 8441): after the upgrade, DATA frames carry WebSocket
        /// frames, passed on as they are.
        case tunnel
    }

    private var framing = RequestFraming.bodiless
    /// Set by `ExtendedConnectDetector`: the stream's request is a WebSocket upgrade.
    private var webSocket = false
    private var responses: UpstreamResponseParser
    /// The last response part written: an empty write of the handler completes with it.
    private var lastWrite: EventLoopFuture<Void>?

    init(maxHeadBytes: Int) {
        responses = UpstreamResponseParser(maxHeadBytes: maxHeadBytes)
    }

    /// The stream is an extended CONNECT for WebSocket, its head already rewritten as an upgrade.
    func carriesWebSocket() {
        webSocket = true
    }

    // MARK: Request parts in, HTTP/1.1 bytes out

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard let (bytes, framing) = Self.requestBytes(head, allocator: context.channel.allocator) else {
                return context.close(promise: nil)
            }
            self.framing = webSocket ? .tunnel : framing
            responses.expectResponse(toHEAD: head.method == .HEAD, upgrade: webSocket)
            context.fireChannelRead(wrapInboundOut(bytes))
        case .body(var body):
            switch framing {
            case .bodiless:
                context.close(promise: nil)
            case .contentLength, .tunnel:
                context.fireChannelRead(wrapInboundOut(body))
            case .chunked:
                guard body.readableBytes > 0 else { return }
                var chunk = context.channel.allocator.buffer(capacity: body.readableBytes + 12)
                ChunkedFraming.writeSizeLine(body.readableBytes, into: &chunk)
                chunk.writeBuffer(&body)
                chunk.writeStaticString("\r\n")
                context.fireChannelRead(wrapInboundOut(chunk))
            }
        case .end(let trailers):
            // The client ended its side of a tunnel (as a TCP FIN): the session ends.
            if framing == .tunnel { return context.close(promise: nil) }
            guard framing == .chunked else { return }
            guard let trailers, !trailers.isEmpty else {
                return context.fireChannelRead(wrapInboundOut(ChunkedFraming.lastChunk))
            }
            var last = context.channel.allocator.buffer(capacity: 64)
            ChunkedFraming.writeSizeLine(0, into: &last)
            guard Self.writeFields(trailers, into: &last) else { return context.close(promise: nil) }
            last.writeStaticString("\r\n")
            context.fireChannelRead(wrapInboundOut(last))
        }
    }

    /// The request line and fields as HTTP/1.1 writes them, and how its body is framed; nil when a
    /// field or the target holds a byte that would change what the bytes mean.
    static func requestBytes(_ head: HTTPRequestHead, allocator: ByteBufferAllocator) -> (ByteBuffer, RequestFraming)? {
        guard !head.uri.isEmpty, head.uri.utf8.allSatisfy(HeaderLineScanner.isTargetByte),
            head.method.rawValue.utf8.allSatisfy(HeaderLineScanner.isTokenByte)
        else { return nil }
        var bytes = allocator.buffer(capacity: 256 + head.uri.utf8.count + head.headers.count * 32)
        bytes.writeString(head.method.rawValue)
        bytes.writeStaticString(" ")
        bytes.writeString(head.uri)
        bytes.writeStaticString(" HTTP/1.1\r\n")
        guard writeFields(head.headers, into: &bytes) else { return nil }
        bytes.writeStaticString("\r\n")
        let framing: RequestFraming =
            head.headers[canonicalForm: "transfer-encoding"].contains("chunked")
            ? .chunked : head.headers.contains(name: "content-length") ? .contentLength : .bodiless
        return (bytes, framing)
    }

    /// `name: value` lines; false when a name is not a token or a value holds a control byte.
    private static func writeFields(_ headers: HTTPHeaders, into bytes: inout ByteBuffer) -> Bool {
        for (name, value) in headers {
            guard !name.isEmpty, name.utf8.allSatisfy(HeaderLineScanner.isTokenByte),
                value.utf8.allSatisfy(HeaderLineScanner.isFieldValueByte)
            else { return false }
            bytes.writeString(name)
            bytes.writeStaticString(": ")
            bytes.writeString(value)
            bytes.writeStaticString("\r\n")
        }
        return true
    }

    // MARK: HTTP/1.1 bytes in, response parts out

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        responses.receive(unwrapOutboundIn(data))
        var parts: [HTTPServerResponsePart] = []
        do {
            while let event = try responses.next() {
                parts.append(Self.part(event, tunnel: framing == .tunnel))
            }
        } catch {
            // The handler wrote something that is not a response: nothing more of it can be trusted.
            promise?.fail(error)
            return context.close(promise: nil)
        }
        write(parts, context: context, promise: promise)
    }

    private func write(
        _ parts: [HTTPServerResponsePart], context: ChannelHandlerContext, promise: EventLoopPromise<Void>?
    ) {
        guard let last = parts.last else {
            if let lastWrite { lastWrite.cascade(to: promise) } else { promise?.succeed() }
            return
        }
        for part in parts.dropLast() { context.write(wrapOutboundOut(part), promise: nil) }
        let written = context.write(wrapOutboundOut(last))
        lastWrite = written
        written.cascade(to: promise)
    }

    /// `tunnel`: the upstream's 101 to an extended CONNECT is its `:status 200` (RFC 8441, section
    /// 5), without the fields only the HTTP/1.1 handshake has.
    private static func part(_ event: UpstreamResponseParser.Event, tunnel: Bool) -> HTTPServerResponsePart {
        switch event {
        case .head(let head):
            var headers = HTTPHeaders()
            headers.reserveCapacity(head.headers.count)
            head.headers.forEachField { name, value in
                if tunnel, RawHeaderFields.equalsIgnoringCase(name, "sec-websocket-accept") { return }
                headers.add(name: String(decoding: name, as: UTF8.self), value: String(decoding: value, as: UTF8.self))
            }
            if tunnel && head.status == .switchingProtocols {
                return .head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))
            }
            // HTTP2FramePayloadToHTTP1ServerCodec drops the fields HTTP/2 has no use for (Connection,
            // Transfer-Encoding, Keep-Alive) as it writes the HEADERS frame.
            return .head(HTTPResponseHead(version: .http1_1, status: head.status, headers: headers))
        case .body(let body):
            return .body(.byteBuffer(body))
        case .end:
            return .end(nil)
        }
    }

    /// The handler closes after a body that runs until the connection closes: that body's end is
    /// the stream's END_STREAM, written before the close.
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, let event = try? responses.endOfInput() {
            write([Self.part(event, tunnel: framing == .tunnel)], context: context, promise: nil)
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }
}
