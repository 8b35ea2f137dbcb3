import Foundation
import GRDB
import TestSupport
import XCTest

@testable import Collector

/// The mock upstream, a real sidecar and a real collector, as a user runs them. The figures the
/// collector reports are checked against the usage in the very bodies the client received, read
/// here with plain JSONSerialization rather than the collector's own parsers.
final class CollectorEndToEndTests: XCTestCase {
    private let secrets = ["sk-e2e-openai-secret-7731", "sk-ant-e2e-secret-4410", "AIzaE2EgeminiSecret9920"]

    private struct Expected {
        var model: String
        var input = 0
        var output = 0
        var reported = true
    }

    /// The usage a provider reported in a body, by its documented shape.
    private func usage(in body: Data, provider: String) -> (input: Int, output: Int)? {
        let text = String(decoding: body, as: UTF8.self)
        var documents: [[String: Any]] = []
        if text.hasPrefix("{") {
            documents = [(try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:]]
        } else {
            for line in text.components(separatedBy: .newlines) where line.hasPrefix("data: ") {
                if let object = (try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)))
                    as? [String: Any]
                {
                    documents.append(object)
                }
            }
        }
        var input: Int?
        var output: Int?
        for document in documents {
            switch provider {
            case "anthropic":
                if let message = document["message"] as? [String: Any], let usage = message["usage"] as? [String: Any] {
                    input = usage["input_tokens"] as? Int
                }
                if let usage = document["usage"] as? [String: Any], let out = usage["output_tokens"] as? Int {
                    output = out
                }
            case "gemini":
                if let usage = document["usageMetadata"] as? [String: Any] {
                    input = usage["promptTokenCount"] as? Int
                    output = usage["candidatesTokenCount"] as? Int ?? output
                }
            default:
                if let usage = document["usage"] as? [String: Any] {
                    input = usage["prompt_tokens"] as? Int
                    output = usage["completion_tokens"] as? Int
                }
            }
        }
        guard let input, let output else { return nil }
        return (input, output)
    }

    func testProviderTrafficIsCountedPricedStoredAndLogsNoSecret() throws {
        let collector = try CollectorHarness()
        let proxy = try ProxyHarness(
            sidecarArguments: ["--heartbeat-interval", "1"], collectorEndpoint: collector.analysisEndpoint)
        defer {
            proxy.stop()
            _ = collector.stop()
        }

        let requests: [(provider: String, path: String, header: String, body: String, model: String)] = [
            (
                "openai", "/v1/chat/completions", "Authorization: Bearer \(secrets[0])",
                #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello there"}]}"#, "gpt-4o-mini"
            ),
            (
                "openai", "/v1/chat/completions", "Authorization: Bearer \(secrets[0])",
                #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}"#,
                "gpt-4o-mini"
            ),
            (
                "openai", "/v1/chat/completions", "Authorization: Bearer \(secrets[0])",
                #"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#, "gpt-4o-mini"
            ),
            (
                "anthropic", "/v1/messages", "x-api-key: \(secrets[1])",
                #"{"model":"claude-sonnet-4-20250514","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#,
                "claude-sonnet-4-20250514"
            ),
            (
                "gemini", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                "x-goog-api-key: \(secrets[2])",
                #"{"contents":[{"parts":[{"text":"Hi"}]}]}"#, "gemini-2.0-flash"
            ),
        ]
        var expected: [Expected] = []
        for request in requests {
            let response = try curl([
                "-sS", "-X", "POST", "\(proxy.baseURL)\(request.path)", "-H", "Content-Type: application/json",
                "-H", request.header, "-d", request.body,
            ])
            XCTAssertEqual(response.exitCode, 0)
            let found = usage(in: response.body, provider: request.provider)
            expected.append(
                Expected(
                    model: request.model, input: found?.input ?? 0, output: found?.output ?? 0, reported: found != nil))
        }
        XCTAssertEqual(
            expected.map(\.reported), [true, true, false, true, true], "the stream without include_usage reports none")

        let counted = try eventually { try collector.metric("llmtap_requests_total") == 5 }
        let scrape = try collector.get("/metrics").body
        XCTAssertTrue(counted, scrape)
        let prices = try PriceTable.shipped()
        for model in Set(expected.map(\.model)) {
            let mine = expected.filter { $0.model == model && $0.reported }
            let input = mine.reduce(0) { $0 + $1.input }
            let output = mine.reduce(0) { $0 + $1.output }
            // The mock serves each model under the name it was asked for (OpenAI's gains its snapshot date).
            let labels = ["model": model == "gpt-4o-mini" ? "gpt-4o-mini-2024-07-18" : model]
            XCTAssertEqual(
                try collector.metric("llmtap_tokens_total", labels.merging(["type": "input"]) { $1 }), Double(input),
                model)
            XCTAssertEqual(
                try collector.metric("llmtap_tokens_total", labels.merging(["type": "output"]) { $1 }), Double(output),
                model)
            let price = try XCTUnwrap(prices.price(for: model))
            XCTAssertEqual(
                try collector.metric("llmtap_cost_usd_total", labels),
                (Double(input) * price.input + Double(output) * price.output) / 1e6,
                accuracy: 1e-12, model)
        }
        XCTAssertEqual(
            try collector.metric(
                "llmtap_requests_total",
                ["provider": "anthropic", "stream": "true", "status_class": "2xx", "outcome": "completed"]), 1)
        XCTAssertEqual(try collector.metric("llmtap_sidecar_up", ["sidecar": "test-sidecar"]), 1)
        XCTAssertGreaterThan(try collector.metric("llmtap_records_received_total", ["sidecar": "test-sidecar"]), 15)
        XCTAssertEqual(try collector.metric("llmtap_records_lost_total"), 0)

        // promtool, Prometheus's own checker, accepts the exposition.
        let metricsBody = try collector.get("/metrics").body
        let promtool = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/promtool"), arguments: ["check", "metrics"],
            stdinText: metricsBody)
        XCTAssertEqual(promtool.waitForExit(), 0, promtool.stdout + promtool.stderr)

        // SQLite: one row per exchange, with the same figures; the API serves them.
        XCTAssertTrue(eventually { ((try? collector.getJSON("/api/exchanges?limit=10")) as? [Any])?.count == 5 })
        let database = try DatabaseQueue(
            path: collector.databasePath,
            configuration: {
                var c = Configuration()
                c.readonly = true
                return c
            }())
        let rows = try database.read { db in try ExchangeRecord.order(Column("started_at_ms")).fetchAll(db) }
        XCTAssertEqual(rows.count, 5)
        XCTAssertEqual(rows.map(\.inputTokens), expected.map { $0.reported ? $0.input : 0 })
        XCTAssertEqual(rows.map(\.outputTokens), expected.map { $0.reported ? $0.output : 0 })
        XCTAssertEqual(rows.map(\.usageSource), ["reported", "reported", "missing", "reported", "reported"])
        XCTAssertEqual(rows.map(\.provider), ["openai", "openai", "openai", "anthropic", "gemini"])
        XCTAssertEqual(rows.map(\.stream), [false, true, true, true, true])
        XCTAssertTrue(
            rows.allSatisfy {
                $0.app == "test-app" && $0.status == 200 && $0.outcome == "completed" && $0.tenant.count == 16
                    && $0.captureComplete
            })
        XCTAssertEqual(Set(rows.map(\.tenant)).count, 3, "one tenant per credential")

        // The JSONL log has the same exchanges, in seed 003's shape.
        let lines = try String(contentsOfFile: collector.jsonlPath, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        XCTAssertEqual(lines.count, 5)
        for (line, row) in zip(lines, rows) {
            let metadata = try XCTUnwrap(line["metadata"] as? [String: Any])
            XCTAssertEqual(line["tenant"] as? String, row.tenant)
            XCTAssertEqual(line["status_code"] as? Int, 200)
            XCTAssertEqual(line["method"] as? String, "POST")
            XCTAssertEqual(metadata["prompt_tokens"] as? Int, row.inputTokens)
            XCTAssertEqual(metadata["completion_tokens"] as? Int, row.outputTokens)
            XCTAssertEqual(metadata["total_tokens"] as? Int, row.totalTokens)
            XCTAssertEqual(metadata["model"] as? String, row.model)
            XCTAssertNotNil(line["timestamp"] as? String)
            XCTAssertNotNil(line["duration_ms"] as? Double)
        }

        let usage = try XCTUnwrap(collector.getJSON("/api/usage?group_by=model&since=1h") as? [[String: Any]])
        XCTAssertEqual(usage.reduce(0) { $0 + ($1["exchanges"] as? Int ?? 0) }, 5)

        // No credential anywhere the collector writes or serves, nor in either process's logs.
        XCTAssertEqual(collector.stop(), 0, collector.process.stderr)
        proxy.stop()
        var artefacts: [(String, Data)] = [
            ("metrics", Data(metricsBody.utf8)), ("collector log", Data(collector.process.stderr.utf8)),
            ("sidecar log", Data(proxy.sidecar.stderr.utf8)),
        ]
        for file in try FileManager.default.subpathsOfDirectory(atPath: collector.folder.path) {
            let path = collector.folder.appendingPathComponent(file).path
            if let data = FileManager.default.contents(atPath: path) { artefacts.append((file, data)) }
        }
        for (name, data) in artefacts {
            for secret in secrets {
                XCTAssertNil(data.range(of: Data(secret.utf8)), "\(secret) found in \(name)")
            }
        }
    }

    func testTheCollectorAccountsForWhatASidecarSentWhileItWasDown() throws {
        let collector = try CollectorHarness()
        let proxy = try ProxyHarness(
            sidecarArguments: ["--heartbeat-interval", "1", "--max-queued-records", "50"],
            collectorEndpoint: collector.analysisEndpoint)
        defer {
            proxy.stop()
            _ = collector.stop()
        }
        func send(_ count: Int) throws {
            for _ in 0..<count {
                let response = try curlWithStatus([
                    "-X", "POST", "\(proxy.baseURL)/v1/chat/completions", "-d",
                    #"{"model":"gpt-4o-mini","messages":[]}"#,
                ])
                XCTAssertEqual(response.status, 200, "every client request succeeds")
            }
        }
        try send(20)
        XCTAssertTrue(try eventually { try collector.metric("llmtap_requests_total") == 20 })
        XCTAssertEqual(collector.stop(), 0)
        let firstRun = collector.process.stderr
        let receivedFirst = try XCTUnwrap(Self.number("received", in: firstRun))

        // Down: the sidecar queues what it can and drops (and counts) the rest.
        try send(100)
        try collector.restart()
        try send(20)
        // Its heartbeats go on; wait until the last one has been counted.
        let caughtUp = try eventually {
            // Exchanges cut by the outage stay open until the exchange timeout; the new ones are counted.
            try collector.metric("llmtap_records_dropped_by_sidecar_total") > 0
                && collector.metric("llmtap_requests_total") >= 15
        }
        let records = try collector.metrics().filter {
            $0.key.contains("records") || $0.key.contains("requests_total") || $0.key.contains("anomal")
        }
        XCTAssertTrue(caughtUp, "\(records)\n\(collector.process.stderr.suffix(3000))")
        Thread.sleep(forTimeInterval: 2.5)
        proxy.stop()
        XCTAssertTrue(eventually { proxy.sidecar.stderr.contains("stopped") || !proxy.sidecar.process.isRunning })
        Thread.sleep(forTimeInterval: 0.5)
        let metrics = try collector.metrics()
        let received = try collector.metric("llmtap_records_received_total")
        let lost = try collector.metric("llmtap_records_lost_total")
        let dropped = try collector.metric("llmtap_records_dropped_by_sidecar_total")
        // Every sequence number the sidecar used is accounted for: received by one run or the
        // other, dropped by the sidecar, or lost in between; heartbeats are records too.
        let published = try XCTUnwrap(Self.number("published", in: proxy.sidecar.stderr), proxy.sidecar.stderr)
        let droppedBySidecar = try XCTUnwrap(Self.number("dropped", in: proxy.sidecar.stderr))
        let lastSeq = published + droppedBySidecar
        XCTAssertEqual(Int(dropped), droppedBySidecar, "the heartbeats reported every drop")
        XCTAssertGreaterThan(dropped, 0, "records were dropped while the collector was down")
        XCTAssertEqual(
            Int(received) + receivedFirst + Int(lost) + Int(dropped), lastSeq,
            "\(metrics.filter { $0.key.contains("records") })")
    }

    private static func number(_ key: String, in log: String) -> Int? {
        guard let range = log.range(of: "\(key)=", options: .backwards) else { return nil }
        return Int(log[range.upperBound...].prefix { $0.isNumber })
    }
}
