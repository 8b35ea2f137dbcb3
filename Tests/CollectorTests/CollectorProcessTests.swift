import Foundation
import TestSupport
import Wire
import XCTest

/// llmtap-collector started as a user starts it, fed by a real publisher.
final class CollectorProcessTests: XCTestCase {
    /// Its HTTP port and database, away from the defaults (another collector may be running).
    private func isolated() throws -> [String] {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-collector-\(UUID().uuidString)")
        return [
            "--http", "127.0.0.1:\(try freeTCPPort())", "--listen-policy", "tcp://127.0.0.1:*", "--db",
            folder.appendingPathComponent("llmtap.sqlite").path,
        ]
    }

    func testHelpExplainsEveryOption() throws {
        let collector = try RunningProcess(product: "llmtap-collector", arguments: ["--help"])
        XCTAssertEqual(collector.waitForExit(), 0)
        for option in [
            "--listen-analysis", "--http", "--db", "--exchange-timeout", "--prices", "--store-bodies",
            "--retention-days",
            "--jsonl", "--max-model-labels", "--log-level", "LLMTAP_LISTEN_ANALYSIS", "LLMTAP_HTTP", "LLMTAP_DB",
            "--listen-policy", "LLMTAP_LISTEN_POLICY", "MANAGEMENT_TOKEN", "--management-token-file",
        ] {
            XCTAssertTrue(collector.stdout.contains(option), "--help does not mention \(option)")
        }
    }

    func testItReceivesASidecarAndStopsCleanlyOnSIGTERM() throws {
        let endpoint = "tcp://127.0.0.1:\(try freeTCPPort())"
        let collector = try RunningProcess(
            product: "llmtap-collector", arguments: ["--log-level", "debug"] + isolated(),
            environment: ["LLMTAP_LISTEN_ANALYSIS": endpoint])
        XCTAssertTrue(eventually { collector.stderr.contains("llmtap-collector started") }, collector.stderr)

        let publisher = try AnalysisPublisher(
            configuration: AnalysisPublisherConfiguration(endpoint: endpoint, sidecarID: "sidecar-7"),
            logger: testLogger()
        )
        publisher.publish(SampleRecords.heartbeat)
        publisher.publish(SampleRecords.request)
        publisher.publish(SampleRecords.heartbeat)
        XCTAssertTrue(eventually { collector.stderr.contains("sidecar connected") }, collector.stderr)
        XCTAssertTrue(collector.stderr.contains("sidecar=sidecar-7"))
        publisher.shutdown()

        collector.signal(SIGTERM)
        XCTAssertEqual(collector.waitForExit(), 0, collector.stderr)
        XCTAssertTrue(collector.stderr.contains("received=3"), collector.stderr)
        XCTAssertTrue(collector.stderr.contains("missing=0 received=3 rejected=0"), collector.stderr)
        XCTAssertFalse(collector.stderr.contains("[redacted]"), "header values are not logged")
    }

    func testGarbageOnTheAnalysisPortIsLoggedAndCounted() throws {
        let endpoint = "tcp://127.0.0.1:\(try freeTCPPort())"
        let collector = try RunningProcess(
            product: "llmtap-collector", arguments: ["--listen-analysis", endpoint] + isolated())
        XCTAssertTrue(eventually { collector.stderr.contains("llmtap-collector started") }, collector.stderr)
        let context = try ZMQContext()
        let push = try ZMQSocket(context: context, kind: .push)
        try push.set(.linger(milliseconds: 2_000))
        try push.connect(endpoint)
        try push.send(Array("{\"not\":\"protobuf\"}".utf8))
        try push.send(try WireFrame.encode(SampleRecords.envelope(SampleRecords.heartbeat, seq: 1)))
        XCTAssertTrue(eventually { collector.stderr.contains("sidecar connected") }, collector.stderr)
        XCTAssertTrue(collector.stderr.contains("rejected a message on the analysis socket"), collector.stderr)
        XCTAssertTrue(collector.stderr.contains("reason=bad_marker"), collector.stderr)
        collector.signal(SIGINT)
        XCTAssertEqual(collector.waitForExit(), 0, collector.stderr)
        XCTAssertTrue(collector.stderr.contains("missing=0 received=1 rejected=1"), collector.stderr)
    }

    func testAPortInUseOrAMalformedEndpointIsRefusedWithAReason() throws {
        let endpoint = "tcp://127.0.0.1:\(try freeTCPPort())"
        let first = try RunningProcess(
            product: "llmtap-collector", arguments: ["--listen-analysis", endpoint] + isolated())
        XCTAssertTrue(eventually { first.stderr.contains("llmtap-collector started") }, first.stderr)
        let second = try RunningProcess(
            product: "llmtap-collector", arguments: ["--listen-analysis", endpoint] + isolated())
        XCTAssertNotEqual(second.waitForExit(), 0)
        XCTAssertTrue(second.stderr.contains("Address already in use"), second.stderr)
        first.signal(SIGTERM)
        XCTAssertEqual(first.waitForExit(), 0)

        let malformed = try RunningProcess(
            product: "llmtap-collector", arguments: ["--listen-analysis", "7101"] + isolated())
        XCTAssertNotEqual(malformed.waitForExit(), 0)
        XCTAssertTrue(malformed.stderr.contains("cannot listen on --listen-analysis 7101"), malformed.stderr)
    }

    func testABadValueInAVariableNamesTheVariableAndTheValue() throws {
        let cases: [([String: String], [String])] = [
            (["LLMTAP_HTTP": "nonsense"], ["LLMTAP_HTTP (--http)", "not nonsense"]),
            (["LLMTAP_EXCHANGE_TIMEOUT": "abc"], ["LLMTAP_EXCHANGE_TIMEOUT", "\"abc\""]),
            (["LOG_LEVEL": "loud"], ["--log-level must be one of", "LOG_LEVEL (--log-level) is \"loud\""]),
            (["LLMTAP_LISTEN_ANALYSIS": "7101"], ["cannot listen on LLMTAP_LISTEN_ANALYSIS (--listen-analysis) 7101"]),
        ]
        for (environment, messages) in cases {
            // The variable under test must not be overridden by a flag.
            var arguments = try isolated()
            if environment["LLMTAP_HTTP"] != nil { arguments.removeFirst(2) }
            let collector = try RunningProcess(
                product: "llmtap-collector", arguments: arguments, environment: environment)
            XCTAssertNotEqual(collector.waitForExit(), 0, "\(environment) was accepted")
            for message in messages {
                XCTAssertTrue(collector.stderr.contains(message), "\(environment): \(collector.stderr)")
            }
        }
    }
}
