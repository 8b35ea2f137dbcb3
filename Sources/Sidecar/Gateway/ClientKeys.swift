import Foundation

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

    /// A CONNECT's `Proxy-Authorization`: `Bearer KEY`, or `Basic` with the key as the password
    /// (`http://user:KEY@gateway:8080` as HTTPS_PROXY).
    func acceptsProxyAuthorization(_ headers: RawHeaderFields) -> Bool {
        var found: String?
        headers.forEachField { name, value in
            if found == nil, RawHeaderFields.equalsIgnoringCase(name, "proxy-authorization") {
                found = String(decoding: value, as: UTF8.self)
            }
        }
        guard let value = found else { return false }
        let parts = value.split(separator: " ", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { return false }
        switch parts[0].lowercased() {
        case "bearer":
            return matches(parts[1].trimmingCharacters(in: .whitespaces))
        case "basic":
            guard let decoded = Data(base64Encoded: parts[1].trimmingCharacters(in: .whitespaces)) else { return false }
            let text = String(decoding: decoded, as: UTF8.self)
            return matches(text.firstIndex(of: ":").map { String(text[text.index(after: $0)...]) } ?? text)
        default:
            return false
        }
    }

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
