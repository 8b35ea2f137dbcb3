import Foundation
import TestSupport
import XCTest

@testable import Wire

/// Committed envelopes that our encoder wrote, which the reference protobuf tool must read as the
/// committed text: the wire stays the same across changes, and stays protobuf.
///
/// To regenerate after a deliberate schema change: `LLMTAP_UPDATE_GOLDEN=1 swift test --filter GoldenEnvelopeTests`.
final class GoldenEnvelopeTests: XCTestCase {
    private let golden = repositoryRoot.appendingPathComponent("Tests/WireTests/Golden")
    private let update = ProcessInfo.processInfo.environment["LLMTAP_UPDATE_GOLDEN"] == "1"

    private var cases: [(name: String, envelope: Envelope)] {
        [
            ("request", SampleRecords.request), ("stream_chunk", SampleRecords.streamChunk),
            ("response_done", SampleRecords.responseDone), ("heartbeat", SampleRecords.heartbeat),
        ]
        .map { ($0.0, SampleRecords.envelope($0.1)) }
    }

    func testOurEncoderStillWritesTheCommittedBytes() throws {
        for (name, envelope) in cases {
            let encoder = try EnvelopeEncoder(sidecarID: envelope.sidecarID, bootID: envelope.bootID)
            let frame = try encoder.encode(
                seq: envelope.seq, sentUnixNanos: envelope.sentUnixNanos,
                droppedBefore: envelope.droppedBefore, record: envelope.record!)
            let bytes = frame.bytes
            frame.release()
            XCTAssertEqual(Array(bytes.prefix(4)), WireFrame.header)
            let body = Data(bytes.dropFirst(4))
            let file = golden.appendingPathComponent("\(name).envelope.bin")
            if update {
                try body.write(to: file)
                try protocDecode(file).write(
                    to: golden.appendingPathComponent("\(name).envelope.txt"), atomically: true, encoding: .utf8)
            }
            XCTAssertEqual(
                body, try Data(contentsOf: file), "\(name): the encoding changed; if on purpose, regenerate the goldens"
            )
            XCTAssertEqual(try WireFrame.decode(Array(bytes)).get(), envelope, name)
        }
    }

    func testProtocDecodesTheCommittedBytesToTheCommittedText() throws {
        for (name, _) in cases {
            let text = try protocDecode(golden.appendingPathComponent("\(name).envelope.bin"))
            let expected = try String(
                contentsOf: golden.appendingPathComponent("\(name).envelope.txt"), encoding: .utf8)
            XCTAssertEqual(text, expected, name)
        }
    }

    /// `protoc --decode llmtap.wire.v1.Envelope` on a file, as a consumer in another language would read it.
    private func protocDecode(_ file: URL) throws -> String {
        guard let protoc = which("protoc") else {
            throw TestFailure("protoc is not installed (Debian: protobuf-compiler); scripts/test installs it")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: protoc)
        process.arguments = [
            "--decode", "llmtap.wire.v1.Envelope", "-I", "Sources/Wire", "Sources/Wire/analysis.proto",
        ]
        process.currentDirectoryURL = repositoryRoot
        process.standardInput = try FileHandle(forReadingFrom: file)
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let text = output.fileHandleForReading.readDataToEndOfFile()
        let problems = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestFailure(
                "protoc --decode failed on \(file.lastPathComponent): \(String(decoding: problems, as: UTF8.self))")
        }
        return String(decoding: text, as: UTF8.self)
    }
}

func which(_ command: String) -> String? {
    for folder in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let path = "\(folder)/\(command)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return nil
}
