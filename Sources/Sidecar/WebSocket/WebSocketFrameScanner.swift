import NIOCore

/// Why the sidecar ends a WebSocket session itself: the Close code it sends, and why.
struct WebSocketViolation: Error, Equatable, CustomStringConvertible {
    /// 1002 (protocol error) or 1009 (message too big), RFC 6455 section 7.4.1.
    let code: UInt16
    let reason: String

    var description: String { "\(reason) (close code \(code))" }

    static func protocolError(_ reason: String) -> WebSocketViolation {
        WebSocketViolation(code: 1002, reason: reason)
    }
}

/// Reads one direction of a WebSocket connection's bytes (RFC 6455, section 5) as they pass,
/// whatever the boundaries between reads, to check them and to tap them, never to hold them: a
/// frame's payload goes on as it arrives, and only a frame's header (2 to 14 bytes) waits until it
/// is whole and valid. Pure: no channel, no I/O.
///
/// NIOWebSocket's `WebSocketFrameDecoder` reads whole frames, so it would hold every frame until
/// its last byte; this scanner lets each byte through at once, and `WebSocketFrameScannerTests`
/// holds the two to the same reading of the same frames.
///
/// What it refuses (the session then ends with the violation's Close code): a reserved bit set (no
/// extension is ever negotiated: the sidecar removes the offers), a reserved opcode, a client frame
/// without a mask or a server frame with one, a fragmented or oversize control frame, a
/// continuation with no message begun or a new message inside one, a 64-bit length with its top bit
/// set, and a message over `maxMessageBytes` (1009).
struct WebSocketFrameScanner {
    enum Origin {
        /// Frames from the client: masked, always (section 5.3).
        case client
        /// Frames from the upstream: never masked.
        case server
    }

    /// What the frames carry, for the tap: data messages and Close frames. Pings and pongs pass
    /// without an event.
    enum Event {
        /// A data message begins: 1 text, 2 binary.
        case messageStart(opcode: UInt8)
        /// Payload bytes of the message under way, as they passed: still masked when `mask` is not
        /// zero, `maskOffset` being where they start in their frame's payload.
        case payload(UnsafeRawBufferPointer, mask: UInt32, maskOffset: Int)
        case messageEnd
        /// A Close frame: its code (nil when it carried none) and its reason's bytes.
        case close(code: UInt16?, reason: [UInt8])
    }

    /// What a scan lets through.
    struct Scan {
        /// Header bytes held from earlier reads and now checked: they go on before the input's.
        var carried: ByteBuffer?
        /// How many of the input's bytes (from its reader index) go on.
        var forward: Int
        /// Set when a frame broke the protocol: nothing of it or after it goes on.
        var violation: WebSocketViolation?
    }

    let origin: Origin
    let maxMessageBytes: Int
    /// The header under way, when a read ended inside it.
    private var header: [UInt8] = []
    /// Payload bytes left in the current frame.
    private var remaining: UInt64 = 0
    /// Payload bytes of the current frame already seen.
    private var payloadSeen = 0
    private var mask: UInt32 = 0
    private var opcode: UInt8 = 0
    private var fin = false
    /// A data message has begun and its last frame has not come.
    private var inMessage = false
    private var messageBytes: UInt64 = 0
    /// A Close frame's payload, unmasked, as it arrives.
    private var control: [UInt8] = []
    private var failed: WebSocketViolation?

    init(origin: Origin, maxMessageBytes: Int) {
        self.origin = origin
        self.maxMessageBytes = maxMessageBytes
    }

    /// True when what went on ends with a whole frame (a header still incomplete is held back),
    /// so a frame of the sidecar's own (a Close) may follow it in this direction.
    var atFrameBoundary: Bool { remaining == 0 || failed != nil }

    mutating func scan(_ input: ByteBuffer, _ event: (Event) -> Void) -> Scan {
        if let failed { return Scan(carried: nil, forward: 0, violation: failed) }
        var scan = Scan(carried: nil, forward: 0, violation: nil)
        input.withUnsafeReadableBytes { raw in
            var position = 0
            while position < raw.count {
                if remaining > 0 {
                    let take = Int(min(remaining, UInt64(raw.count - position)))
                    payload(UnsafeRawBufferPointer(rebasing: raw[position..<position + take]), event)
                    position += take
                    remaining -= UInt64(take)
                    if remaining == 0 { frameEnded(event) }
                    if let failed {
                        // A Close frame with a bad payload: checked once whole, so its bytes are
                        // held back only if the frame was not yet forwarded: it was. Stop after it.
                        scan.forward = position
                        scan.violation = failed
                        return
                    }
                    continue
                }
                let startedHere = header.isEmpty
                let start = position
                let needed = fill(raw, &position)
                guard header.count >= needed, needed > 0 else {
                    if let violation = failed {
                        scan.forward = startedHere ? start : 0
                        scan.violation = violation
                        return
                    }
                    // The read ended inside the header: what came before it goes on.
                    scan.forward = startedHere ? start : 0
                    return
                }
                if let violation = beginFrame(event) {
                    failed = violation
                    scan.forward = startedHere ? start : 0
                    scan.violation = violation
                    return
                }
                if !startedHere {
                    let earlier = header.count - (position - start)
                    scan.carried = ByteBuffer(bytes: header[0..<earlier])
                }
                header.removeAll(keepingCapacity: true)
                if remaining == 0 { frameEnded(event) }
                if let failed {
                    scan.forward = position
                    scan.violation = failed
                    return
                }
            }
            scan.forward = raw.count
        }
        return scan
    }

    /// Moves header bytes from the input into `header` until the header is whole; returns its
    /// whole length once its first two bytes are known (0 before), checking them as soon as they are.
    private mutating func fill(_ raw: UnsafeRawBufferPointer, _ position: inout Int) -> Int {
        while header.count < 2 {
            guard position < raw.count else { return 0 }
            header.append(raw[position])
            position += 1
        }
        if header.count == 2 && failed == nil, let violation = checkFirstBytes() {
            failed = violation
            return 0
        }
        let length7 = header[1] & 0x7F
        let needed = 2 + (length7 == 126 ? 2 : length7 == 127 ? 8 : 0) + (header[1] & 0x80 != 0 ? 4 : 0)
        while header.count < needed && position < raw.count {
            header.append(raw[position])
            position += 1
        }
        return needed
    }

    private func checkFirstBytes() -> WebSocketViolation? {
        let first = header[0]
        let second = header[1]
        if first & 0x70 != 0 { return .protocolError("a frame with a reserved bit set (no extension was negotiated)") }
        let opcode = first & 0x0F
        let isControl = opcode >= 8
        switch opcode {
        case 0, 1, 2, 8, 9, 10: break
        default: return .protocolError("a frame with the reserved opcode \(opcode)")
        }
        let masked = second & 0x80 != 0
        switch origin {
        case .client where !masked: return .protocolError("an unmasked frame from the client")
        case .server where masked: return .protocolError("a masked frame from the server")
        default: break
        }
        if isControl {
            if first & 0x80 == 0 { return .protocolError("a fragmented control frame") }
            if second & 0x7F > 125 { return .protocolError("a control frame over 125 bytes") }
        } else if opcode == 0 && !inMessage {
            return .protocolError("a continuation frame with no message begun")
        } else if opcode != 0 && inMessage {
            return .protocolError("a new data message before the last one ended")
        }
        return nil
    }

    /// The header is whole: its length and mask are read, and the frame begins.
    private mutating func beginFrame(_ event: (Event) -> Void) -> WebSocketViolation? {
        fin = header[0] & 0x80 != 0
        opcode = header[0] & 0x0F
        let length7 = header[1] & 0x7F
        var index = 2
        var length = UInt64(length7)
        if length7 >= 126 {
            let count = length7 == 126 ? 2 : 8
            length = 0
            for byte in header[2..<2 + count] { length = length << 8 | UInt64(byte) }
            index += count
            if count == 8 && length >> 63 != 0 {
                return .protocolError("a frame length with its most significant bit set")
            }
        }
        mask = 0
        if header[1] & 0x80 != 0 {
            for byte in header[index..<index + 4] { mask = mask << 8 | UInt32(byte) }
        }
        if opcode < 8 {
            let total = messageBytes.addingReportingOverflow(length)
            if total.overflow || total.partialValue > UInt64(maxMessageBytes) {
                return WebSocketViolation(
                    code: 1009,
                    reason: "a message over \(maxMessageBytes) bytes (\(total.overflow ? length : total.partialValue))")
            }
            messageBytes = total.partialValue
            if opcode != 0 {
                inMessage = true
                event(.messageStart(opcode: opcode))
            }
        } else {
            control.removeAll(keepingCapacity: true)
        }
        remaining = length
        payloadSeen = 0
        return nil
    }

    private mutating func payload(_ bytes: UnsafeRawBufferPointer, _ event: (Event) -> Void) {
        defer { payloadSeen += bytes.count }
        if opcode < 8 {
            event(.payload(bytes, mask: mask, maskOffset: payloadSeen))
        } else if opcode == 8 {
            let start = control.count
            control.append(contentsOf: bytes)
            Self.unmask(&control, from: start, mask: mask, maskOffset: payloadSeen)
        }
    }

    private mutating func frameEnded(_ event: (Event) -> Void) {
        switch opcode {
        case 0, 1, 2:
            if fin {
                inMessage = false
                messageBytes = 0
                event(.messageEnd)
            }
        case 8:
            switch control.count {
            case 0:
                event(.close(code: nil, reason: []))
            case 1:
                failed = .protocolError("a Close frame with a one-byte payload")
            default:
                event(.close(code: UInt16(control[0]) << 8 | UInt16(control[1]), reason: Array(control[2...])))
            }
        default:
            break
        }
    }

    /// XORs `bytes[from...]` with the masking key, the first of them being at `maskOffset` in the payload.
    static func unmask(_ bytes: inout [UInt8], from: Int, mask: UInt32, maskOffset: Int) {
        guard mask != 0 else { return }
        for index in from..<bytes.count {
            bytes[index] ^= maskByte(mask, at: maskOffset + index - from)
        }
    }

    @inline(__always)
    static func maskByte(_ mask: UInt32, at offset: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: mask >> (24 - 8 * UInt32(offset & 3)))
    }
}
