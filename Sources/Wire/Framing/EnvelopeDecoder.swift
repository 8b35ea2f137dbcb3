import Foundation
import SwiftProtobuf

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// An envelope as the receiver hands it on: the envelope's fields, flat.
///
/// A class, not a struct: a record is a few hundred bytes inline, and it is handed through several
/// layers on its way to a consumer; one allocation is cheaper than copying it at each.
public final class DecodedEnvelope: Sendable, Equatable, CustomStringConvertible {
    public let sidecarID: String
    public let bootID: String
    public let seq: UInt64
    public let sentUnixNanos: Int64
    public let droppedBefore: UInt64
    public let record: WireRecord
    /// True when a string field of the envelope or its record was not valid UTF-8 and was read
    /// with U+FFFD in place of the invalid sequences: the record still counts, and its exchange
    /// is stored with a parse error saying so.
    public let textRepaired: Bool

    public init(
        sidecarID: String, bootID: String, seq: UInt64, sentUnixNanos: Int64, droppedBefore: UInt64, record: WireRecord,
        textRepaired: Bool = false
    ) {
        self.sidecarID = sidecarID
        self.bootID = bootID
        self.seq = seq
        self.sentUnixNanos = sentUnixNanos
        self.droppedBefore = droppedBefore
        self.record = record
        self.textRepaired = textRepaired
    }

    public static func == (lhs: DecodedEnvelope, rhs: DecodedEnvelope) -> Bool {
        lhs.sidecarID == rhs.sidecarID && lhs.bootID == rhs.bootID && lhs.seq == rhs.seq
            && lhs.sentUnixNanos == rhs.sentUnixNanos && lhs.droppedBefore == rhs.droppedBefore
            && lhs.record == rhs.record
            && lhs.textRepaired == rhs.textRepaired
    }

    public var description: String {
        "\(sidecarID)/\(bootID)#\(seq) \(record.kindName)"
    }

    /// The same as the generated message.
    public var envelope: Envelope {
        var envelope = Envelope()
        envelope.sidecarID = sidecarID
        envelope.bootID = bootID
        envelope.seq = seq
        envelope.sentUnixNanos = sentUnixNanos
        envelope.droppedBefore = droppedBefore
        envelope.record = record
        return envelope
    }
}

/// Decodes frames (marker + `Envelope`). The envelope's own fields are read here and the record
/// by SwiftProtobuf, straight from the received bytes.
///
/// It reads as protobuf requires: fields in any order, the last of a repeated scalar wins, a
/// repeated record field of the same kind is merged, and unknown fields are skipped, so a newer
/// sidecar's additions don't break an older collector. A decoder remembers the last sidecar and
/// boot ids it saw, so a stream of records from one sidecar doesn't allocate them again and again:
/// keep one per receiving thread.
public struct EnvelopeDecoder {
    private var lastSidecarID = InternedString()
    private var lastBootID = InternedString()
    private var lastExchangeID = InternedString()

    public init() {}

    public mutating func decode(_ frame: UnsafeRawBufferPointer) -> Result<DecodedEnvelope, WireFrameError> {
        guard !frame.isEmpty else {
            return .failure(WireFrameError(.emptyFrame, "the frame has no bytes"))
        }
        // "LTW", spelled out: this runs for every record.
        guard frame.count >= 4, frame[0] == 0x4C, frame[1] == 0x54, frame[2] == 0x57 else {
            let start = frame.prefix(8).map { String($0, radix: 16).leftPadded(to: 2) }.joined(separator: " ")
            return .failure(WireFrameError(.badMarker, "the frame does not start with \"LTW\" (it starts \(start))"))
        }
        guard frame[3] == WireFrame.version else {
            return .failure(
                WireFrameError(
                    .unsupportedVersion,
                    "wire version \(frame[3]); this build reads version \(WireFrame.version)"))
        }
        let body = UnsafeRawBufferPointer(rebasing: frame[4...])
        do {
            return try decodeEnvelope(body)
        } catch let error as ProtobufWireFormat.Malformed {
            return .failure(
                WireFrameError(.undecodable, "the envelope is not valid protobuf: \(error) (\(body.count) bytes)"))
        } catch {
            return .failure(
                WireFrameError(.undecodable, "the envelope's record does not decode: \(error) (\(body.count) bytes)"))
        }
    }

    private mutating func decodeEnvelope(_ body: UnsafeRawBufferPointer) throws -> Result<
        DecodedEnvelope, WireFrameError
    > {
        var reader = ProtobufWireFormat.Reader(body)
        var sidecarBytes = UnsafeRawBufferPointer(start: nil, count: 0)
        var bootBytes = UnsafeRawBufferPointer(start: nil, count: 0)
        var seq: UInt64 = 0
        var sent: Int64 = 0
        var droppedBefore: UInt64 = 0
        var record: WireRecord?
        var repaired = false

        while !reader.isAtEnd {
            let (field, wireType) = try reader.key()
            switch (field, wireType) {
            case (1, .lengthDelimited): sidecarBytes = try reader.lengthDelimited()
            case (2, .lengthDelimited): bootBytes = try reader.lengthDelimited()
            case (3, .varint): seq = try reader.varint()
            case (4, .varint): sent = Int64(bitPattern: try reader.varint())
            case (5, .varint): droppedBefore = try reader.varint()
            case (11, .lengthDelimited):
                // The most frequent record by far (one per streamed event): decoded here, not by SwiftProtobuf.
                var chunk = WireStreamChunk()
                if case .streamChunk(let existing) = record { chunk = existing }
                if try decodeStreamChunk(try reader.lengthDelimited(), into: &chunk) { repaired = true }
                record = .streamChunk(chunk)
            case (10...13, .lengthDelimited):
                let bytes = try reader.lengthDelimited()
                do {
                    record = try Self.decodeRecord(field: field, bytes: bytes, mergingInto: record)
                } catch BinaryDecodingError.invalidUTF8 {
                    // A string field that is not UTF-8 (an older sidecar's header value, say) costs
                    // the record nothing but that field's exact bytes: it is read with U+FFFD.
                    let fixed = try UTF8Repair.repair(bytes, schema: UTF8Repair.schema(ofRecord: field))
                    record = try fixed.withUnsafeBytes {
                        try Self.decodeRecord(field: field, bytes: $0, mergingInto: record)
                    }
                    repaired = true
                }
            default:
                // Unknown fields, and known ones with another wire type, are skipped as protobuf's own decoders do.
                try reader.skip(wireType)
            }
        }

        guard let sidecarID = lastSidecarID.string(for: sidecarBytes, repaired: &repaired), !sidecarID.isEmpty else {
            return .failure(WireFrameError(.incompleteEnvelope, "the envelope has no sidecar_id"))
        }
        guard let bootID = lastBootID.string(for: bootBytes, repaired: &repaired), !bootID.isEmpty else {
            return .failure(WireFrameError(.incompleteEnvelope, "the envelope from \(sidecarID) has no boot_id"))
        }
        guard seq != 0 else {
            return .failure(
                WireFrameError(.incompleteEnvelope, "the envelope from \(sidecarID) has seq 0; sequences start at 1"))
        }
        guard let record else {
            return .failure(
                WireFrameError(
                    .incompleteEnvelope,
                    "the envelope \(sidecarID)#\(seq) carries no record, or only one this build does not know"))
        }
        return .success(
            DecodedEnvelope(
                sidecarID: sidecarID, bootID: bootID, seq: seq,
                sentUnixNanos: sent, droppedBefore: droppedBefore, record: record, textRepaired: repaired
            ))
    }

    /// Decodes a `StreamChunk` as SwiftProtobuf would, merging into `chunk` (for its scalar and bytes
    /// fields merging means the last value wins). Unknown fields are skipped rather than kept.
    /// Tests hold it to SwiftProtobuf's result on random chunks. Returns whether the exchange id
    /// was not UTF-8 and was read with U+FFFD.
    @discardableResult
    mutating func decodeStreamChunk(_ bytes: UnsafeRawBufferPointer, into chunk: inout WireStreamChunk) throws -> Bool {
        var reader = ProtobufWireFormat.Reader(bytes)
        var repaired = false
        while !reader.isAtEnd {
            let (field, wireType) = try reader.key()
            switch (field, wireType) {
            case (1, .lengthDelimited):
                chunk.exchangeID = lastExchangeID.string(for: try reader.lengthDelimited(), repaired: &repaired) ?? ""
            case (2, .varint):
                // Enums are int32 on the wire, sign-extended to 64 bits; unknown values are kept.
                let raw = Int(Int32(truncatingIfNeeded: try reader.varint()))
                chunk.direction = Direction(rawValue: raw) ?? .UNRECOGNIZED(raw)
            case (3, .varint):
                chunk.index = try reader.varint()
            case (4, .lengthDelimited):
                let data = try reader.lengthDelimited()
                chunk.data = data.baseAddress.map { Data(bytes: $0, count: data.count) } ?? Data()
            case (5, .varint):
                chunk.unixNanos = Int64(bitPattern: try reader.varint())
            case (6, .varint):
                chunk.offset = try reader.varint()
            case (7, .varint):
                chunk.websocketOpcode = UInt32(truncatingIfNeeded: try reader.varint())
            case (8, .varint):
                chunk.messageSize = try reader.varint()
            default:
                try reader.skip(wireType)
            }
        }
        return repaired
    }

    private static func decodeRecord(field: Int, bytes: UnsafeRawBufferPointer, mergingInto previous: WireRecord?)
        throws -> WireRecord
    {
        // Protobuf merges repeated occurrences of one message field; a different oneof member replaces.
        func decode<M: SwiftProtobuf.Message>(_ type: M.Type, into existing: M?) throws -> M {
            var message = existing ?? M()
            try message.merge(serializedBytes: bytes.bytes)
            return message
        }
        switch field {
        case 10:
            if case .request(let existing) = previous { return .request(try decode(WireRequest.self, into: existing)) }
            return .request(try decode(WireRequest.self, into: nil))
        case 12:
            if case .responseDone(let existing) = previous {
                return .responseDone(try decode(WireResponseDone.self, into: existing))
            }
            return .responseDone(try decode(WireResponseDone.self, into: nil))
        default:
            if case .heartbeat(let existing) = previous {
                return .heartbeat(try decode(WireHeartbeat.self, into: existing))
            }
            return .heartbeat(try decode(WireHeartbeat.self, into: nil))
        }
    }
}

/// The last string decoded from a field, reused while the same bytes keep coming.
private struct InternedString {
    private var bytes: [UInt8] = []
    private var value = ""
    private var valid = true

    /// nil for an absent (empty) field. Bytes that are not UTF-8 are read with U+FFFD, and
    /// `repaired` is set.
    mutating func string(for field: UnsafeRawBufferPointer, repaired: inout Bool) -> String? {
        if field.isEmpty { return nil }
        let same =
            field.count == bytes.count
            && bytes.withUnsafeBytes { memcmp($0.baseAddress!, field.baseAddress!, field.count) == 0 }
        if same {
            if !valid { repaired = true }
            return value
        }
        if let decoded = String(validating: field, as: UTF8.self) {
            value = decoded
            valid = true
        } else {
            value = WireText.replacingInvalidUTF8(field)
            valid = false
            repaired = true
        }
        bytes = Array(field)
        return value
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// Rewrites a record's protobuf bytes so that every string field the schema knows of is valid
/// UTF-8 (invalid sequences become U+FFFD), nested `Header` messages included; everything else is
/// copied as it is. Only used for a record SwiftProtobuf refused for invalid UTF-8.
enum UTF8Repair {
    indirect enum Field {
        case string
        case message([Int: Field])
    }

    static let header: [Int: Field] = [1: .string, 2: .string]
    static let request: [Int: Field] = [
        1: .string, 3: .string, 4: .string, 5: .string, 6: .string, 7: .string, 8: .string, 9: .string,
        11: .message(header), 15: .string, 16: .string, 17: .string,
    ]
    static let responseDone: [Int: Field] = [1: .string, 3: .message(header), 9: .string, 12: .string]
    static let heartbeat: [Int: Field] = [8: .string, 9: .string, 10: .string]

    static func schema(ofRecord field: Int) -> [Int: Field] {
        switch field {
        case 10: request
        case 12: responseDone
        case 13: heartbeat
        default: [:]
        }
    }

    static func repair(_ bytes: UnsafeRawBufferPointer, schema: [Int: Field], depth: Int = 0) throws(ProtobufWireFormat
        .Malformed) -> [UInt8]
    {
        guard depth < 8 else { throw ProtobufWireFormat.Malformed(description: "messages nested too deep") }
        var reader = ProtobufWireFormat.Reader(bytes)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 16)
        while !reader.isAtEnd {
            let start = reader.offset
            let (field, wireType) = try reader.key()
            guard wireType == .lengthDelimited, let kind = schema[field] else {
                try reader.skip(wireType)
                out.append(contentsOf: bytes[start..<reader.offset])
                continue
            }
            let keyEnd = reader.offset
            let content = try reader.lengthDelimited()
            let replaced: [UInt8]
            switch kind {
            case .string:
                replaced =
                    WireText.isValidUTF8(content) ? Array(content) : Array(WireText.replacingInvalidUTF8(content).utf8)
            case .message(let nested):
                replaced = try repair(content, schema: nested, depth: depth + 1)
            }
            out.append(contentsOf: bytes[start..<keyEnd])
            var length = UInt64(replaced.count)
            while length >= 0x80 {
                out.append(UInt8(truncatingIfNeeded: length) | 0x80)
                length >>= 7
            }
            out.append(UInt8(length))
            out.append(contentsOf: replaced)
        }
        return out
    }
}
