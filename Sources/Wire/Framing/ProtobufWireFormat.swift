/// The few pieces of the protobuf binary format the envelope codec writes and reads by hand.
/// Records themselves are encoded and decoded by SwiftProtobuf.
@usableFromInline
enum ProtobufWireFormat {
    @usableFromInline
    enum WireType: UInt64 {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case startGroup = 3
        case endGroup = 4
        case fixed32 = 5
    }

    @inlinable
    static func tag(field: Int, _ wireType: WireType) -> UInt64 {
        UInt64(field) << 3 | wireType.rawValue
    }

    @inlinable
    static func varintSize(_ value: UInt64) -> Int {
        // One byte per started group of 7 bits, and at least one byte.
        let bits = 64 - value.leadingZeroBitCount
        return max(1, (bits + 6) / 7)
    }

    /// Writes `value` at `pointer` and returns the bytes written.
    @inlinable
    static func writeVarint(_ value: UInt64, at pointer: UnsafeMutableRawPointer) -> Int {
        var value = value
        var written = 0
        while value >= 0x80 {
            pointer.storeBytes(of: UInt8(truncatingIfNeeded: value) | 0x80, toByteOffset: written, as: UInt8.self)
            value >>= 7
            written += 1
        }
        pointer.storeBytes(of: UInt8(value), toByteOffset: written, as: UInt8.self)
        return written + 1
    }

    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    /// Reads fields from a buffer, refusing anything truncated or out of bounds.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        private(set) var offset = 0

        init(_ bytes: UnsafeRawBufferPointer) {
            self.bytes = bytes
        }

        var isAtEnd: Bool { offset >= bytes.count }

        mutating func varint() throws(Malformed) -> UInt64 {
            var result: UInt64 = 0
            var shift: UInt64 = 0
            while offset < bytes.count {
                let byte = bytes[offset]
                offset += 1
                if shift == 63 && byte > 1 {
                    throw Malformed(description: "a varint overflows 64 bits at byte \(offset - 1)")
                }
                result |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return result }
                shift += 7
            }
            throw Malformed(description: "a varint is cut off at byte \(offset)")
        }

        /// The next field's number and wire type.
        mutating func key() throws(Malformed) -> (field: Int, wireType: WireType) {
            let at = offset
            let key = try varint()
            let field = key >> 3
            guard field > 0, field <= 536_870_911 else {
                throw Malformed(description: "field number \(field) at byte \(at)")
            }
            guard let wireType = WireType(rawValue: key & 7) else {
                throw Malformed(description: "wire type \(key & 7) at byte \(at)")
            }
            return (Int(field), wireType)
        }

        mutating func lengthDelimited() throws(Malformed) -> UnsafeRawBufferPointer {
            let length = try varint()
            guard length <= UInt64(bytes.count - offset) else {
                throw Malformed(
                    description: "a field of \(length) bytes runs past the end (\(bytes.count - offset) left)")
            }
            let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + Int(length)])
            offset += Int(length)
            return slice
        }

        /// Skips a field this decoder does not read, as protobuf requires of unknown fields.
        mutating func skip(_ wireType: WireType) throws(Malformed) {
            switch wireType {
            case .varint: _ = try varint()
            case .lengthDelimited: _ = try lengthDelimited()
            case .fixed64: try advance(8)
            case .fixed32: try advance(4)
            case .startGroup, .endGroup:
                throw Malformed(description: "groups are not used by this wire (byte \(offset))")
            }
        }

        private mutating func advance(_ count: Int) throws(Malformed) {
            guard count <= bytes.count - offset else { throw Malformed(description: "a fixed-size field is cut off") }
            offset += count
        }
    }
}
