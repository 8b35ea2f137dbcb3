import NIOCore

/// A set of header names matched without regard to ASCII case, and without allocating: the proxy
/// asks it about every header of every request and response.
struct HeaderNameSet: Sendable {
    private let names: [[UInt8]]
    /// Bit n is set when some name is n bytes long (names are under 64 bytes).
    private let lengths: UInt64

    /// - Parameter names: lower-case header names.
    init(_ names: [String]) {
        precondition(
            names.allSatisfy { $0 == $0.lowercased() }, "header names in a HeaderNameSet are given in lower case")
        precondition(names.allSatisfy { $0.utf8.count < 64 }, "header names in a HeaderNameSet are under 64 bytes")
        self.names = names.map { Array($0.utf8) }
        self.lengths = names.reduce(0) { $0 | 1 << UInt64($1.utf8.count) }
    }

    func contains(_ name: UnsafeRawBufferPointer) -> Bool {
        // Most names are ruled out by their length alone.
        let length = name.count
        guard length < 64, lengths & (1 << UInt64(length)) != 0 else { return false }
        return names.contains { candidate in
            candidate.count == length
                && candidate.withUnsafeBufferPointer { expected in
                    for index in 0..<length where RawHeaderFields.lowered(name[index]) != expected[index] {
                        return false
                    }
                    return true
                }
        }
    }

    func contains(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { contains(UnsafeRawBufferPointer($0)) }
    }
}
