/// Finds keys and objects in JSON bytes without decoding them: to decide which stream events are
/// worth decoding, and to pull usage out of a body whose middle was never captured.
enum JSONScan {
    /// Whether `"key"` occurs anywhere (as a key or a string: a cheap filter, not a verdict).
    static func contains(key: String, in bytes: [UInt8]) -> Bool {
        let needle = Array("\"\(key)\"".utf8)
        return firstRange(of: needle, in: bytes[...]) != nil
    }

    /// Whether `"key"` is followed by an object (`"usage": {`), not `null`.
    static func hasObject(named key: String, in bytes: [UInt8]) -> Bool {
        objectStarts(named: key, in: bytes).first != nil
    }

    /// Candidates `lastObject` tries, from the end: each costs a scan to the body's end when its
    /// braces never close, so a body of many unclosed `"usage": {` can't make the scan quadratic.
    static let maxObjectCandidates = 16

    /// The last `"key": { ... }` object, braces balanced, strings and escapes respected.
    static func lastObject(named key: String, in bytes: [UInt8]) -> ArraySlice<UInt8>? {
        for start in objectStarts(named: key, in: bytes).suffix(maxObjectCandidates).reversed() {
            if let end = matchingBrace(from: start, in: bytes) { return bytes[start...end] }
        }
        return nil
    }

    /// The first `"key": "value"` string value, unescaped.
    static func stringValue(of key: String, in bytes: [UInt8]) -> String? {
        let needle = Array("\"\(key)\"".utf8)
        var from = bytes.startIndex
        while let found = firstRange(of: needle, in: bytes[from...]) {
            var index = skipSpaces(bytes, found.upperBound)
            from = found.upperBound
            guard index < bytes.endIndex, bytes[index] == UInt8(ascii: ":") else { continue }
            index = skipSpaces(bytes, index + 1)
            guard index < bytes.endIndex, bytes[index] == UInt8(ascii: "\"") else { continue }
            guard let end = closingQuote(from: index, in: bytes) else { return nil }
            let literal = Array(bytes[index...end])
            // The literal is JSON: let the JSON decoder undo its escapes.
            return try? JSONStringLiteral.decode(literal)
        }
        return nil
    }

    private static func objectStarts(named key: String, in bytes: [UInt8]) -> [Int] {
        let needle = Array("\"\(key)\"".utf8)
        var starts: [Int] = []
        var from = bytes.startIndex
        while let found = firstRange(of: needle, in: bytes[from...]) {
            from = found.upperBound
            var index = skipSpaces(bytes, found.upperBound)
            guard index < bytes.endIndex, bytes[index] == UInt8(ascii: ":") else { continue }
            index = skipSpaces(bytes, index + 1)
            if index < bytes.endIndex, bytes[index] == UInt8(ascii: "{") { starts.append(index) }
        }
        return starts
    }

    private static func matchingBrace(from start: Int, in bytes: [UInt8]) -> Int? {
        var depth = 0
        var found: Int?
        forEachOutsideStrings(bytes, from: start) { index, byte in
            switch byte {
            case UInt8(ascii: "{"): depth += 1
            case UInt8(ascii: "}"):
                depth -= 1
                if depth == 0 {
                    found = index
                    return false
                }
            default: break
            }
            return true
        }
        return found
    }

    /// The deepest nesting of objects and lists in JSON bytes; it stops counting once past `limit`.
    static func nestingDepth(_ bytes: [UInt8], limit: Int) -> Int {
        var depth = 0
        var deepest = 0
        forEachOutsideStrings(bytes, from: bytes.startIndex) { _, byte in
            switch byte {
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                depth += 1
                deepest = max(deepest, depth)
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
            default: break
            }
            return deepest <= limit
        }
        return deepest
    }

    /// Visits each byte from `start` that is not inside a string (quotes included in neither),
    /// escapes respected, until `visit` answers false.
    private static func forEachOutsideStrings(_ bytes: [UInt8], from start: Int, _ visit: (Int, UInt8) -> Bool) {
        var inString = false
        var escaped = false
        for index in start..<bytes.endIndex {
            let byte = bytes[index]
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            if byte == UInt8(ascii: "\"") {
                inString = true
                continue
            }
            guard visit(index, byte) else { return }
        }
    }

    private static func closingQuote(from start: Int, in bytes: [UInt8]) -> Int? {
        var escaped = false
        for index in (start + 1)..<bytes.endIndex {
            if escaped {
                escaped = false
            } else if bytes[index] == UInt8(ascii: "\\") {
                escaped = true
            } else if bytes[index] == UInt8(ascii: "\"") {
                return index
            }
        }
        return nil
    }

    private static func skipSpaces(_ bytes: [UInt8], _ index: Int) -> Int {
        var index = index
        while index < bytes.endIndex, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        return index
    }

    private static func firstRange(of needle: [UInt8], in haystack: ArraySlice<UInt8>) -> Range<Int>? {
        guard let first = needle.first, haystack.count >= needle.count else { return nil }
        var index = haystack.startIndex
        let last = haystack.endIndex - needle.count
        while index <= last {
            guard let candidate = haystack[index...last].firstIndex(of: first) else { return nil }
            if haystack[candidate..<candidate + needle.count].elementsEqual(needle) {
                return candidate..<candidate + needle.count
            }
            index = candidate + 1
        }
        return nil
    }
}
