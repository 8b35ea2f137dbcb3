/// Bytes from traffic that a protobuf `string` must carry: such a field must be valid UTF-8, or
/// the whole record fails to decode (and an exchange would vanish from accounting). Header values
/// may hold any byte from 0x80 up (obs-text, RFC 9110 section 5.5), so every such value is checked.
public enum WireText {
    /// Whether `bytes` are valid UTF-8; ASCII, the usual case, is settled eight bytes at a time.
    @inlinable
    public static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        let count = bytes.count
        while index + 8 <= count {
            if bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 != 0 {
                break
            }
            index += 8
        }
        while index < count, bytes[index] < 0x80 { index += 1 }
        if index == count { return true }
        return String(validating: UnsafeRawBufferPointer(rebasing: bytes[index...]), as: UTF8.self)
            != nil
    }

    /// The bytes read as UTF-8, each invalid sequence as U+FFFD.
    @inlinable
    public static func replacingInvalidUTF8(_ bytes: UnsafeRawBufferPointer) -> String {
        String(decoding: bytes, as: UTF8.self)
    }
}
