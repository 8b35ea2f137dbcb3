import Crypto
import Foundation

/// The client keys (`auth_keys`) a gateway route accepts: a request must present one in any of
/// the headers an SDK may put its key in (`Authorization: Bearer`, `x-api-key`, `api-key`,
/// `x-goog-api-key`) or Gemini's `key` parameter. Only SHA-256 digests are kept, and every
/// presented value is compared with every digest in full, so the time taken says nothing of how
/// close a guess came, nor which key it was near.
final class ClientKeys: Sendable {
    private let digests: [[UInt8]]

    init(_ keys: [String]) {
        digests = keys.map { Array(SHA256.hash(data: Data($0.utf8))) }
    }

    var isEmpty: Bool { digests.isEmpty }

    func accepts(_ headers: RawHeaderFields, uri: String) -> Bool {
        var accepted = false
        Credentials.forEachPresented(in: headers) { value in
            if matches(value) { accepted = true }
        }
        if let inQuery = Credentials.inQuery(uri), matches(inQuery) { accepted = true }
        return accepted
    }

    func matches(_ presented: String) -> Bool {
        let digest = Array(SHA256.hash(data: Data(presented.utf8)))
        var found: UInt8 = 1
        for key in digests {
            var difference: UInt8 = 0
            for index in 0..<key.count { difference |= key[index] ^ digest[index] }
            // 1 for a match, whatever came before: no branch on the secret.
            found &= difference == 0 ? 0 : 1
        }
        return found == 0
    }
}
