import Foundation
import TestSupport
import XCTest

/// The gateway under llmtap-bench load: weights and key weights hold over 1,000 requests, and a
/// provider killed under load costs at most the requests it was answering, is marked down by
/// its health check, comes back when it restarts; a fallback serves only while no primary can.
final class GatewayFailoverTests: XCTestCase {
    func testAThousandRequestsFollowTheProvidersAndTheKeysWeights() throws {
        let (light, heavy) = (try MockProvider(), try MockProvider())
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: light, type: openai, endpoint: 127.0.0.1, port: \(light.port), tls: false, weight: 1, api_key: sk-l}
              - name: heavy
                type: openai
                endpoint: 127.0.0.1
                port: \(heavy.port)
                tls: false
                weight: 3
                api_keys: [{key: sk-one, weight: 1}, {key: sk-two, weight: 2}]
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            for mock in [light, heavy] { mock.process.signal(SIGTERM) }
        }
        let load = try startBench(port: port, requests: 1000, concurrency: 16, in: folder)
        XCTAssertEqual(load.waitForExit(timeout: .seconds(120)), 0, load.stderr)
        XCTAssertEqual(try benchReport(of: load)["errors"] as? Int, 0)
        XCTAssertTrue(eventually { light.requests.count + heavy.requests.count == 1000 })
        // Within ±5% of the total of each share (smooth weighted round-robin is exact to a request).
        XCTAssertEqual(Double(light.requests.count), 250, accuracy: 50)
        XCTAssertEqual(Double(heavy.requests.count), 750, accuracy: 50)
        let keys = heavy.requests.map { $0.headers["authorization"] ?? "" }
        XCTAssertEqual(Double(keys.filter { $0 == "Bearer sk-one" }.count), 250, accuracy: 50)
        XCTAssertEqual(Double(keys.filter { $0 == "Bearer sk-two" }.count), 500, accuracy: 50)
    }

    func testAProviderKilledUnderLoadCostsOnlyWhatItWasAnsweringAndComesBack() throws {
        var a = try MockProvider()
        var b = try MockProvider()
        let spare = try MockProvider()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let probe = "health_check: {method: GET, path: /v1/models}"
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            health_check: {enabled: true, interval: 1}
            providers:
              - {name: a, type: openai, endpoint: 127.0.0.1, port: \(a.port), tls: false, api_key: sk-a, \(probe)}
              - {name: b, type: openai, endpoint: 127.0.0.1, port: \(b.port), tls: false, api_key: sk-b, \(probe)}
              - {name: spare, type: openai, endpoint: 127.0.0.1, port: \(spare.port), tls: false, is_fallback: true, api_key: sk-s, \(probe)}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            for mock in [a, b, spare] { mock.process.signal(SIGTERM) }
        }
        /// Log lines of `message` about provider `name` (metadata comes before the message).
        func said(_ message: String, of name: String) -> Int {
            sidecar.stderr.split(separator: "\n").filter { $0.contains(message) && $0.contains(" provider=\(name) ") }
                .count
        }
        func outs(_ name: String) -> Int { said("provider out after a failure", of: name) }
        func backs(_ name: String) -> Int { said("provider back", of: name) }

        // Kill a under load at concurrency 16.
        let load = try startBench(port: port, requests: 12_000, concurrency: 16, in: folder)
        usleep(1_500_000)
        XCTAssertTrue(load.process.isRunning)
        a.process.signal(SIGKILL)
        let killed = ContinuousClock.now
        XCTAssertTrue(
            eventually(timeout: .seconds(5)) { outs("a") >= 1 }, sidecar.stderr
        )
        XCTAssertLessThan(ContinuousClock.now - killed, .seconds(3), "marked down within about one health interval")
        XCTAssertEqual(load.waitForExit(timeout: .seconds(180)), 0, load.stderr)
        let errors = try XCTUnwrap(try benchReport(of: load)["errors"] as? Int)
        XCTAssertLessThanOrEqual(errors, 16, "only requests a was answering when it died may fail")
        XCTAssertEqual(
            spare.requests.filter { $0.path != "/v1/models" }.count, 0, "b was up: the fallback never served")

        // a restarts on its port: its health check brings it back.
        a = try MockProvider(port: a.port)
        XCTAssertTrue(eventually(timeout: .seconds(10)) { backs("a") >= 1 }, sidecar.stderr)
        let again = try startBench(port: port, requests: 400, concurrency: 4, in: folder)
        XCTAssertEqual(again.waitForExit(timeout: .seconds(60)), 0)
        XCTAssertEqual(try benchReport(of: again)["errors"] as? Int, 0)
        XCTAssertGreaterThan(a.requests.filter { $0.path != "/v1/models" }.count, 100, "a takes its share again")

        // Both primaries down: the fallback serves; once one is back, it stops.
        a.process.signal(SIGKILL)
        b.process.signal(SIGKILL)
        XCTAssertTrue(eventually(timeout: .seconds(10)) { outs("b") >= 1 && outs("a") >= 2 }, sidecar.stderr)
        for _ in 0..<20 {
            XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 200)
        }
        let served = spare.requests.count
        XCTAssertGreaterThanOrEqual(served, 20)
        b = try MockProvider(port: b.port)
        XCTAssertTrue(
            eventually(timeout: .seconds(10)) { backs("b") >= 1 }, sidecar.stderr)
        for _ in 0..<20 {
            XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 200)
        }
        let probes = spare.requests.count - served
        XCTAssertLessThanOrEqual(probes, 3, "only its own health checks reached the fallback")
        XCTAssertGreaterThanOrEqual(b.requests.count, 20)
    }
}
