import Foundation
import SwiftProtobuf
import TestSupport
import XCTest

@testable import Wire

final class EnvelopeCodecTests: XCTestCase {
    func testFastEncoderWritesExactlyWhatSwiftProtobufWrites() throws {
        let cases: [(String, String, UInt64, Int64, UInt64)] = [
            ("sidecar-a", "b007", 1, 1_763_900_000_300_000_000, 0),
            ("s", "b", UInt64.max, -1, UInt64.max), // 10-byte varints, negative time
            ("ünïcode-sidecar", String(repeating: "f", count: 64), 300, 0, 127),
            (String(repeating: "h", count: 255), "boot", 128, 1, 128),
        ]
        for (sidecarID, bootID, seq, sent, dropped) in cases {
            let encoder = try EnvelopeEncoder(sidecarID: sidecarID, bootID: bootID)
            for record in SampleRecords.all + [.heartbeat(WireHeartbeat()), .streamChunk(WireStreamChunk())] {
                var envelope = Envelope()
                envelope.sidecarID = sidecarID
                envelope.bootID = bootID
                envelope.seq = seq
                envelope.sentUnixNanos = sent
                envelope.droppedBefore = dropped
                envelope.record = record
                let frame = try encoder.encode(seq: seq, sentUnixNanos: sent, droppedBefore: dropped, record: record)
                defer { frame.release() }
                XCTAssertEqual(frame.bytes, try WireFrame.encode(envelope), "\(record.kindName) seq \(seq)")
            }
        }
    }

    func testEveryKindRoundTrips() throws {
        let encoder = try EnvelopeEncoder(sidecarID: "sidecar-a", bootID: "boot-1")
        var decoder = EnvelopeDecoder()
        for (index, record) in SampleRecords.all.enumerated() {
            let frame = try encoder.encode(seq: UInt64(index + 1), sentUnixNanos: 99, droppedBefore: 5, record: record)
            let bytes = frame.bytes
            frame.release()
            let decoded = try bytes.withUnsafeBytes { try decoder.decode($0).get() }
            XCTAssertEqual(decoded.sidecarID, "sidecar-a")
            XCTAssertEqual(decoded.bootID, "boot-1")
            XCTAssertEqual(decoded.seq, UInt64(index + 1))
            XCTAssertEqual(decoded.sentUnixNanos, 99)
            XCTAssertEqual(decoded.droppedBefore, 5)
            XCTAssertEqual(decoded.record, record)
        }
    }

    func testIdentityLimitsAreEnforcedWithAClearError() {
        XCTAssertThrowsError(try EnvelopeEncoder(sidecarID: "", bootID: "b")) {
            XCTAssertTrue("\($0)".contains("sidecar id"), "\($0)")
        }
        XCTAssertThrowsError(try EnvelopeEncoder(sidecarID: String(repeating: "x", count: 256), bootID: "b"))
        XCTAssertThrowsError(try EnvelopeEncoder(sidecarID: "s", bootID: String(repeating: "x", count: 65)))
    }

    // MARK: What a decoder must refuse, each for its own reason

    func testEmptyFrame() {
        XCTAssertEqual(rejection(of: []), .emptyFrame)
    }

    func testForeignBytesAreABadMarker() {
        XCTAssertEqual(rejection(of: Array("GET / HTTP/1.1\r\n\r\n".utf8)), .badMarker)
        XCTAssertEqual(rejection(of: Array("LT".utf8)), .badMarker)
        // A bare protobuf envelope without the marker is refused too.
        let bare: [UInt8] = try! SampleRecords.envelope(SampleRecords.heartbeat).serializedBytes()
        XCTAssertEqual(rejection(of: bare), .badMarker)
    }

    func testAnotherVersionIsNamedAsSuch() throws {
        var frame = try WireFrame.encode(SampleRecords.envelope(SampleRecords.heartbeat))
        frame[3] = 2
        guard case .failure(let error) = WireFrame.decode(frame) else { return XCTFail("version 2 was accepted") }
        XCTAssertEqual(error.rejection, .unsupportedVersion)
        XCTAssertTrue(error.detail.contains("version 2"), error.detail)
    }

    func testEveryTruncationOfAValidFrameIsRefusedAndNeverCrashes() throws {
        for record in SampleRecords.all {
            let frame = try WireFrame.encode(SampleRecords.envelope(record))
            for length in 0..<frame.count {
                guard case .failure(let error) = WireFrame.decode(Array(frame.prefix(length))) else {
                    return XCTFail("\(record.kindName) cut to \(length) of \(frame.count) bytes was accepted")
                }
                XCTAssertTrue([.emptyFrame, .badMarker, .undecodable, .incompleteEnvelope].contains(error.rejection))
            }
        }
    }

    func testRandomBytesAfterTheMarkerAreRefusedAndNeverCrash() {
        var generator = SeededGenerator(seed: 0x11_7A9)
        var outcomes: [FrameRejection: Int] = [:]
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...64, using: &generator)
            let garbage = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if case .failure(let error) = WireFrame.decode(WireFrame.header + garbage) {
                outcomes[error.rejection, default: 0] += 1
            }
        }
        XCTAssertGreaterThan(outcomes[.undecodable, default: 0], 0)
        XCTAssertGreaterThan(outcomes[.incompleteEnvelope, default: 0], 0)
    }

    func testAnEnvelopeWithoutARecordOrWithSeqZeroIsIncomplete() throws {
        var envelope = SampleRecords.envelope(SampleRecords.heartbeat)
        envelope.record = nil
        XCTAssertEqual(rejection(of: try WireFrame.encode(envelope)), .incompleteEnvelope)
        envelope = SampleRecords.envelope(SampleRecords.heartbeat, seq: 0)
        XCTAssertEqual(rejection(of: try WireFrame.encode(envelope)), .incompleteEnvelope)
        envelope = SampleRecords.envelope(SampleRecords.heartbeat, sidecarID: "")
        XCTAssertEqual(rejection(of: try WireFrame.encode(envelope)), .incompleteEnvelope)
    }

    func testInvalidUTF8InTheSidecarIDIsReadWithAReplacementAndFlagged() throws {
        // field 1, length 2, bytes C3 28 (an invalid two-byte sequence): the record still counts.
        let frame = WireFrame.header + [0x0A, 0x02, 0xC3, 0x28, 0x12, 0x01, 0x62, 0x18, 0x01, 0x6A, 0x00]
        var decoder = EnvelopeDecoder()
        let decoded = try frame.withUnsafeBytes { try decoder.decode($0).get() }
        XCTAssertEqual(decoded.sidecarID, "\u{FFFD}(")
        XCTAssertTrue(decoded.textRepaired)
        // The same bytes again (the decoder keeps the last id): still flagged.
        let again = try frame.withUnsafeBytes { try decoder.decode($0).get() }
        XCTAssertTrue(again.textRepaired)
        let valid = try WireFrame.encode(SampleRecords.envelope(SampleRecords.heartbeat))
        XCTAssertFalse(try valid.withUnsafeBytes { try decoder.decode($0).get() }.textRepaired)
    }

    // MARK: What a decoder must accept, as protobuf allows

    func testUnknownFieldsFromANewerSidecarAreSkipped() throws {
        var frame = try WireFrame.encode(SampleRecords.envelope(SampleRecords.heartbeat))
        frame += [0xA0, 0x06, 0x2A] // field 100, varint 42
        frame += [0xAA, 0x06, 0x03, 0x61, 0x62, 0x63] // field 101, bytes "abc"
        frame += [0xB1, 0x06] + [UInt8](repeating: 1, count: 8) // field 102, fixed64
        frame += [0xBD, 0x06] + [UInt8](repeating: 1, count: 4) // field 103, fixed32
        let decoded = try WireFrame.decode(frame).get()
        XCTAssertEqual(decoded.record, SampleRecords.heartbeat)
    }

    func testFieldsInAnyOrderAndRepeatedScalarsDecodeAsProtobufSays() throws {
        let envelope = SampleRecords.envelope(SampleRecords.streamChunk, seq: 9)
        // Record first, then a second seq (the last one wins), then the ids.
        var reordered = Envelope()
        reordered.record = envelope.record
        var later = Envelope()
        later.seq = 11
        later.sidecarID = envelope.sidecarID
        later.bootID = envelope.bootID
        let frame =
            WireFrame.header + (try reordered.serializedBytes() as [UInt8]) + (try later.serializedBytes() as [UInt8])
        let decoded = try WireFrame.decode(frame).get()
        XCTAssertEqual(decoded.seq, 11)
        XCTAssertEqual(decoded.record, envelope.record)
    }

    func testARepeatedRecordFieldIsMerged() throws {
        var first = WireHeartbeat()
        first.published = 5
        var second = WireHeartbeat()
        second.dropped = 7
        let a: [UInt8] = try SampleRecords.envelope(.heartbeat(first)).serializedBytes()
        var onlySecond = Envelope()
        onlySecond.record = .heartbeat(second)
        let b: [UInt8] = try onlySecond.serializedBytes()
        let decoded = try WireFrame.decode(WireFrame.header + a + b).get()
        guard case .heartbeat(let merged) = decoded.record else { return XCTFail("not a heartbeat") }
        XCTAssertEqual(merged.published, 5)
        XCTAssertEqual(merged.dropped, 7)
    }

    func testTheDecoderReusesIdentityStringsButNotStaleOnes() throws {
        var decoder = EnvelopeDecoder()
        for (sidecar, boot) in [("a", "1"), ("a", "1"), ("b", "1"), ("a", "2")] {
            let frame = try WireFrame.encode(
                SampleRecords.envelope(SampleRecords.heartbeat, sidecarID: sidecar, bootID: boot))
            let decoded = try frame.withUnsafeBytes { try decoder.decode($0).get() }
            XCTAssertEqual(decoded.sidecarID, sidecar)
            XCTAssertEqual(decoded.bootID, boot)
        }
    }

    private func rejection(of frame: [UInt8]) -> FrameRejection? {
        if case .failure(let error) = WireFrame.decode(frame) { return error.rejection }
        return nil
    }
}

/// A small deterministic generator, so a failing fuzz case can be replayed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        // SplitMix64
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

final class OutboundFrameTests: XCTestCase {
    func testAFrameFromAnEmptySequenceIsEmptyNotACrash() {
        let frame = OutboundFrame([UInt8]())
        XCTAssertEqual(frame.count, 0)
        XCTAssertEqual(frame.bytes, [])
        frame.release()
        let filled = OutboundFrame([1, 2, 3])
        XCTAssertEqual(filled.bytes, [1, 2, 3])
        filled.release()
    }
}

final class StreamChunkDecoderTests: XCTestCase {
    /// The hand-written StreamChunk decoder against SwiftProtobuf's, on random chunks.
    func testTheFastStreamChunkDecoderAgreesWithSwiftProtobuf() throws {
        var generator = SeededGenerator(seed: 42)
        var decoder = EnvelopeDecoder()
        for round in 0..<2_000 {
            var chunk = WireStreamChunk()
            if Bool.random(using: &generator) {
                chunk.exchangeID = "ex-\(UInt32.random(in: 0...5, using: &generator))-é"
            }
            chunk.direction = [.unspecified, .response, .request, .UNRECOGNIZED(7), .UNRECOGNIZED(-3)][round % 5]
            chunk.index = [0, 1, 127, 128, UInt64.max][Int.random(in: 0..<5, using: &generator)]
            chunk.data = Data(
                (0..<Int.random(in: 0...300, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator)
                })
            chunk.unixNanos =
                [0, 1, -1, Int64.min, Int64.max, 1_763_900_000_000_000_000][Int.random(in: 0..<6, using: &generator)]
            chunk.offset = [0, 1024, UInt64.max][round % 3]
            chunk.websocketOpcode = [0, 1, 2, UInt32.max][round % 4]
            chunk.messageSize = [0, 300, UInt64.max][Int.random(in: 0..<3, using: &generator)]
            let bytes: [UInt8] = try chunk.serializedBytes()
            var fast = WireStreamChunk()
            try bytes.withUnsafeBytes { try decoder.decodeStreamChunk($0, into: &fast) }
            XCTAssertEqual(fast, try WireStreamChunk(serializedBytes: bytes), "round \(round)")
        }
    }

    func testItMergesAsProtobufDoesAndRefusesBrokenChunks() throws {
        var decoder = EnvelopeDecoder()
        var first = WireStreamChunk()
        first.exchangeID = "a"
        first.index = 5
        var second = WireStreamChunk()
        second.data = Data([1, 2])
        var merged = WireStreamChunk()
        for part in [first, second] {
            let bytes: [UInt8] = try part.serializedBytes()
            try bytes.withUnsafeBytes { try decoder.decodeStreamChunk($0, into: &merged) }
        }
        XCTAssertEqual(merged.exchangeID, "a")
        XCTAssertEqual(merged.index, 5)
        XCTAssertEqual(merged.data, Data([1, 2]))

        for broken: [UInt8] in [[0x0A, 0x05, 0x61], [0x18], [0x0B]] {
            var chunk = WireStreamChunk()
            XCTAssertThrowsError(
                try broken.withUnsafeBytes { try decoder.decodeStreamChunk($0, into: &chunk) }, "\(broken)")
        }
        // An exchange id that is not UTF-8 is read with U+FFFD, and said so.
        var chunk = WireStreamChunk()
        let repaired = try ([0x0A, 0x02, 0xC3, 0x28] as [UInt8]).withUnsafeBytes {
            try decoder.decodeStreamChunk($0, into: &chunk)
        }
        XCTAssertTrue(repaired)
        XCTAssertEqual(chunk.exchangeID, "\u{FFFD}(")
    }
}
