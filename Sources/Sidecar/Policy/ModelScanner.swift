/// Finds the model a request asks for, for keys limited to some models. The sidecar does not
/// parse JSON on the data path: this reads only a request body's top-level `"model"` member (or
/// Gemini's model in the path), and only for such keys.
enum ModelScanner {
    /// Gemini names the model in the path: `/v1beta/models/gemini-2.0-flash:generateContent`.
    static func modelInPath(_ path: String) -> String? {
        let pathOnly = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path
        guard let range = pathOnly.range(of: "/models/") else { return nil }
        let rest = pathOnly[range.upperBound...]
        let model = rest.prefix { $0 != ":" && $0 != "/" }
        return model.isEmpty ? nil : String(model)
    }

    enum Result: Equatable {
        case model(String)
        /// A JSON object with no string `model` member.
        case none
        /// Not a JSON object, or cut short.
        case unreadable
    }

    /// The top-level `"model"` string of a JSON object. Nested values are skipped by bracket and
    /// string matching; nothing is built from them.
    ///
    /// It reads as the upstream's JSON parser will, or refuses: escapes are decoded (so
    /// `"mod\u0065l"` is `model`), a second top-level `model` is unreadable (parsers disagree on
    /// which one wins, and the key's check must hold for the one the upstream uses), and so is
    /// anything after the object's end.
    static func topLevelModel(_ bytes: [UInt8]) -> Result {
        var index = 0
        func skipSpace() {
            while index < bytes.count,
                bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09
            { index += 1 }
        }
        func hex(_ at: Int) -> UInt32? {
            guard at + 4 <= bytes.count else { return nil }
            var value: UInt32 = 0
            for byte in bytes[at..<at + 4] {
                let digit: UInt32
                switch byte {
                case 0x30...0x39: digit = UInt32(byte - 0x30)
                case 0x41...0x46: digit = UInt32(byte - 0x41 + 10)
                case 0x61...0x66: digit = UInt32(byte - 0x61 + 10)
                default: return nil
                }
                value = value << 4 | digit
            }
            return value
        }
        /// Reads a string at `index` (at its opening quote); returns its unescaped bytes, or nil
        /// for one JSON does not allow (cut short, a bad escape, a raw control character).
        func readString() -> [UInt8]? {
            guard index < bytes.count, bytes[index] == 0x22 else { return nil }
            index += 1
            var out: [UInt8] = []
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                switch byte {
                case 0x22: return out
                case 0x00..<0x20: return nil
                case 0x5C:
                    guard index < bytes.count else { return nil }
                    let escaped = bytes[index]
                    index += 1
                    switch escaped {
                    case 0x75:
                        guard var scalar = hex(index) else { return nil }
                        index += 4
                        if (0xD800..<0xDC00).contains(scalar) {
                            // A high surrogate must be followed by its low half.
                            guard index + 6 <= bytes.count, bytes[index] == 0x5C, bytes[index + 1] == 0x75,
                                let low = hex(index + 2), (0xDC00..<0xE000).contains(low)
                            else { return nil }
                            index += 6
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        }
                        guard let unicode = Unicode.Scalar(scalar) else { return nil }
                        out += Array(String(Character(unicode)).utf8)
                    case 0x22, 0x5C, 0x2F: out.append(escaped)
                    case 0x6E: out.append(0x0A)
                    case 0x74: out.append(0x09)
                    case 0x72: out.append(0x0D)
                    case 0x62: out.append(0x08)
                    case 0x66: out.append(0x0C)
                    default: return nil
                    }
                default:
                    out.append(byte)
                }
            }
            return nil
        }
        /// Skips one value of any kind.
        func skipValue() -> Bool {
            skipSpace()
            guard index < bytes.count else { return false }
            switch bytes[index] {
            case 0x22:
                return readString() != nil
            case 0x7B, 0x5B:
                var depth = 0
                while index < bytes.count {
                    switch bytes[index] {
                    case 0x22:
                        if readString() == nil { return false }
                        continue
                    case 0x7B, 0x5B: depth += 1
                    case 0x7D, 0x5D:
                        depth -= 1
                        if depth == 0 {
                            index += 1
                            return true
                        }
                    default: break
                    }
                    index += 1
                }
                return false
            default:
                let start = index
                while index < bytes.count, ![0x2C, 0x7D, 0x5D, 0x20, 0x0A, 0x0D, 0x09].contains(bytes[index]) {
                    index += 1
                }
                return index > start
            }
        }
        skipSpace()
        guard index < bytes.count, bytes[index] == 0x7B else { return .unreadable }
        index += 1
        var model: [UInt8]?
        var sawModel = false
        skipSpace()
        if index < bytes.count, bytes[index] == 0x7D {
            index += 1
        } else {
            while true {
                skipSpace()
                guard let name = readString() else { return .unreadable }
                skipSpace()
                guard index < bytes.count, bytes[index] == 0x3A else { return .unreadable }
                index += 1
                skipSpace()
                if name == Array("model".utf8) {
                    guard !sawModel else { return .unreadable }
                    sawModel = true
                    if index < bytes.count, bytes[index] == 0x22 {
                        guard let value = readString() else { return .unreadable }
                        model = value
                    } else if !skipValue() {
                        return .unreadable
                    }
                } else if !skipValue() {
                    return .unreadable
                }
                skipSpace()
                guard index < bytes.count else { return .unreadable }
                if bytes[index] == 0x2C {
                    index += 1
                    continue
                }
                guard bytes[index] == 0x7D else { return .unreadable }
                index += 1
                break
            }
        }
        skipSpace()
        guard index == bytes.count else { return .unreadable }
        guard let model else { return .none }
        guard let text = String(validating: model, as: UTF8.self) else { return .unreadable }
        return .model(text)
    }
}
