import Foundation
import TestSupport
import Wire
import XCTest

@testable import Collector

/// A gateway sidecar (a configuration file, two providers) and the real collector: each stored
/// exchange names the provider that answered, its key by id, and its attempts; the heartbeat's
/// provider states become `llmtap_provider_up`; no key is anywhere.
final class GatewayCollectorTests: XCTestCase {
    func testRecordsNameTheProviderItsKeyIdAndAttemptsAndProviderUpIsExported() throws {
        let collector = try CollectorHarness()
        defer { _ = collector.stop() }
        let mock = try MockProvider()
        let mockPort = mock.port
        defer { mock.process.signal(SIGTERM) }
        let port = try freeTCPPort()
        let config = collector.folder.appendingPathComponent("sidecar.yml").path
        // `gone` is chosen first (the larger weight) and can't be reached: the first request is
        // retried on `alive`, and `gone` is out from then on.
        try """
        http_port: \(port)
        http_bind_address: 127.0.0.1
        auth_keys: [team-client-key]
        providers:
          - {name: gone, type: openai, endpoint: 127.0.0.1, port: \(try freeTCPPort()), tls: false, weight: 9, api_key: sk-gone-secret}
          - {name: alive, type: openai, endpoint: 127.0.0.1, port: \(mockPort), tls: false, weight: 1, api_key: sk-alive-secret}
        llmtap: {collector: "\(collector.analysisEndpoint)", heartbeat_interval: 1, sidecar_id: gw-1}
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let sidecar = try RunningProcess(product: "llmtap-sidecar", arguments: ["--config", config])
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
        }
        XCTAssertTrue(eventually { sidecar.stderr.contains("reverse listener ready") }, sidecar.stderr)

        for _ in 0..<3 {
            let status = try curlWithStatus([
                "-s", "http://127.0.0.1:\(port)/v1/chat/completions", "-H", "authorization: Bearer team-client-key",
                "-H", "content-type: application/json",
                "-d", #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            ]).status
            XCTAssertEqual(status, 200)
        }
        XCTAssertTrue(try eventually { try collector.rows().count == 3 }, collector.process.stderr)
        let rows = try collector.rows().sorted { $0.startedAtMs < $1.startedAtMs }
        XCTAssertEqual(rows.map(\.attempts), [2, 1, 1], "the first tried gone, then alive")
        XCTAssertEqual(Set(rows.map(\.gatewayProvider)), ["alive"])
        let keyID = try XCTUnwrap(rows.first?.providerKeyID)
        XCTAssertEqual(keyID.count, 16, "a keyed hash, as tenant ids are")
        XCTAssertEqual(Set(rows.map(\.providerKeyID)), [keyID])
        XCTAssertNotEqual(keyID, rows.first?.tenant, "the client's key and the provider's are different keys")

        XCTAssertTrue(
            try eventually {
                try collector.metric("llmtap_provider_up", ["sidecar": "gw-1", "provider": "alive"]) == 1
                    && collector.metrics().keys.contains { $0.contains("provider=\"gone\"") }
                    && collector.metric("llmtap_provider_up", ["sidecar": "gw-1", "provider": "gone"]) == 0
            }, (try? collector.get("/metrics").body) ?? "")
        let metrics = try collector.get("/metrics").body
        let promtool = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/promtool"), arguments: ["check", "metrics"], stdinText: metrics)
        XCTAssertEqual(promtool.waitForExit(), 0, promtool.stdout + promtool.stderr)

        // No key of either kind anywhere: not in the database, the logs or the metrics.
        let database = try Data(contentsOf: URL(fileURLWithPath: collector.databasePath))
        for secret in ["sk-gone-secret", "sk-alive-secret", "team-client-key"] {
            XCTAssertNil(database.range(of: Data(secret.utf8)), secret)
            for text in [metrics, sidecar.stderr, collector.process.stderr] { XCTAssertFalse(text.contains(secret)) }
        }
    }
}

/// `provider_up` from heartbeats alone: bounded, and a provider a reload removed loses its series.
final class ProviderUpMetricTests: XCTestCase {
    func beat(_ providers: [(String, Bool)]) -> WireHeartbeat {
        var beat = WireHeartbeat()
        beat.intervalMs = 1000
        beat.providers = providers.map { name, up in
            var state = WireProviderState()
            state.name = name
            state.up = up
            state.failures = up ? 0 : 3
            return state
        }
        return beat
    }

    func testEachProviderIsOneSeriesAndOneRemovedIsGone() {
        let metrics = CollectorMetrics(maxModelLabels: 10)
        metrics.heartbeat(sidecar: "s1", bootID: "b", beat: beat([("a", true), ("b", false)]), nowUnix: 100)
        var text = metrics.registry.emitToString()
        XCTAssertTrue(text.contains(#"llmtap_provider_up{sidecar="s1",provider="a"} 1"#), text)
        XCTAssertTrue(text.contains(#"llmtap_provider_up{sidecar="s1",provider="b"} 0"#), text)
        metrics.heartbeat(sidecar: "s1", bootID: "b", beat: beat([("a", false)]), nowUnix: 101)
        text = metrics.registry.emitToString()
        XCTAssertTrue(text.contains(#"llmtap_provider_up{sidecar="s1",provider="a"} 0"#), text)
        XCTAssertFalse(text.contains(#"provider="b""#), "b left the configuration: \(text)")
    }

    func testAHeartbeatNamingThousandsOfProvidersPutsABoundedNumberOnMetrics() {
        let metrics = CollectorMetrics(maxModelLabels: 10)
        let many = (0..<5_000).map { ("p\($0)", true) }
        metrics.heartbeat(sidecar: "s1", bootID: "b", beat: beat(many), nowUnix: 100)
        let series = metrics.registry.emitToString().split(separator: "\n").filter {
            $0.hasPrefix("llmtap_provider_up{")
        }
        XCTAssertEqual(series.count, CollectorMetrics.maxProvidersPerSidecar)
    }
}

/// The client's protocol, from the Request record's `http_version`, as a row's column and a label
/// of `llmtap_requests_total`: HTTP/1.1 and HTTP/2 through one real sidecar to the real collector.
final class ClientProtocolTests: XCTestCase {
    func testTheLabelIsBoundedWhateverTheVersionSays() {
        XCTAssertEqual(ExchangeRecord.protocolLabel(httpVersion: "HTTP/2"), "h2")
        XCTAssertEqual(ExchangeRecord.protocolLabel(httpVersion: "HTTP/2.0"), "h2")
        for other in ["HTTP/1.1", "HTTP/1.0", "", "HTTP/9", "h2\u{0}", String(repeating: "x", count: 10_000)] {
            XCTAssertEqual(ExchangeRecord.protocolLabel(httpVersion: other), "http1", other)
        }
    }

    func testRowsAndMetricsSayWhichProtocolCarriedEachExchange() throws {
        let collector = try CollectorHarness()
        defer { _ = collector.stop() }
        let mock = try MockProvider()
        let mockPort = mock.port
        defer { mock.process.signal(SIGTERM) }
        let port = try freeTCPPort()
        let sidecar = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: [
                "--listen", "127.0.0.1:\(port)", "--upstream", "http://127.0.0.1:\(mockPort)", "--collector",
                collector.analysisEndpoint, "--sidecar-id", "proto-1",
            ])
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
        }
        XCTAssertTrue(eventually { sidecar.stderr.contains("reverse listener ready") }, sidecar.stderr)
        let url = "http://127.0.0.1:\(port)/v1/chat/completions"
        for version in ["--http1.1", "--http2-prior-knowledge", "--http2-prior-knowledge"] {
            let response = try curlWithStatus(
                ["-s", version, url] + curlChatArguments(#"{"model":"gpt-4o-mini"}"#, key: "sk-proto-test"))
            XCTAssertEqual(response.status, 200)
        }
        XCTAssertTrue(try eventually { try collector.rows().count == 3 }, collector.process.stderr)
        XCTAssertEqual(try collector.rows().map(\.clientProtocol).sorted(), ["h2", "h2", "http1"])
        XCTAssertTrue(
            try eventually {
                let series = try collector.metrics().filter { $0.key.hasPrefix("llmtap_requests_total{") }
                let h2 = series.filter { $0.key.contains(#"protocol="h2""#) }.map(\.value).reduce(0, +)
                let http1 = series.filter { $0.key.contains(#"protocol="http1""#) }.map(\.value).reduce(0, +)
                return h2 == 2 && http1 == 1
            }, (try? collector.get("/metrics").body) ?? "")
        let exchanges = try collector.get("/api/exchanges").body
        XCTAssertTrue(exchanges.contains(#""protocol":"h2""#), exchanges)
        let promtool = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/promtool"), arguments: ["check", "metrics"],
            stdinText: try collector.get("/metrics").body)
        XCTAssertEqual(promtool.waitForExit(), 0, promtool.stdout + promtool.stderr)
    }
}
