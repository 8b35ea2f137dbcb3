import SwiftProtobuf

/// Encodes one sidecar boot's records into frames (marker + `Envelope`).
///
/// The envelope's own fields are written here, around a record that SwiftProtobuf serialises.
/// The bytes are exactly those SwiftProtobuf would write for the whole `Envelope` (fields in
/// number order, defaults omitted); the tests hold the two to that, and `protoc --decode` reads both.
public struct EnvelopeEncoder: Sendable {
    /// Sidecar ids and boot ids longer than this are refused, so that a frame's header always
    /// fits in front of the record.
    public static let maxIdentityBytes = 255

    public let sidecarID: String
    public let bootID: String
    /// The marker, then fields 1 and 2, which are the same in every envelope of a boot.
    private let prefix: [UInt8]

    public init(sidecarID: String, bootID: String) throws(WireConfigurationError) {
        guard !sidecarID.isEmpty, sidecarID.utf8.count <= Self.maxIdentityBytes else {
            throw WireConfigurationError(
                "the sidecar id must be 1 to \(Self.maxIdentityBytes) bytes long, not \(sidecarID.utf8.count)")
        }
        guard !bootID.isEmpty, bootID.utf8.count <= 64 else {
            throw WireConfigurationError("the boot id must be 1 to 64 bytes long, not \(bootID.utf8.count)")
        }
        self.sidecarID = sidecarID
        self.bootID = bootID
        var prefix = WireFrame.header
        for (field, value) in [(1, sidecarID), (2, bootID)] {
            Self.appendVarint(ProtobufWireFormat.tag(field: field, .lengthDelimited), to: &prefix)
            Self.appendVarint(UInt64(value.utf8.count), to: &prefix)
            prefix.append(contentsOf: value.utf8)
        }
        self.prefix = prefix
    }

    public func encode(seq: UInt64, sentUnixNanos: Int64, droppedBefore: UInt64, record: WireRecord) throws
        -> OutboundFrame
    {
        let frame: OutboundFrame
        let field: Int
        switch record {
        case .request(let request): (frame, field) = (try request.serializedBytes(), 10)
        case .streamChunk(let chunk): (frame, field) = (try chunk.serializedBytes(), 11)
        case .responseDone(let done): (frame, field) = (try done.serializedBytes(), 12)
        case .heartbeat(let heartbeat): (frame, field) = (try heartbeat.serializedBytes(), 13)
        }
        return frameRecord(frame, field: field, seq: seq, sentUnixNanos: sentUnixNanos, droppedBefore: droppedBefore)
    }

    /// Frames a record encoded already.
    public func encode(seq: UInt64, sentUnixNanos: Int64, droppedBefore: UInt64, record: EncodedRecord) -> OutboundFrame
    {
        let frame = record.bytes.withUnsafeBytes { OutboundFrame(copying: $0) }
        return frameRecord(
            frame, field: record.kind.rawValue, seq: seq, sentUnixNanos: sentUnixNanos, droppedBefore: droppedBefore)
    }

    func encode(seq: UInt64, sentUnixNanos: Int64, droppedBefore: UInt64, record: PublishedRecord) throws
        -> OutboundFrame
    {
        switch record {
        case .message(let message):
            try encode(seq: seq, sentUnixNanos: sentUnixNanos, droppedBefore: droppedBefore, record: message)
        case .encoded(let encoded):
            encode(seq: seq, sentUnixNanos: sentUnixNanos, droppedBefore: droppedBefore, record: encoded)
        }
    }

    /// Puts the envelope's own fields, the record's key and length, and the marker in front of a record's bytes.
    private func frameRecord(
        _ record: OutboundFrame, field: Int, seq: UInt64, sentUnixNanos: Int64, droppedBefore: UInt64
    ) -> OutboundFrame {
        var frame = record
        // Fields 3, 4, 5 (omitted when zero, as proto3 does), then the record's tag and length.
        var header: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
        var length = 0
        withUnsafeMutableBytes(of: &header) { scratch in
            let out = scratch.baseAddress!
            func put(_ number: Int, _ value: UInt64) {
                guard value != 0 else { return }
                length += ProtobufWireFormat.writeVarint(
                    ProtobufWireFormat.tag(field: number, .varint), at: out + length)
                length += ProtobufWireFormat.writeVarint(value, at: out + length)
            }
            put(3, seq)
            put(4, UInt64(bitPattern: sentUnixNanos))
            put(5, droppedBefore)
            length += ProtobufWireFormat.writeVarint(
                ProtobufWireFormat.tag(field: field, .lengthDelimited), at: out + length)
            length += ProtobufWireFormat.writeVarint(UInt64(frame.count), at: out + length)
        }
        let destination = frame.prepend(length)
        withUnsafeBytes(of: &header) { destination.copyMemory(from: $0.baseAddress!, byteCount: length) }
        frame.prepend(prefix)
        return frame
    }

    private static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }
}

/// A wire setting that can't work, said plainly.
public struct WireConfigurationError: Error, CustomStringConvertible, Sendable {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}
