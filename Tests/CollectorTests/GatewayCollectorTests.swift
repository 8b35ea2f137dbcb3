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
        let (sidecar, port) = try startPlainSidecar(upstreamPort: mockPort, collector: collector, id: "proto-1")
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
        }
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

/// OpenAI Realtime sessions: usage from each `response.done`, normalised (text and audio, fresh
/// and cached, disjoint), priced at the audio rates, and one row per session.
final class RealtimeSessionTests: XCTestCase {
    private func message(_ text: String) -> [UInt8] { Array(text.utf8) }

    func testUsageIsSummedPerSessionWithTextAndAudioApart() {
        var session = RealtimeSession()
        let created = #"{"type":"session.created","event_id":"e1","session":{"model":"gpt-realtime-2025-08-28"}}"#
        session.upstreamMessage(message(created), size: UInt64(created.utf8.count), opcode: 1)
        let done = #"""
            {"type":"response.done","event_id":"e2","response":{"id":"r1","status":"completed","usage":{"total_tokens":270,"input_tokens":150,"output_tokens":120,"input_token_details":{"text_tokens":100,"audio_tokens":50,"cached_tokens":40,"cached_tokens_details":{"text_tokens":30,"audio_tokens":10}},"output_token_details":{"text_tokens":20,"audio_tokens":100}}}}
            """#
        for _ in 0..<3 { session.upstreamMessage(message(done), size: UInt64(done.utf8.count), opcode: 1) }
        // Older models: no cached details (taken as text), no text counts (the rest of the total).
        let old =
            #"{"type":"response.done","response":{"id":"r4","status":"cancelled","usage":{"input_tokens":60,"output_tokens":10,"input_token_details":{"audio_tokens":20,"cached_tokens":5}}}}"#
        session.upstreamMessage(message(old), size: UInt64(old.utf8.count), opcode: 1)
        let error =
            #"{"type":"error","event_id":"e9","error":{"type":"invalid_request_error","code":"bad_event","message":"nope"}}"#
        session.upstreamMessage(message(error), size: UInt64(error.utf8.count), opcode: 1)
        XCTAssertEqual(session.model, "gpt-realtime-2025-08-28")
        XCTAssertEqual(
            session.usage,
            TokenUsage(
                input: 3 * 70 + 35, output: 3 * 20 + 10, cachedInput: 3 * 30 + 5, audioInput: 3 * 40 + 20,
                audioCachedInput: 3 * 10, audioOutput: 3 * 100))
        XCTAssertEqual(session.usage.total, 3 * 270 + 70)
        XCTAssertEqual(session.responses.map(\.id), ["r1", "r1", "r1", "r4"])
        XCTAssertEqual(session.responses.last?.status, "cancelled")
        XCTAssertEqual(
            session.errors, [RealtimeError(type: "invalid_request_error", code: "bad_event", message: "nope")])
        XCTAssertEqual(session.usageSource, .reported)
        XCTAssertEqual(session.parseError, "")
    }

    func testBadAndCutEventsAreNotedNotCounted() {
        var session = RealtimeSession()
        session.upstreamMessage(
            message(#"{"type":"response.done","response":{"usage":{"input_tokens":"#), size: 5000, opcode: 1)
        XCTAssertTrue(session.parseError.contains("cut at the capture cap"), session.parseError)
        var broken = RealtimeSession()
        let invalid = #"{"type":"response.done","response":{"usage":nope}}"#
        broken.upstreamMessage(message(invalid), size: UInt64(invalid.utf8.count), opcode: 1)
        XCTAssertTrue(broken.parseError.contains("not valid JSON"), broken.parseError)
        // Deltas, binary messages and negative counts cost nothing.
        broken.upstreamMessage(message(#"{"type":"response.output_audio.delta","delta":"AAAA"}"#), size: 52, opcode: 1)
        broken.upstreamMessage([0, 1, 2], size: 3, opcode: 2)
        let negative =
            #"{"type":"response.done","response":{"usage":{"input_tokens":-5,"output_tokens":-1,"input_token_details":{"text_tokens":-5}}}}"#
        broken.upstreamMessage(message(negative), size: UInt64(negative.utf8.count), opcode: 1)
        XCTAssertEqual(broken.usage, TokenUsage())
    }

    func testAudioIsPricedAtItsOwnRates() throws {
        let prices = try PriceTable.shipped()
        for model in [
            "gpt-realtime", "gpt-realtime-2025-08-28", "gpt-4o-realtime-preview-2024-12-17",
            "gpt-4o-mini-realtime-preview",
        ] {
            XCTAssertNotNil(prices.price(for: model)?.audio_input, model)
        }
        let price = try XCTUnwrap(prices.price(for: "gpt-realtime"))
        let usage = TokenUsage(
            input: 70, output: 20, cachedInput: 30, audioInput: 40, audioCachedInput: 10, audioOutput: 100)
        let text: Double = 70 * 4 + 20 * 16 + 30 * 0.4
        let audio: Double = 40 * 32 + 10 * 0.4 + 100 * 64
        XCTAssertEqual(price.cost(of: usage), (text + audio) / 1e6, accuracy: 1e-12)
        // A table without audio rates prices audio as text.
        let plain = ModelPrice(provider: "openai", model: "x", input: 1, output: 2)
        XCTAssertEqual(plain.cost(of: TokenUsage(audioInput: 1_000_000, audioOutput: 1_000_000)), 3, accuracy: 1e-9)
    }

    func testTheRealtimeRouteAndItsModel() {
        let route = ProviderRoute.detect(host: "api.openai.com", path: "/v1/realtime?model=gpt-realtime%2Dmini&x=1")
        XCTAssertEqual(route.endpoint, .realtime)
        XCTAssertEqual(route.provider, .openai)
        XCTAssertEqual(route.modelInPath, "gpt-realtime-mini")
    }

    func testASessionThroughTheSidecarIsOneRowWithItsUsageAndCostInMetrics() throws {
        let collector = try CollectorHarness()
        defer { _ = collector.stop() }
        let mock = try MockProvider()
        defer { mock.process.signal(SIGTERM) }
        let (sidecar, port) = try startPlainSidecar(upstreamPort: mock.port, collector: collector, id: "realtime-1")
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
        }
        let run = try runPython(
            """
            import asyncio, json, sys, websockets
            async def main():
                async with websockets.connect(sys.argv[1], additional_headers={"Authorization": "Bearer sk-rt-secret-4471"}) as ws:
                    await ws.recv()
                    for _ in range(2):
                        await ws.send(json.dumps({"type": "response.create"}))
                        while json.loads(await ws.recv())["type"] != "response.done":
                            pass
                    await ws.send(json.dumps({"type": "mock.error"}))
                    await ws.recv()
                print("ok")
            asyncio.run(main())
            """, arguments: ["ws://127.0.0.1:\(port)/v1/realtime?model=gpt-realtime"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(try eventually { try collector.rows().count == 1 }, collector.process.stderr)
        let row = try XCTUnwrap(try collector.rows().first)
        XCTAssertEqual(row.clientProtocol, "websocket")
        XCTAssertEqual(row.endpoint, "realtime")
        XCTAssertEqual(row.status, 101)
        XCTAssertEqual(row.outcome, "completed")
        XCTAssertEqual(row.closeCode, 1000)
        XCTAssertEqual(row.modelServed, "gpt-realtime")
        XCTAssertEqual([row.inputTokens, row.cachedInputTokens, row.outputTokens], [140, 60, 40])
        XCTAssertEqual([row.audioInputTokens, row.audioCachedInputTokens, row.audioOutputTokens], [80, 20, 200])
        XCTAssertEqual(row.totalTokens, 540)
        XCTAssertEqual(row.costUSD ?? 0, 2 * 0.008296, accuracy: 1e-9)
        XCTAssertEqual(row.errorType, "mock_error")
        XCTAssertTrue(row.realtimeResponses.contains(#""id":"resp_mock_2""#), row.realtimeResponses)
        XCTAssertTrue(row.realtimeErrors.contains("mock_error"), row.realtimeErrors)
        let metrics = try collector.get("/metrics").body
        XCTAssertTrue(metrics.contains(#"protocol="websocket""#), metrics)
        XCTAssertTrue(metrics.contains(#"type="audio_output"} 200"#), metrics)
        XCTAssertTrue(
            metrics.contains(
                #"llmtap_cost_usd_total{app="default",sidecar="realtime-1",provider="openai",model="gpt-realtime"} 0.016592"#
            ), metrics)
        XCTAssertFalse(metrics.contains("sk-rt-secret-4471"))
        XCTAssertFalse(try collector.get("/api/exchanges").body.contains("sk-rt-secret-4471"))
        let promtool = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/promtool"), arguments: ["check", "metrics"], stdinText: metrics)
        XCTAssertEqual(promtool.waitForExit(), 0, promtool.stdout + promtool.stderr)
    }
}

/// A sidecar in reverse mode in front of `upstreamPort`, publishing to `collector`, started and
/// listening; its port. The caller stops it.
func startPlainSidecar(upstreamPort: Int, collector: CollectorHarness, id: String) throws -> (RunningProcess, Int) {
    let port = try freeTCPPort()
    let sidecar = try RunningProcess(
        product: "llmtap-sidecar",
        arguments: [
            "--listen", "127.0.0.1:\(port)", "--upstream", "http://127.0.0.1:\(upstreamPort)", "--collector",
            collector.analysisEndpoint, "--sidecar-id", id,
        ])
    guard eventually({ sidecar.stderr.contains("reverse listener ready") }) else {
        throw TestFailure("the sidecar did not start: \(sidecar.stderr)")
    }
    return (sidecar, port)
}
