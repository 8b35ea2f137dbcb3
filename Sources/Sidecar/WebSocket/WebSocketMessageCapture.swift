import Wire

/// Gathers one direction's data messages for the tap, reassembled from their fragments and
/// unmasked, within the capture cap. Pure.
///
/// Each direction may capture `maxCaptureBytes` of message bytes in a session; a message that
/// does not fit is cut, and those after the cap are published empty (their size and opcode still
/// say they passed). A Realtime API session reports its usage in `response.done` events all
/// along, so, as the tail of a streamed HTTP response, an upstream message that a byte scan of its
/// first bytes shows to be a `response.done` or an `error` event is captured whatever the cap has
/// taken (up to `maxCaptureBytes` for the message).
struct WebSocketMessageCapture {
    struct Message {
        var opcode: UInt8
        /// The bytes captured: all of them, or the first ones.
        var data: [UInt8]
        var size: UInt64
    }

    /// How many first bytes are read to recognise an event that carries usage.
    static let probeBytes = 192

    let keepsUsageEvents: Bool
    let maxCaptureBytes: Int
    /// Bytes this direction may still capture.
    private var budget: Int
    private var opcode: UInt8 = 0
    private var bytes: [UInt8] = []
    private var size: UInt64 = 0
    /// How many of the message's bytes are kept.
    private var keep = 0
    /// The first bytes decide whether the message is kept past the cap.
    private var probing = false
    private(set) var messages: UInt64 = 0

    init(maxCaptureBytes: Int, keepsUsageEvents: Bool) {
        self.maxCaptureBytes = max(0, maxCaptureBytes)
        self.budget = self.maxCaptureBytes
        self.keepsUsageEvents = keepsUsageEvents
    }

    mutating func start(opcode: UInt8) {
        self.opcode = opcode
        bytes.removeAll(keepingCapacity: bytes.capacity <= 64 << 10)
        size = 0
        keep = budget
        probing = keepsUsageEvents && budget < maxCaptureBytes
        if probing { keep = max(budget, min(Self.probeBytes, maxCaptureBytes)) }
    }

    /// Payload bytes as they passed, masked with `mask` (0: not masked) from `maskOffset` on.
    mutating func append(_ payload: UnsafeRawBufferPointer, mask: UInt32, maskOffset: Int) {
        size += UInt64(payload.count)
        var taken = 0
        while true {
            let take = min(keep - bytes.count, payload.count - taken)
            if take > 0 {
                let start = bytes.count
                bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: payload[taken..<taken + take]))
                WebSocketFrameScanner.unmask(&bytes, from: start, mask: mask, maskOffset: maskOffset + taken)
                taken += take
            }
            // Once the first bytes are in, the rest of this piece is kept as they decide.
            guard probing && bytes.count >= Self.probeBytes else { return }
            decide()
        }
    }

    /// The message ended: what the tap publishes of it.
    mutating func end() -> Message {
        if probing { decide() }
        budget -= min(budget, bytes.count)
        messages += 1
        return Message(opcode: opcode, data: bytes, size: size)
    }

    private mutating func decide() {
        probing = false
        if RealtimeEventScan.carriesUsage(bytes.prefix(Self.probeBytes)) {
            keep = maxCaptureBytes
        } else {
            keep = budget
            if bytes.count > keep { bytes.removeLast(bytes.count - keep) }
        }
    }
}

/// A byte scan of a Realtime event's first bytes: no JSON parsing on the data path.
enum RealtimeEventScan {
    /// True when the first `"type"` key's value is `"response.done"` or `"error"`.
    static func carriesUsage<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> Bool where Bytes.Index == Int {
        guard let value = firstTypeValue(bytes) else { return false }
        return value.elementsEqual("response.done".utf8) || value.elementsEqual("error".utf8)
    }

    /// The string value of the first `"type"` key, if the bytes hold it whole.
    static func firstTypeValue<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> Bytes.SubSequence?
    where Bytes.Index == Int {
        let key = Array("\"type\"".utf8)
        var index = bytes.startIndex
        while index + key.count <= bytes.endIndex {
            guard bytes[index..<index + key.count].elementsEqual(key) else {
                index += 1
                continue
            }
            var position = index + key.count
            func skipSpace() {
                while position < bytes.endIndex, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[position]) { position += 1 }
            }
            skipSpace()
            guard position < bytes.endIndex, bytes[position] == UInt8(ascii: ":") else {
                index += 1
                continue
            }
            position += 1
            skipSpace()
            guard position < bytes.endIndex, bytes[position] == UInt8(ascii: "\"") else { return nil }
            let start = position + 1
            guard let end = bytes[start...].firstIndex(of: UInt8(ascii: "\"")) else { return nil }
            return bytes[start..<end]
        }
        return nil
    }
}
