import Foundation
import TestSupport
import Wire
import XCTest

/// llmtap-sidecar started as a user starts it, talking to a real receiver.
final class SidecarProcessTests: XCTestCase {
    func testHelpExplainsEveryOption() throws {
        let sidecar = try RunningProcess(product: "llmtap-sidecar", arguments: ["--help"])
        XCTAssertEqual(sidecar.waitForExit(), 0)
        for option in [
            "--collector", "--sidecar-id", "--app", "--heartbeat-interval", "--max-queued-records",
            "--max-queued-bytes", "--log-level", "LLMTAP_COLLECTOR", "--config", "LLMTAP_CONFIG", "check-config",
        ] {
            XCTAssertTrue(sidecar.stdout.contains(option), "--help does not mention \(option)")
        }
    }

    func testItHeartbeatsToTheCollectorAndStopsCleanlyOnSIGTERM() throws {
        for signal in [SIGTERM, SIGINT] {
            let collected = Collected<ReceivedRecord>()
            let receiver = try AnalysisReceiver(
                configuration: AnalysisReceiverConfiguration(endpoint: "tcp://127.0.0.1:*"), logger: testLogger()
            ) { collected.append($0) }
            let sidecar = try RunningProcess(
                product: "llmtap-sidecar",
                arguments: [
                    "--collector", receiver.boundEndpoint, "--sidecar-id", "test-sidecar", "--heartbeat-interval",
                    "0.2",
                ], environment: ["LLMTAP_APP": "checkout"])

            XCTAssertTrue(eventually { collected.count >= 3 }, sidecar.stderr)
            sidecar.signal(signal)
            XCTAssertEqual(sidecar.waitForExit(), 0, sidecar.stderr)
            // The final heartbeat, sent on the way out, is the last record and carries the final counts.
            let countBeforeExit = collected.count
            XCTAssertTrue(eventually(timeout: .seconds(2)) { receiver.stats.received == UInt64(countBeforeExit) })
            receiver.shutdown()

            let records = collected.all
            XCTAssertEqual(records.map(\.envelope.seq), Array(1...UInt64(records.count)), "no gaps, from 1")
            XCTAssertTrue(records.allSatisfy { $0.envelope.sidecarID == "test-sidecar" })
            XCTAssertEqual(Set(records.map(\.envelope.bootID)).count, 1)
            guard case .heartbeat(let last) = records.last?.envelope.record else { return XCTFail("not a heartbeat") }
            XCTAssertEqual(last.app, "checkout", "the env var sets the app label")
            XCTAssertEqual(last.mode, "reverse")
            XCTAssertEqual(last.version, LLMTapVersion.current)
            XCTAssertEqual(last.intervalMs, 200)
            XCTAssertEqual(last.published, UInt64(records.count - 1))
            XCTAssertEqual(last.dropped, 0)
            XCTAssertTrue(sidecar.stderr.contains("llmtap-sidecar stopped"), sidecar.stderr)
        }
    }

    func testWithNoCollectorItStillRunsAndStops() throws {
        let sidecar = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: [
                "--collector", "tcp://127.0.0.1:\(try freeTCPPort())", "--heartbeat-interval", "0.05",
            ])
        XCTAssertTrue(eventually { sidecar.stderr.contains("llmtap-sidecar started") }, sidecar.stderr)
        usleep(200_000)
        sidecar.signal(SIGTERM)
        // It gives queued records the linger (2 s) to find a collector, then exits anyway.
        XCTAssertEqual(sidecar.waitForExit(), 0, sidecar.stderr)
    }

    func testBadArgumentsAreRefusedWithAReason() throws {
        let cases: [([String], String)] = [
            (["--collector", "nonsense"], "cannot use --collector nonsense"),
            (["--log-level", "loud"], "--log-level must be one of"),
            (["--heartbeat-interval", "0"], "--heartbeat-interval must be more than 0"),
            (["--max-queued-records", "0"], "the queue limits must be positive"),
            (["--no-such-flag"], "Unknown option"),
        ]
        for (arguments, message) in cases {
            let sidecar = try RunningProcess(product: "llmtap-sidecar", arguments: arguments)
            let status = sidecar.waitForExit()
            XCTAssertNotNil(status)
            XCTAssertNotEqual(status, 0, "\(arguments) was accepted")
            XCTAssertTrue(sidecar.stderr.contains(message), "\(arguments): \(sidecar.stderr)")
        }
    }

    func testABadValueInAVariableNamesTheVariableAndTheValue() throws {
        let cases: [([String: String], [String])] = [
            (["LISTEN_ADDR": "nonsense"], ["LISTEN_ADDR (--listen)", "not nonsense"]),
            (["LLMTAP_THREADS": "abc"], ["LLMTAP_THREADS", "\"abc\""]),
            (["UPSTREAM": "ftp://x"], ["UPSTREAM (--upstream)", "ftp://x"]),
            (["MITM_LISTEN_ADDR": ":8080"], ["MITM_LISTEN_ADDR (--mitm-listen)", "needs a host"]),
            (["LOG_LEVEL": "loud"], ["LOG_LEVEL (--log-level) is \"loud\""]),
            (["LLMTAP_COLLECTOR": "nonsense"], ["cannot use LLMTAP_COLLECTOR (--collector) nonsense"]),
        ]
        for (environment, messages) in cases {
            let sidecar = try RunningProcess(product: "llmtap-sidecar", arguments: [], environment: environment)
            XCTAssertNotEqual(sidecar.waitForExit(), 0, "\(environment) was accepted")
            for message in messages {
                XCTAssertTrue(sidecar.stderr.contains(message), "\(environment): \(sidecar.stderr)")
            }
        }
    }
}
