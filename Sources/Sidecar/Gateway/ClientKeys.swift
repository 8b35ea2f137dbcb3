/// The client keys (`auth_keys`) a gateway route accepts: a request must present one in any of
/// the headers an SDK may put its key in (`Authorization: Bearer`, `x-api-key`, `api-key`,
/// `x-goog-api-key`) or Gemini's `key` parameter. Every presented value is compared with every
/// key in full, byte by byte with no early exit, so the time taken says nothing of how close a
/// guess came, nor which key it was near (only of the lengths, which a guesser knows).
final class ClientKeys: Sendable {
    private let keys: [[UInt8]]

    init(_ keys: [String]) {
        self.keys = keys.map { Array($0.utf8) }
    }

    var isEmpty: Bool { keys.isEmpty }

    func accepts(_ headers: RawHeaderFields, uri: String) -> Bool {
        var accepted = false
        Credentials.forEachPresented(in: headers) { token in
            if matches(token) { accepted = true }
        }
        if !accepted, uri.utf8.contains(UInt8(ascii: "?")), let inQuery = Credentials.inQuery(uri) {
            accepted = matches(inQuery)
        }
        return accepted
    }

    func matches(_ presented: String) -> Bool {
        var presented = presented
        return presented.withUTF8 { matches(UnsafeRawBufferPointer($0)) }
    }

    func matches(_ presented: UnsafeRawBufferPointer) -> Bool {
        var found: UInt8 = 0
        for key in keys {
            var difference: UInt8 = key.count == presented.count ? 0 : 1
            for index in 0..<key.count {
                difference |= key[index] ^ (index < presented.count ? presented[index] : 0)
            }
            found |= difference == 0 ? 1 : 0
        }
        return found == 1
    }
}
