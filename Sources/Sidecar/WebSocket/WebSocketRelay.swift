import NIOCore
import Wire

/// A WebSocket session after its 101: both directions' frames checked and tapped as they pass
/// (`WebSocketFrameScanner`), their data messages published (`WebSocketMessageCapture`), and what
/// the session's end record says. No I/O: `ClientConnectionHandler` writes what each scan lets
/// through and closes what a violation or an end closes.
final class WebSocketRelay {
    private var fromClient: WebSocketFrameScanner
    private var fromUpstream: WebSocketFrameScanner
    private var clientMessages: WebSocketMessageCapture
    private var upstreamMessages: WebSocketMessageCapture
    let tap: ExchangeTap
    /// The end record's fields so far: the first Close frame, and messages each way.
    private(set) var session = WebSocketSessionFields()
    /// A Close frame passed, or the sidecar sent one of its own: the session ends as the endpoints
    /// agreed, whoever closes the connection.
    private(set) var closeHandshakeBegun = false

    init(tap: ExchangeTap, maxMessageBytes: Int, maxCaptureBytes: Int) {
        self.tap = tap
        fromClient = WebSocketFrameScanner(origin: .client, maxMessageBytes: maxMessageBytes)
        fromUpstream = WebSocketFrameScanner(origin: .server, maxMessageBytes: maxMessageBytes)
        clientMessages = WebSocketMessageCapture(maxCaptureBytes: maxCaptureBytes, keepsUsageEvents: false)
        upstreamMessages = WebSocketMessageCapture(maxCaptureBytes: maxCaptureBytes, keepsUsageEvents: true)
    }

    /// Bytes from the client: what of them goes upstream.
    func client(_ buffer: ByteBuffer) -> WebSocketFrameScanner.Scan {
        fromClient.scan(buffer) { event in
            switch event {
            case .messageStart(let opcode): clientMessages.start(opcode: opcode)
            case .payload(let bytes, let mask, let offset): clientMessages.append(bytes, mask: mask, maskOffset: offset)
            case .messageEnd: publish(clientMessages.end(), direction: .request)
            case .close(let code, let reason): closed(code: code, reason: reason, by: .request)
            }
        }
    }

    /// Bytes from the upstream: what of them goes to the client.
    func upstream(_ buffer: ByteBuffer) -> WebSocketFrameScanner.Scan {
        fromUpstream.scan(buffer) { event in
            switch event {
            case .messageStart(let opcode): upstreamMessages.start(opcode: opcode)
            case .payload(let bytes, let mask, let offset):
                upstreamMessages.append(bytes, mask: mask, maskOffset: offset)
            case .messageEnd: publish(upstreamMessages.end(), direction: .response)
            case .close(let code, let reason): closed(code: code, reason: reason, by: .response)
            }
        }
    }

    /// Whether a frame of the sidecar's own may go to the client now (no frame of the upstream's
    /// is half written to it), and to the upstream.
    var clientBoundAtBoundary: Bool { fromUpstream.atFrameBoundary }
    var upstreamBoundAtBoundary: Bool { fromClient.atFrameBoundary }

    /// The sidecar is about to send the client a Close of its own (a drain).
    func sidecarCloses(code: UInt16) {
        if !closeHandshakeBegun {
            closeHandshakeBegun = true
            session.closeCode = UInt32(code)
            session.closedBy = .unspecified
            session.closeReason = "the sidecar is shutting down"
        }
    }

    /// The sidecar ends the session for a violation: its code is the session's close code.
    func violated(_ violation: WebSocketViolation) {
        closeHandshakeBegun = true
        session.closeCode = UInt32(violation.code)
        session.closedBy = .unspecified
        session.closeReason = violation.reason
    }

    /// The end record's session fields, with the message counts.
    var finalSession: WebSocketSessionFields {
        var session = self.session
        session.clientMessages = clientMessages.messages
        session.upstreamMessages = upstreamMessages.messages
        return session
    }

    private func closed(code: UInt16?, reason: [UInt8], by direction: Direction) {
        guard !closeHandshakeBegun else { return }
        closeHandshakeBegun = true
        session.closeCode = UInt32(code ?? 1005)
        session.closedBy = direction
        session.closeReason = String(decoding: reason, as: UTF8.self)
    }

    private func publish(_ message: WebSocketMessageCapture.Message, direction: Direction) {
        tap.webSocketMessage(direction: direction, opcode: message.opcode, data: message.data, size: message.size)
    }

    // MARK: Frames of the sidecar's own

    /// A Close frame with `code` and `reason`: masked for the upstream (the sidecar is its client).
    static func closeFrame(code: UInt16, reason: String, masked: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        var payload = [UInt8(code >> 8), UInt8(code & 0xFF)]
        payload.append(contentsOf: reason.utf8.prefix(123))
        var frame = allocator.buffer(capacity: 6 + payload.count)
        frame.writeInteger(UInt8(0x88))
        if masked {
            let mask = UInt32.random(in: 1...UInt32.max)
            frame.writeInteger(UInt8(0x80) | UInt8(payload.count))
            frame.writeInteger(mask)
            WebSocketFrameScanner.unmask(&payload, from: 0, mask: mask, maskOffset: 0)
        } else {
            frame.writeInteger(UInt8(payload.count))
        }
        frame.writeBytes(payload)
        return frame
    }
}
