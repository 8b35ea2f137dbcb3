import Crypto
import Foundation
import Wire

/// A SHA-256 digest as four words: hashed and compared without touching the heap.
struct KeyHash: Hashable, Sendable {
    let a: UInt64, b: UInt64, c: UInt64, d: UInt64

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count == 32 else { return nil }
        a = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        b = bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        c = bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        d = bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
    }

    init?(_ data: Data) {
        guard let hash = data.withUnsafeBytes({ KeyHash($0) }) else { return nil }
        self = hash
    }

    /// The hash of a key as presented: what the collector stores and sends instead of the key.
    static func of(_ key: String) -> KeyHash {
        var key = key
        let digest = key.withUTF8 { SHA256.hash(data: UnsafeRawBufferPointer($0)) }
        return digest.withUnsafeBytes { KeyHash($0)! }
    }
}
