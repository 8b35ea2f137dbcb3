import Foundation
import SwiftProtobuf
import TestSupport
import XCTest

@testable import Wire

/// The wire's decoders as fuzz targets (`Fuzzing`): `envelope`, `policy-frame`.
final class WireFuzzTargets: XCTestCase {
    private static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
        "Golden")

    /// Where both read a frame, the envelope decoder and SwiftProtobuf must agree on it.
    func testEnvelope() throws {
        var seeds: [[UInt8]] = try ["heartbeat", "request", "response_done", "stream_chunk"].map {
            Array(try Data(contentsOf: Self.golden.appendingPathComponent("\($0).envelope.bin")))
        }
        seeds += try SampleRecords.all.map { try WireFrame.encode(SampleRecords.envelope($0)) }
        try Fuzzing.run("envelope", seeds: seeds) { data in
            var decoder = EnvelopeDecoder()
            guard case .success(let ours) = decoder.decode(data), !ours.textRepaired, data.count >= 4,
                let reference = try? Envelope(serializedBytes: Array(data.dropFirst(4)))
            else { return }
            fuzzCheck(
                ours.sidecarID == reference.sidecarID && ours.bootID == reference.bootID && ours.seq == reference.seq
                    && ours.sentUnixNanos == reference.sentUnixNanos && ours.droppedBefore == reference.droppedBefore,
                "the envelope decoder and SwiftProtobuf read different envelope fields"
            )
            switch (ours.record, reference.record) {
            case (.streamChunk(let mine), .streamChunk(let theirs)):
                fuzzCheck(
                    mine.exchangeID == theirs.exchangeID && mine.index == theirs.index && mine.offset == theirs.offset
                        && mine.data == theirs.data && mine.unixNanos == theirs.unixNanos
                        && mine.direction == theirs.direction,
                    "the stream chunk decoder and SwiftProtobuf read different chunks"
                )
            case (.request, .request), (.responseDone, .responseDone), (.heartbeat, .heartbeat):
                break
            default:
                fatalError("the envelope decoder and SwiftProtobuf read different kinds of record")
            }
        }
    }

    func testPolicyFrame() throws {
        var key = PolicyKey()
        key.secretSha256 = Data(repeating: 7, count: 32)
        key.keyID = "key_1"
        key.projectID = "proj_1"
        key.rateLimitPerHour = .max
        key.allowedModels = ["gpt-4o-mini"]
        var project = PolicyProject()
        project.projectID = "proj_1"
        project.denied = true
        project.deniedUntilUnixMs = .max
        var snapshot = PolicyMessage()
        snapshot.collectorID = "c"
        snapshot.version = 3
        snapshot.full = true
        snapshot.keys = [key]
        snapshot.projects = [project]
        var change = PolicyMessage()
        change.collectorID = "c"
        change.version = 4
        change.baseVersion = 3
        change.removedProjects = ["proj_1"]
        let seeds = try [snapshot, change].map { try PolicyFrame.encode($0) }
        let base = snapshot
        try Fuzzing.run("policy-frame", seeds: seeds) { data in
            guard case .success(let message) = PolicyFrame.decode(Array(data)) else { return }
            var fresh = PolicyReplica()
            _ = fresh.apply(message)
            var current = PolicyReplica()
            _ = current.apply(base)
            let outcome = current.apply(message)
            fuzzCheck(
                outcome != .applied || current.version == message.version, "a change applied without taking its version"
            )
        }
    }
}
