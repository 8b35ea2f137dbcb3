import Foundation
import TestSupport
import XCTest

@testable import Wire

/// The wire is open to other languages: the C consumer in examples/c-consumer, whose protobuf code
/// protoc-c generates from the same analysis.proto at build time, reads what our publisher sends.
final class CConsumerTests: XCTestCase {
    func testTheCConsumerReadsWhatTheSwiftPublisherSends() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-c-consumer-\(UUID().uuidString)")
        let make = Process()
        make.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        make.arguments = [
            "make", "-s", "-C", repositoryRoot.appendingPathComponent("examples/c-consumer").path, "OUT=\(out.path)",
        ]
        let makeLog = Pipe()
        make.standardOutput = makeLog
        make.standardError = makeLog
        try make.run()
        let log = makeLog.fileHandleForReading.readDataToEndOfFile()
        make.waitUntilExit()
        XCTAssertEqual(
            make.terminationStatus, 0,
            "building the C consumer failed (needs protobuf-c-compiler, libprotobuf-c-dev): \(String(decoding: log, as: UTF8.self))"
        )
        guard make.terminationStatus == 0 else { return }

        let endpoint = "tcp://127.0.0.1:\(try freeTCPPort())"
        let consumer = Process()
        consumer.executableURL = out.appendingPathComponent("llmtap-c-consumer")
        consumer.arguments = [endpoint, "6"]
        let stdout = Pipe()
        let stderr = Pipe()
        consumer.standardOutput = stdout
        consumer.standardError = stderr
        try consumer.run()
        defer { if consumer.isRunning { consumer.terminate() } }

        // A garbage frame, then a valid one, on one raw connection (which keeps their order): the C
        // side must refuse the first and read the second.
        let context = try ZMQContext()
        let raw = try ZMQSocket(context: context, kind: .push)
        try raw.set(.linger(milliseconds: 2_000))
        try raw.connect(endpoint)
        try raw.send(Array("not a record".utf8))
        try raw.send(
            try WireFrame.encode(SampleRecords.envelope(SampleRecords.heartbeat, seq: 1, sidecarID: "raw-peer")))

        var configuration = AnalysisPublisherConfiguration(endpoint: endpoint, sidecarID: "swift-sidecar")
        configuration.shutdownLinger = .seconds(5)
        let publisher = try AnalysisPublisher(configuration: configuration, logger: testLogger())
        for record in SampleRecords.all + [SampleRecords.heartbeat] { XCTAssertTrue(publisher.publish(record)) }
        publisher.shutdown()
        XCTAssertEqual(publisher.stats.published, 5)

        XCTAssertTrue(eventually { !consumer.isRunning }, "the C consumer did not get 6 records")
        let all = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .split(separator: "\n").map(String.init)
        let errors = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(consumer.terminationStatus, 0, errors)
        XCTAssertEqual(all.filter { $0.hasPrefix("sidecar=raw-peer ") }.count, 1, all.joined(separator: "\n"))
        // Connections are read fairly, so the two senders' lines interleave; each one's own are in order.
        let lines = all.filter { $0.hasPrefix("sidecar=swift-sidecar ") }
        XCTAssertEqual(lines.count, 5, all.joined(separator: "\n"))
        guard lines.count == 5 else { return }
        let boot = configuration.bootID
        guard case .request(let request) = SampleRecords.request else { return XCTFail() }
        XCTAssertEqual(
            lines[0],
            "sidecar=swift-sidecar boot=\(boot) seq=1 dropped_before=0 kind=request exchange=01JD7K3M2Q8X5V9T4N6B1C0R7W method=POST url=https://api.openai.com/v1/chat/completions?trace=1 app=checkout tenant=3f2a9c0d1e7b4a55 headers=2 body=\(request.body.count)/4096 truncated"
        )
        XCTAssertEqual(
            lines[1],
            "sidecar=swift-sidecar boot=\(boot) seq=2 dropped_before=0 kind=stream_chunk exchange=01JD7K3M2Q8X5V9T4N6B1C0R7W index=3 bytes=48"
        )
        XCTAssertEqual(
            lines[2],
            "sidecar=swift-sidecar boot=\(boot) seq=3 dropped_before=0 kind=response_done exchange=01JD7K3M2Q8X5V9T4N6B1C0R7W status=200 outcome=client_aborted response_bytes=18230 chunks=12"
        )
        XCTAssertEqual(
            lines[3],
            "sidecar=swift-sidecar boot=\(boot) seq=4 dropped_before=0 kind=heartbeat published=1000000 dropped=42 mode=reverse version=0.1.0"
        )
        XCTAssertTrue(lines[4].contains("seq=5"))
        XCTAssertTrue(errors.contains("rejected: not an LLMTap frame"), errors)
    }
}
