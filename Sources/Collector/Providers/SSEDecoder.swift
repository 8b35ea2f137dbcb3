/// One server-sent event: its type (`event:`, "message" when absent) and its data, the `data:`
/// lines joined by LF, as bytes (they are decoded as UTF-8 only once whole).
struct SSEEvent: Equatable {
    var type: String
    var data: [UInt8]

    var dataString: String { String(decoding: data, as: UTF8.self) }
}

/// Decodes a `text/event-stream` body fed in pieces of any size, as the HTML standard's
/// event-stream interpretation says: lines end in CRLF, LF or CR (a CRLF split across two pieces is
/// still one line end), `:` starts a comment, several `data:` lines make one event, a blank line
/// dispatches it, and a leading byte-order mark is dropped. Every provider's stream goes through it.
///
/// After a hole in the body (the sidecar's capture was cut), `skipToNextEvent()` resynchronises at
/// the next blank line, so that no event is made of two halves that never belonged together.
struct SSEDecoder {
    /// A line longer than this is cut off (and counted), so that a stream without line ends can't
    /// grow the decoder without bound.
    let maxLineBytes: Int
    private(set) var oversizeLines = 0

    private var line: [UInt8] = []
    private var lineTooLong = false
    private var lastWasCR = false
    private var atStart = true
    private var eventType = ""
    private var data: [UInt8] = []
    private var hasData = false
    private var resyncing = false

    init(maxLineBytes: Int = 1 << 20) {
        self.maxLineBytes = maxLineBytes
    }

    /// Decodes `bytes`, calling `emit` for every event they complete.
    mutating func feed<Bytes: Sequence>(_ bytes: Bytes, _ emit: (SSEEvent) -> Void) where Bytes.Element == UInt8 {
        for byte in bytes {
            if lastWasCR {
                lastWasCR = false
                if byte == 0x0A { continue }
            }
            switch byte {
            case 0x0D:
                lastWasCR = true
                endLine(emit)
            case 0x0A:
                endLine(emit)
            default:
                if line.count < maxLineBytes {
                    line.append(byte)
                } else if !lineTooLong {
                    lineTooLong = true
                    oversizeLines += 1
                }
            }
        }
    }

    /// The body ended: an event not yet closed by a blank line is dropped, as the standard says.
    mutating func finish() {
        line.removeAll()
        resetEvent()
    }

    /// There is a hole before the next bytes: drop the event under way and wait for a blank line.
    mutating func skipToNextEvent() {
        line.removeAll()
        lineTooLong = false
        lastWasCR = false
        resetEvent()
        resyncing = true
    }

    private mutating func endLine(_ emit: (SSEEvent) -> Void) {
        defer {
            line.removeAll(keepingCapacity: true)
            lineTooLong = false
        }
        if atStart {
            atStart = false
            if line.starts(with: [0xEF, 0xBB, 0xBF]) { line.removeFirst(3) }
        }
        if resyncing {
            if line.isEmpty { resyncing = false }
            return
        }
        if line.isEmpty {
            if hasData {
                emit(SSEEvent(type: eventType.isEmpty ? "message" : eventType, data: data))
            }
            resetEvent()
            return
        }
        if line.first == UInt8(ascii: ":") { return }
        let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.endIndex
        var valueStart = colon == line.endIndex ? colon : colon + 1
        if valueStart < line.endIndex, line[valueStart] == UInt8(ascii: " ") { valueStart += 1 }
        let field = line[..<colon]
        let value = line[valueStart...]
        if field.elementsEqual("data".utf8) {
            if hasData { data.append(0x0A) }
            data.append(contentsOf: value)
            hasData = true
        } else if field.elementsEqual("event".utf8) {
            eventType = String(decoding: value, as: UTF8.self)
        }
        // "id" and "retry" concern reconnection, which a recorded body never does; other fields are ignored.
    }

    private mutating func resetEvent() {
        eventType = ""
        data.removeAll(keepingCapacity: true)
        hasData = false
    }
}
