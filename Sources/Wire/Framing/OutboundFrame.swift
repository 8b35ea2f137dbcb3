import SwiftProtobuf

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A frame being built for sending, in one `malloc` block.
///
/// SwiftProtobuf serialises the record straight into it (through `SwiftProtobufContiguousBytes`),
/// leaving `headroom` bytes in front, into which the envelope's own fields and the marker are
/// then prepended. So the record is written once, and copied once more, into the libzmq message.
///
/// It is a plain value over a raw block: exactly one owner must pass it to `ZMQSocket.send(_:whileBlocked:)`
/// or call `release()`.
public struct OutboundFrame: SwiftProtobufContiguousBytes {
    /// Enough for the marker, a sidecar id and boot id at their maximum lengths, and the
    /// envelope's scalar fields (see `EnvelopeEncoder.maxIdentityBytes`).
    static let headroom = 512

    let block: UnsafeMutableRawPointer
    private(set) var start: Int
    private(set) var end: Int

    public init(repeating value: UInt8, count: Int) {
        guard let block = malloc(Self.headroom + count) else {
            fatalError("out of memory allocating a \(count)-byte analysis frame")
        }
        memset(block + Self.headroom, Int32(value), count)
        self.block = block
        self.start = Self.headroom
        self.end = Self.headroom + count
    }

    /// A frame holding a copy of `bytes`.
    public init(copying bytes: UnsafeRawBufferPointer) {
        guard let block = malloc(Self.headroom + bytes.count) else {
            fatalError("out of memory allocating a \(bytes.count)-byte analysis frame")
        }
        if let source = bytes.baseAddress { (block + Self.headroom).copyMemory(from: source, byteCount: bytes.count) }
        self.block = block
        self.start = Self.headroom
        self.end = Self.headroom + bytes.count
    }

    public init<S: Sequence>(_ sequence: S) where S.Element == UInt8 {
        let bytes = Array(sequence)
        self.init(repeating: 0, count: bytes.count)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { (block + start).copyMemory(from: base, byteCount: source.count) }
        }
    }

    public var count: Int { end - start }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: block + start, count: count))
    }

    public mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: block + start, count: count))
    }

    /// Makes room for `count` bytes in front and returns where to write them.
    mutating func prepend(_ count: Int) -> UnsafeMutableRawPointer {
        precondition(count <= start, "an analysis frame's header outgrew its headroom")
        start -= count
        return block + start
    }

    mutating func prepend(_ bytes: [UInt8]) {
        let destination = prepend(bytes.count)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { destination.copyMemory(from: base, byteCount: source.count) }
        }
    }

    /// The frame's bytes, as an array (tests and tools; the publisher sends without copying).
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Frees the block: for a frame that will not be sent.
    public func release() {
        free(block)
    }
}
