import NIOCore
import Wire

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The header fields of a request or response head, kept as the bytes they arrived in plus where
/// each name and value sits. The proxy copies them onward, hashes a credential from them and
/// writes them onto the wire, all from these bytes: no string is made per header.
struct RawHeaderFields: RecordHeaderFields {
    struct Field {
        let nameStart: Int32
        let nameEnd: Int32
        let valueStart: Int32
        let valueEnd: Int32
    }

    /// The whole head the fields were read from; offsets are from its reader index.
    let bytes: ByteBuffer
    private(set) var fields: [Field]

    init(bytes: ByteBuffer, fields: [Field]) {
        self.bytes = bytes
        self.fields = fields
    }

    init() {
        self.init(bytes: ByteBuffer(), fields: [])
    }

    var count: Int { fields.count }

    /// Calls `body` with each field's name and value, in order, over the bytes in place.
    func forEachField(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
        bytes.withUnsafeReadableBytes { raw in
            for field in fields {
                body(
                    UnsafeRawBufferPointer(rebasing: raw[Int(field.nameStart)..<Int(field.nameEnd)]),
                    UnsafeRawBufferPointer(rebasing: raw[Int(field.valueStart)..<Int(field.valueEnd)])
                )
            }
        }
    }

    /// Compares bytes with a lower-case literal, ignoring ASCII case.
    static func equalsIgnoringCase(_ bytes: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
        guard bytes.count == literal.utf8CodeUnitCount else { return false }
        return literal.withUTF8Buffer { expected in
            for index in 0..<bytes.count where lowered(bytes[index]) != expected[index] { return false }
            return true
        }
    }

    @inline(__always)
    static func lowered(_ byte: UInt8) -> UInt8 {
        byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
    }
}

/// Reads the header lines of a head (after its first line), strictly: RFC 9112's field syntax,
/// with the obsolete forms (line folding, whitespace before the colon) refused.
enum HeaderLineScanner {
    /// The most header fields one head may hold, however few bytes they take: each costs the
    /// proxy a field entry, and every field is looked at again when the head is written onward.
    static let maxFields = 1_000

    /// Where the lines of `raw` are, from `start`: the next line's range without its LF or CRLF.
    static func nextLine(_ raw: UnsafeRawBufferPointer, _ position: inout Int) -> Range<Int>? {
        guard position < raw.count, let lf = find(0x0A, in: raw, position..<raw.count) else { return nil }
        let start = position
        position = lf + 1
        return start..<(lf > start && raw[lf - 1] == 0x0D ? lf - 1 : lf)
    }

    /// Reads fields up to the empty line, calling `inspect` with each as it is added.
    static func fields(
        _ raw: UnsafeRawBufferPointer, from position: inout Int,
        _ inspect: (_ name: UnsafeRawBufferPointer, _ value: Range<Int>) throws(HTTPFramingError) -> Void
    ) throws(HTTPFramingError) -> [RawHeaderFields.Field] {
        var fields: [RawHeaderFields.Field] = []
        fields.reserveCapacity(16)
        while true {
            guard let line = nextLine(raw, &position) else {
                throw HTTPFramingError("the head has no empty line at its end")
            }
            if line.isEmpty { return fields }
            // A line must end in CRLF or LF; a CR elsewhere is refused by the value check below.
            guard let colon = find(UInt8(ascii: ":"), in: raw, line), colon > line.lowerBound else {
                if raw[line.lowerBound] == UInt8(ascii: " ") || raw[line.lowerBound] == UInt8(ascii: "\t") {
                    throw HTTPFramingError("a folded header line (obsolete line folding)")
                }
                throw HTTPFramingError("a header line without a name and colon")
            }
            let name = line.lowerBound..<colon
            guard allTokenBytes(raw, name) else {
                throw HTTPFramingError("a header name holds a byte a token can't")
            }
            guard fields.count < maxFields else {
                throw HTTPFramingError("the head has more than \(maxFields) header fields", reason: .overLimit)
            }
            var valueStart = colon + 1
            var valueEnd = line.upperBound
            while valueStart < valueEnd, raw[valueStart] == 0x20 || raw[valueStart] == 0x09 { valueStart += 1 }
            while valueEnd > valueStart, raw[valueEnd - 1] == 0x20 || raw[valueEnd - 1] == 0x09 { valueEnd -= 1 }
            for index in valueStart..<valueEnd where !isFieldValueByte(raw[index]) {
                throw HTTPFramingError("a header value holds a control character")
            }
            try inspect(UnsafeRawBufferPointer(rebasing: raw[name]), valueStart..<valueEnd)
            fields.append(
                RawHeaderFields.Field(
                    nameStart: Int32(name.lowerBound), nameEnd: Int32(name.upperBound), valueStart: Int32(valueStart),
                    valueEnd: Int32(valueEnd)
                ))
        }
    }

    /// The comma-separated tokens of a header value, their surrounding whitespace dropped.
    static func forEachToken(
        _ raw: UnsafeRawBufferPointer, _ value: Range<Int>, _ body: (UnsafeRawBufferPointer) -> Void
    ) {
        var start = value.lowerBound
        while start <= value.upperBound {
            let comma = find(UInt8(ascii: ","), in: raw, start..<value.upperBound) ?? value.upperBound
            var tokenStart = start
            var tokenEnd = comma
            while tokenStart < tokenEnd, raw[tokenStart] == 0x20 || raw[tokenStart] == 0x09 { tokenStart += 1 }
            while tokenEnd > tokenStart, raw[tokenEnd - 1] == 0x20 || raw[tokenEnd - 1] == 0x09 { tokenEnd -= 1 }
            if tokenStart < tokenEnd { body(UnsafeRawBufferPointer(rebasing: raw[tokenStart..<tokenEnd])) }
            start = comma + 1
        }
    }

    /// A non-negative decimal number of at most 18 digits, or nil.
    static func decimal(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard !bytes.isEmpty, bytes.count <= 18 else { return nil }
        var value = 0
        for byte in bytes {
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value
    }

    /// The end of a head in `raw` (just past its empty line), if it has all arrived.
    ///
    /// `strict` (requests) takes only CRLF line ends and refuses a bare LF at once, as llhttp does:
    /// a recipient that reads bare LFs as line ends can be told a different story than one that
    /// doesn't. Responses from the upstream may use bare LFs (RFC 9112, section 2.2).
    ///
    /// - Parameter from: where to resume: a scan that found no end in `n` bytes has judged every
    ///   line end before `n - 2` (see `resumePoint`), so a slow head is not scanned again from its start.
    static func headEnd(_ raw: UnsafeRawBufferPointer, strict: Bool, from: Int = 0) throws(HTTPFramingError) -> Int? {
        var index = min(from, raw.count)
        while let lf = find(0x0A, in: raw, index..<raw.count) {
            if strict {
                guard lf > 0, raw[lf - 1] == 0x0D else {
                    throw HTTPFramingError("a line of the head ends in a bare LF, not CRLF")
                }
                if lf + 2 < raw.count, raw[lf + 1] == 0x0D, raw[lf + 2] == 0x0A { return lf + 3 }
            } else {
                if lf + 1 < raw.count, raw[lf + 1] == 0x0A { return lf + 2 }
                if lf + 2 < raw.count, raw[lf + 1] == 0x0D, raw[lf + 2] == 0x0A { return lf + 3 }
            }
            index = lf + 1
        }
        return nil
    }

    /// Where to resume `headEnd` once it found no end in `count` bytes.
    static func resumePoint(afterScanning count: Int) -> Int {
        max(0, count - 2)
    }

    /// The first `byte` in `range` of `raw` (memchr: these scans run over every head).
    @inline(__always)
    static func find(_ byte: UInt8, in raw: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, let base = raw.baseAddress else { return nil }
        guard let found = memchr(base + range.lowerBound, Int32(byte), range.count) else { return nil }
        return UnsafeRawPointer(found) - base
    }

    static func allTokenBytes(_ raw: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        tokenTable.withUnsafeBufferPointer { table in
            for index in range where !table[Int(raw[index])] { return false }
            return true
        }
    }

    private static let tokenTable: [Bool] = (0..<256).map { isTokenByte(UInt8($0)) }

    /// A byte a field value (or a reason phrase) may hold: HTAB, SP, VCHAR and obs-text (RFC 9110,
    /// section 5.5), no other control byte.
    @inline(__always)
    static func isFieldValueByte(_ byte: UInt8) -> Bool {
        byte >= 0x20 ? byte != 0x7F : byte == 0x09
    }

    /// A byte a request target may hold: visible ASCII only, no whitespace, controls or raw
    /// non-ASCII bytes.
    @inline(__always)
    static func isTargetByte(_ byte: UInt8) -> Bool {
        byte > 0x20 && byte < 0x7F
    }

    /// RFC 9110 `tchar`.
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
            UInt8(ascii: "'"),
            UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"),
            UInt8(ascii: "_"),
            UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            true
        default:
            false
        }
    }
}
