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
    static func topLevelModel(_ bytes: [UInt8]) -> Result {
        var index = 0
        func skipSpace() {
            while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 { index += 1 }
        }
        /// Reads a string at `index` (at its opening quote); returns its unescaped bytes.
        func readString() -> [UInt8]? {
            guard index < bytes.count, bytes[index] == 0x22 else { return nil }
            index += 1
            var out: [UInt8] = []
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                switch byte {
                case 0x22: return out
                case 0x5C:
                    guard index < bytes.count else { return nil }
                    let escaped = bytes[index]
                    index += 1
                    switch escaped {
                    case 0x75:
                        // \uXXXX: kept as written; a model name that needs it will not match a list entry anyway.
                        guard index + 4 <= bytes.count else { return nil }
                        out += [0x5C, 0x75] + bytes[index..<index + 4]
                        index += 4
                    case 0x6E: out.append(0x0A)
                    case 0x74: out.append(0x09)
                    case 0x72: out.append(0x0D)
                    case 0x62: out.append(0x08)
                    case 0x66: out.append(0x0C)
                    default: out.append(escaped)
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
                        if depth == 0 { index += 1; return true }
                    default: break
                    }
                    index += 1
                }
                return false
            default:
                while index < bytes.count, ![0x2C, 0x7D, 0x5D, 0x20, 0x0A, 0x0D, 0x09].contains(bytes[index]) { index += 1 }
                return true
            }
        }
        skipSpace()
        guard index < bytes.count, bytes[index] == 0x7B else { return .unreadable }
        index += 1
        while true {
            skipSpace()
            guard index < bytes.count else { return .unreadable }
            if bytes[index] == 0x7D { return .none }
            guard let name = readString() else { return .unreadable }
            skipSpace()
            guard index < bytes.count, bytes[index] == 0x3A else { return .unreadable }
            index += 1
            skipSpace()
            if name == Array("model".utf8), index < bytes.count, bytes[index] == 0x22 {
                guard let value = readString() else { return .unreadable }
                return .model(String(decoding: value, as: UTF8.self))
            }
            guard skipValue() else { return .unreadable }
            skipSpace()
            guard index < bytes.count else { return .unreadable }
            if bytes[index] == 0x2C { index += 1; continue }
            if bytes[index] == 0x7D { return .none }
            return .unreadable
        }
    }
}
