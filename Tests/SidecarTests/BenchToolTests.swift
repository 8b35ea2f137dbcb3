import Foundation
import TestSupport
import XCTest

/// llmtap-bench, run as a user runs it, against the mock upstream through the sidecar.
final class BenchToolTests: XCTestCase {
    func testItReportsLatencyTTFBThroughputAndErrorsAsJSON() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "5", "--events", "3"])
        defer { harness.stop() }
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(UUID().uuidString).json")
        let bench = try RunningProcess(
            product: "llmtap-bench",
            arguments: [
                "--base-url", harness.baseURL + "/v1", "--endpoint", "/chat/completions", "--token", "sk-test-bench",
                "--requests", "60", "--concurrency", "4", "--stream", "--output", output.path,
            ])
        XCTAssertEqual(bench.waitForExit(), 0, bench.stderr)
        XCTAssertTrue(bench.stdout.contains("requests 60 (concurrency 4)"), bench.stdout)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: output)) as? [String: Any])
        XCTAssertEqual(report["requests"] as? Int, 60)
        XCTAssertEqual(report["errors"] as? Int, 0)
        XCTAssertEqual(report["stream"] as? Bool, true)
        let latency = try XCTUnwrap(report["latencyMs"] as? [String: Double])
        let ttfb = try XCTUnwrap(report["timeToFirstByteMs"] as? [String: Double])
        XCTAssertGreaterThan(
            latency["p50"] ?? 0, ttfb["p50"] ?? .infinity, "the first byte comes before the end of a stream")
        XCTAssertLessThanOrEqual(latency["p50"] ?? 0, latency["p99"] ?? 0)
        XCTAssertGreaterThan(report["throughputRequestsPerSecond"] as? Double ?? 0, 0)
        XCTAssertEqual(harness.mockRequests().count, 60)

        // Nobody there: every request is an error, and the run still ends.
        let refused = try RunningProcess(
            product: "llmtap-bench",
            arguments: [
                "--base-url", "http://127.0.0.1:\(try freeTCPPort())/v1", "--requests", "5", "--concurrency", "2",
            ])
        XCTAssertEqual(refused.waitForExit(), 0, refused.stderr)
        XCTAssertTrue(refused.stdout.contains("5 errors (100.00%)"), refused.stdout)
    }
}
