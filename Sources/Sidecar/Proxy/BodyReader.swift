import NIOCore

/// What a parser reads off a connection, in order: a head, its body in pieces, the end.
enum HTTPMessagePart<Head> {
    case head(Head)
    case body(ByteBuffer)
    case end
}

extension ByteBuffer {
    /// Adds bytes just read to those a parser holds: without a copy when it held none.
    mutating func appendReceived(_ input: ByteBuffer) {
        if readableBytes == 0 {
            self = input
        } else {
            writeImmutableBuffer(input)
        }
    }
}

/// Reads one HTTP/1.1 message body, in the framing its head chose, from the bytes a parser holds
/// (RFC 9112, sections 6 and 7.1). Bodies come out as slices of those bytes, never copied, and
/// de-chunked; anything that breaks the framing is an error, since after it nobody can say where
/// the next message starts.
///
/// Both `ClientRequestParser` and `UpstreamResponseParser` read their bodies with it.
struct BodyReader {
    enum Framing: Equatable {
        case length(Int)
        case chunked
        /// Until the connection closes (responses only).
        case untilClose
    }

    enum Step {
        case body(ByteBuffer)
        case end
        case needMore
    }

    private enum State {
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        /// The trailer section so far: its bytes and fields, each bounded.
        case trailers(bytes: Int, fields: Int)
        case untilClose
        case ended
    }

    /// A chunk-size or trailer line longer than this is refused.
    static let maxLineBytes = 4096
    /// A trailer section larger than this, or with more fields, is refused (responses; requests take none).
    static let maxTrailerBytes = 16 << 10
    static let maxTrailerFields = 100

    private var state: State
    /// Chunk lines must end in CRLF (requests; see `HeaderLineScanner.headEnd`).
    private let strictLineEndings: Bool

    init(_ framing: Framing, strictLineEndings: Bool) {
        self.strictLineEndings = strictLineEndings
        switch framing {
        case .length(let length): state = .fixed(remaining: length)
        case .chunked: state = .chunkSize
        case .untilClose: state = .untilClose
        }
    }

    /// True for a body that only the connection's close can end.
    var endsAtClose: Bool {
        if case .untilClose = state { true } else { false }
    }

    /// The next piece of the body in `pending`, its end, or a wish for more bytes.
    mutating func next(from pending: inout ByteBuffer) throws(HTTPFramingError) -> Step {
        while true {
            switch state {
            case .ended:
                return .end
            case .fixed(let remaining):
                guard remaining > 0 else {
                    state = .ended
                    return .end
                }
                guard pending.readableBytes > 0 else { return .needMore }
                let take = min(remaining, pending.readableBytes)
                state = .fixed(remaining: remaining - take)
                return .body(pending.readSlice(length: take)!)
            case .untilClose:
                guard pending.readableBytes > 0 else { return .needMore }
                return .body(pending.readSlice(length: pending.readableBytes)!)
            case .chunkSize:
                guard let line = try takeLine(&pending, what: "chunk size") else { return .needMore }
                let size = try Self.parseChunkSize(line, strict: strictLineEndings)
                state = size == 0 ? .trailers(bytes: 0, fields: 0) : .chunkData(remaining: size)
            case .chunkData(let remaining):
                guard pending.readableBytes > 0 else { return .needMore }
                let take = min(remaining, pending.readableBytes)
                state = take == remaining ? .chunkDataEnd : .chunkData(remaining: remaining - take)
                return .body(pending.readSlice(length: take)!)
            case .chunkDataEnd:
                // CRLF and nothing else, from either side: the leniency RFC 9112 allows (a bare LF)
                // is for head lines, and a chunk whose data ends otherwise was sized wrong (llhttp
                // refuses it too: found by the response differential test).
                guard pending.readableBytes >= 2 else {
                    if pending.readableBytes == 1, pending.readableBytesView.first != 0x0D {
                        throw HTTPFramingError("a chunk's data does not end in CRLF (its size is wrong)")
                    }
                    return .needMore
                }
                guard pending.readableBytesView.prefix(2).elementsEqual([0x0D, 0x0A]) else {
                    throw HTTPFramingError("a chunk's data does not end in CRLF (its size is wrong)")
                }
                pending.moveReaderIndex(forwardBy: 2)
                state = .chunkSize
            case .trailers(let bytes, let fields):
                // Trailer fields are read and dropped: they are rare, no LLM API uses them, and the
                // proxy re-frames every body it forwards.
                guard let line = try takeLine(&pending, what: "trailer") else { return .needMore }
                if line.readableBytes == 0 {
                    state = .ended
                    return .end
                }
                // Strict readers (requests) take no trailer fields: a field there could be read as
                // framing by one side and not by the other, and no LLM API uses them.
                if strictLineEndings { throw HTTPFramingError("trailer fields are not accepted in requests") }
                let total = bytes + line.readableBytes
                guard total <= Self.maxTrailerBytes, fields < Self.maxTrailerFields else {
                    throw HTTPFramingError(
                        "the trailer section is over \(Self.maxTrailerBytes) bytes or \(Self.maxTrailerFields) fields"
                    )
                }
                state = .trailers(bytes: total, fields: fields + 1)
            }
        }
    }

    /// The next part of the message for a parser in its body state; `ended` once the body is over.
    mutating func nextPart<Head>(from pending: inout ByteBuffer) throws(HTTPFramingError) -> (
        part: HTTPMessagePart<Head>?, ended: Bool
    ) {
        switch try next(from: &pending) {
        case .body(let buffer): (.body(buffer), false)
        case .end: (.end, true)
        case .needMore: (nil, false)
        }
    }

    /// A line without its LF or CRLF, once whole; nil (the bytes left in place) until then.
    private func takeLine(_ pending: inout ByteBuffer, what: String) throws(HTTPFramingError) -> ByteBuffer? {
        // The limit holds whether the line's end came in the same read or not.
        let window = pending.readableBytesView.prefix(Self.maxLineBytes + 2)
        guard let lf = window.firstIndex(of: 0x0A) else {
            guard pending.readableBytes <= Self.maxLineBytes else {
                throw HTTPFramingError("a \(what) line is over \(Self.maxLineBytes) bytes")
            }
            return nil
        }
        guard lf - pending.readerIndex <= Self.maxLineBytes else {
            throw HTTPFramingError("a \(what) line is over \(Self.maxLineBytes) bytes")
        }
        var line = pending.readSlice(length: lf - pending.readerIndex + 1)!
        line.moveWriterIndex(to: line.writerIndex - 1)
        if line.readableBytesView.last == 0x0D {
            line.moveWriterIndex(to: line.writerIndex - 1)
        } else if strictLineEndings {
            throw HTTPFramingError("a \(what) line ends in a bare LF, not CRLF")
        }
        return line
    }

    /// `;name[=value]`, repeated, as RFC 9112 section 7.1.1 writes it without optional whitespace:
    /// names are tokens, values tokens or quoted strings of visible ASCII. llhttp reads requests
    /// this strictly, so the sidecar must too (the client-request fuzz target found ':' in a name,
    /// and bytes past ASCII, accepted here and refused there).
    static func isStrictChunkExtension(_ bytes: ByteBufferView.SubSequence) -> Bool {
        var index = bytes.startIndex
        func token() -> Bool {
            let start = index
            while index < bytes.endIndex, HeaderLineScanner.isTokenByte(bytes[index]) { index += 1 }
            return index > start
        }
        while index < bytes.endIndex {
            guard bytes[index] == UInt8(ascii: ";") else { return false }
            index += 1
            guard token() else { return false }
            guard index < bytes.endIndex, bytes[index] == UInt8(ascii: "=") else { continue }
            index += 1
            if index < bytes.endIndex, bytes[index] == UInt8(ascii: "\"") {
                index += 1
                var closed = false
                while index < bytes.endIndex {
                    let byte = bytes[index]
                    index += 1
                    guard byte >= 0x21 && byte < 0x7F else { return false }
                    if byte == UInt8(ascii: "\"") {
                        closed = true
                        break
                    }
                    if byte == UInt8(ascii: "\\") {
                        guard index < bytes.endIndex, bytes[index] >= 0x21 && bytes[index] < 0x7F else { return false }
                        index += 1
                    }
                }
                guard closed else { return false }
            } else if !token() {
                return false
            }
        }
        return true
    }

    /// The size on a chunk-size line, in hex, before any chunk extension.
    /// `strict` (requests) takes no whitespace before a chunk extension, as llhttp.
    static func parseChunkSize(_ line: ByteBuffer, strict: Bool) throws(HTTPFramingError) -> Int {
        var size = 0
        var digits = 0
        for byte in line.readableBytesView {
            let value: Int
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(byte - UInt8(ascii: "A") + 10)
            case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"):
                // Chunk extensions (and the whitespace some servers put before them) carry nothing we use.
                guard digits > 0 else { throw HTTPFramingError("a chunk size line has no size") }
                if strict && byte != UInt8(ascii: ";") {
                    throw HTTPFramingError("whitespace before a chunk extension")
                }
                if strict {
                    let extensions = line.readableBytesView.dropFirst(digits)
                    guard Self.isStrictChunkExtension(extensions) else {
                        throw HTTPFramingError(
                            "a chunk extension is not ;name or ;name=value of tokens or a quoted string")
                    }
                }
                return size
            default:
                throw HTTPFramingError("a chunk size line holds byte 0x\(String(byte, radix: 16))")
            }
            digits += 1
            guard digits <= 15 else { throw HTTPFramingError("a chunk size is too large") }
            size = size << 4 | value
        }
        guard digits > 0 else { throw HTTPFramingError("a chunk size line is empty") }
        return size
    }
}
