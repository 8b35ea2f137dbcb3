import SwiftProtobuf

/// Encodes one sidecar's records into frames.
///
/// The sidecar id and boot id are the same in every envelope of a boot, so their bytes are encoded
/// once and prefixed to each frame. Protobuf fields may be concatenated, and fields 1 and 2 come
/// first either way, so the frame is byte-identical to `WireFrame.encode` of the whole envelope.
public struct EnvelopeEncoder: Sendable {
    public let sidecarID: String
    public let bootID: String
    private let prefix: [UInt8]

    public init(sidecarID: String, bootID: String) throws {
        self.sidecarID = sidecarID
        self.bootID = bootID
        var identity = Envelope()
        identity.sidecarID = sidecarID
        identity.bootID = bootID
        self.prefix = WireFrame.header + (try identity.serializedBytes() as [UInt8])
    }

    public func encode(seq: UInt64, sentUnixNanos: Int64, droppedBefore: UInt64, record: WireRecord) throws -> [UInt8] {
        var envelope = Envelope()
        envelope.seq = seq
        envelope.sentUnixNanos = sentUnixNanos
        envelope.droppedBefore = droppedBefore
        envelope.record = record
        let body: [UInt8] = try envelope.serializedBytes()
        var frame = prefix
        frame.reserveCapacity(prefix.count + body.count)
        frame.append(contentsOf: body)
        return frame
    }
}
