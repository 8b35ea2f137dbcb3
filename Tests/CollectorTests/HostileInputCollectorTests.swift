import Foundation
import GRDB
import TestSupport
import Wire
import XCTest

@testable import Collector

/// Numbers and bytes an attacker or a broken peer sends: each gets a clear refusal or is counted,
/// and none crashes the collector or costs an exchange its accounting.
final class HostileInputCollectorTests: XCTestCase {
    // MARK: Query parameters

    func testSinceRefusesWhatIsNotATimeAndNamesItself() {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        for bad in [
            "1e400", "-1e400", "nan", "NaN", "inf", "-inf", "infinity", "-1", "1e300", "9223372036854775807000",
            "1e400d", "nanh", "infm", "-5m", "1e300d", "100000000000d", "next tuesday", "0x1p2000",
        ] {
            XCTAssertThrowsError(try APIHandler.since(bad, now: now), bad) { error in
                XCTAssertTrue("\(error)".hasPrefix("since must be"), "\(bad): \(error)")
            }
        }
        XCTAssertEqual(try APIHandler.since("1700000000", now: now), 1_700_000_000_000)
        XCTAssertEqual(try APIHandler.since("1700000000123", now: now), 1_700_000_000_123)
        XCTAssertEqual(try APIHandler.since("30m", now: now), 1_800_000_000_000 - 1_800_000)
        XCTAssertEqual(try APIHandler.since("2024-01-01T00:00:00Z", now: now), 1_704_067_200_000)
        XCTAssertNil(try APIHandler.since(nil, now: now))
    }

    func testLimitAndQueryDecodingRefuseWhatTheyCantRead() throws {
        for bad in ["0", "1001", "-1", "99999999999999999999", "1e3", "nan", "ten", ""] {
            XCTAssertThrowsError(try APIHandler.limit(bad), bad) { error in
                XCTAssertTrue("\(error)".hasPrefix("limit must be"), "\(bad): \(error)")
            }
        }
        XCTAssertEqual(try APIHandler.limit("1000"), 1000)
        XCTAssertThrowsError(try APIHandler.split("/api/exchanges?app=%E9"))
        XCTAssertThrowsError(try APIHandler.split("/api/exchanges?%FF=1"))
        XCTAssertEqual(try APIHandler.split("/api/exchanges?app=a%20b+c&model=").1, ["app": "a b c", "model": ""])
    }

    func testManagementBodiesNestedTooDeepAreMeasuredWithoutRecursion() {
        XCTAssertEqual(ManagementAPI.nestingDepth(Array(#"{"a":[1,{"b":"[[[[{{{{"}]}"#.utf8)), 3)
        let deep = Array(String(repeating: "[", count: 60_000).utf8)
        XCTAssertGreaterThan(ManagementAPI.nestingDepth(deep), ManagementAPI.maxNesting)
    }

    func testTheSnapshotBudgetRefillsAtItsRateUpToItsBurst() {
        let start = ContinuousClock.now
        var budget = RateBudget(perSecond: 10, burst: 3, now: start)
        XCTAssertEqual((0..<5).map { _ in budget.take(now: start) }, [true, true, true, false, false])
        XCTAssertFalse(budget.take(now: start + .milliseconds(50)))
        XCTAssertTrue(budget.take(now: start + .milliseconds(110)))
        XCTAssertFalse(budget.take(now: start + .milliseconds(120)))
        // A long pause refills only up to the burst.
        let later = start + .seconds(60)
        XCTAssertEqual((0..<5).map { _ in budget.take(now: later) }, [true, true, true, false, false])
        // Time going backwards gives nothing.
        XCTAssertFalse(budget.take(now: start))
    }

    // MARK: Usage and assembly

    func testTokenCountsThatAreNegativeOrHugeAreHeldToTheRangeAndSaidSo() {
        func parse(_ response: String, path: String = "/v1/chat/completions") -> ParsedExchange {
            var parser = ExchangeParser(host: "api.openai.com", path: path)
            parser.responseBody(Array(response.utf8), afterHole: false)
            return parser.finish()
        }
        let negative = parse(#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":-1000000,"completion_tokens":5}}"#)
        XCTAssertEqual(negative.usage.input, 0, "a negative count must never lower a spend")
        XCTAssertEqual(negative.usage.output, 5)
        XCTAssertTrue(negative.parseError.contains("implausibly"), negative.parseError)
        let max = Int.max
        let huge = parse(
            #"{"usageMetadata":{"promptTokenCount":\#(max),"toolUsePromptTokenCount":\#(max),"candidatesTokenCount":\#(max),"thoughtsTokenCount":\#(max)}}"#,
            path: "/v1beta/models/gemini-2.0-flash:generateContent")
        XCTAssertEqual(huge.usage.input, 2 * TokenUsage.maximumCount)
        XCTAssertEqual(huge.usage.output, 2 * TokenUsage.maximumCount)
        XCTAssertTrue(huge.parseError.contains("implausibly"))
        let anthropic = parse(
            #"{"model":"claude-3-5-haiku","usage":{"input_tokens":\#(max),"output_tokens":\#(max),"cache_read_input_tokens":\#(max),"cache_creation_input_tokens":\#(max)}}"#,
            path: "/v1/messages")
        XCTAssertEqual(anthropic.usage.total, 4 * TokenUsage.maximumCount)
        let fine = parse(#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":10,"completion_tokens":5}}"#)
        XCTAssertEqual(fine.parseError, "")
    }

    /// Found by the json-scan fuzz target running slowly: every unclosed `"usage": {` was a scan to
    /// the body's end. Only the last few are tried now (usage sits at a body's end).
    func testManyUnclosedObjectsDoNotMakeTheScanQuadratic() {
        let body =
            Array(String(repeating: #""usage":{"#, count: 50_000).utf8) + Array(#""usage":{"prompt_tokens":3}"#.utf8)
        XCTAssertEqual(
            JSONScan.lastObject(named: "usage", in: body).map { Array($0) }, Array(#"{"prompt_tokens":3}"#.utf8))
        XCTAssertNil(JSONScan.lastObject(named: "usage", in: Array(body.dropLast(20))))
    }

    func testWireFieldsAtTheirLimitsNeverTrapTheAssembler() throws {
        var assembler = ExchangeAssembler()
        let id = "edge"
        _ = assembler.add(sidecarID: "s", bootID: "b", record: ExchangeRecords.request(id), nowNanos: 1)
        _ = assembler.add(
            sidecarID: "s", bootID: "b",
            record: ExchangeRecords.chunk(id, index: UInt64.max, offset: UInt64.max, Data("x".utf8)), nowNanos: 2)
        _ = assembler.add(
            sidecarID: "s", bootID: "b",
            record: ExchangeRecords.chunk(id, index: 0, offset: UInt64.max - 1, Data("abc".utf8)), nowNanos: 3)
        var done = WireResponseDone()
        done.exchangeID = id
        done.requestBytes = .max
        done.responseBytes = .max
        done.responseChunks = .max
        done.endUnixNanos = .max
        done.upstreamFirstByteUnixNanos = .min
        let outputs = assembler.add(sidecarID: "s", bootID: "b", record: .responseDone(done), nowNanos: 4)
        guard case .ended(let exchange) = outputs.first else { return XCTFail("\(outputs)") }
        let row = ExchangeRecord(exchange, prices: try PriceTable.shipped())
        XCTAssertEqual(row.requestBytes, .max)
        XCTAssertEqual(row.responseBytes, .max)
    }

    func testARecordReadWithReplacementsStillCountsAndSaysSo() {
        var assembler = ExchangeAssembler()
        _ = assembler.add(
            sidecarID: "s", bootID: "b", record: ExchangeRecords.request("r"), nowNanos: 1, textRepaired: true)
        let body = Data(#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":40,"completion_tokens":2}}"#.utf8)
        _ = assembler.add(
            sidecarID: "s", bootID: "b", record: ExchangeRecords.chunk("r", index: 0, offset: 0, body), nowNanos: 2)
        let outputs = assembler.add(
            sidecarID: "s", bootID: "b", record: ExchangeRecords.done("r", chunks: 1), nowNanos: 3)
        guard case .ended(let exchange) = outputs.first else { return XCTFail("\(outputs)") }
        XCTAssertEqual(exchange.parsed.usage.total, 42)
        XCTAssertEqual(exchange.parsed.usageSource, .reported)
        XCTAssertTrue(exchange.parsed.parseError.contains("not UTF-8"), exchange.parsed.parseError)
    }

    func testOpenExchangesAreBoundedAndTheRestCounted() {
        var limits = ExchangeAssembler.Limits()
        limits.maxOpenExchanges = 3
        var assembler = ExchangeAssembler(limits: limits)
        var anomalies: [ExchangeAssembler.Anomaly] = []
        for index in 0..<10 {
            for output in assembler.add(
                sidecarID: "s", bootID: "b", record: ExchangeRecords.chunk("x\(index)", index: 0, offset: 0, Data()),
                nowNanos: 1)
            {
                if case .anomaly(let kind, _) = output { anomalies.append(kind) }
            }
        }
        XCTAssertEqual(assembler.openExchanges, 3)
        XCTAssertEqual(anomalies, Array(repeating: .tooManyOpenExchanges, count: 7))
        // Empty chunks waiting out of order cost memory too.
        var small = ExchangeAssembler(limits: ExchangeAssembler.Limits(maxExchangeBytes: 64 << 10))
        _ = small.add(sidecarID: "s", bootID: "b", record: ExchangeRecords.request("w"), nowNanos: 1)
        for index in 1...100_000 {
            _ = small.add(
                sidecarID: "s", bootID: "b",
                record: ExchangeRecords.chunk("w", index: UInt64(index), offset: 0, Data()), nowNanos: 1)
        }
        XCTAssertLessThanOrEqual(small.heldBytes, 64 << 10)
    }

    // MARK: The real collector

    private func send(_ collector: CollectorHarness, _ frames: [[UInt8]]) throws {
        let context = try ZMQContext()
        let push = try ZMQSocket(context: context, kind: .push)
        try push.set(.linger(milliseconds: 2_000))
        try push.connect(collector.analysisEndpoint)
        for frame in frames { try push.send(frame) }
        push.close()
    }

    func testNumbersFromTheNetworkGetAnswersAndNeverStopTheCollector() throws {
        let collector = try CollectorHarness()
        defer { _ = collector.stop() }
        for query in [
            "since=1e400", "since=nan", "since=inf", "since=-inf", "since=-1", "since=99999999999999999999d",
            "limit=99999999999999999999", "limit=1e3", "app=%E9", "since=1e400&limit=nan",
        ] {
            let (status, body) = try collector.get("/api/exchanges?\(query)")
            XCTAssertEqual(status, 400, "\(query): \(body)")
            let name = query.split(separator: "=")[0]
            XCTAssertTrue(body.contains(name == "app" ? "query parameter" : String(name)), "\(query): \(body)")
        }
        XCTAssertEqual(try collector.get("/api/usage?since=1e400").status, 400)
        XCTAssertEqual(try collector.get("/api/exchanges?since=24h").status, 200)
        XCTAssertTrue(collector.process.process.isRunning)

        // Wire fields at their extremes: a sequence number past Int64, byte counts and heartbeat
        // counters at UInt64.max, a chunk offset that would overflow.
        var frames: [[UInt8]] = []
        let id = "extreme-1"
        var done = WireResponseDone()
        done.exchangeID = id
        done.status = .max
        done.requestBytes = .max
        done.responseBytes = .max
        done.responseChunks = 1
        done.outcome = .completed
        var beat = WireHeartbeat()
        beat.dropped = .max
        beat.malformedRequests = .max
        beat.published = .max
        beat.inFlight = .max
        beat.intervalMs = .max
        beat.uptimeMs = .max
        let records: [(UInt64, WireRecord)] = [
            (1, ExchangeRecords.request(id, app: "edge")),
            (2, ExchangeRecords.chunk(id, index: 0, offset: .max, Data(#"{"usage":{"prompt_tokens":1}}"#.utf8))),
            (UInt64(Int64.max) + 10, .responseDone(done)),
            (UInt64.max, .heartbeat(beat)),
        ]
        for (seq, record) in records {
            frames.append(try WireFrame.encode(SampleRecords.envelope(record, seq: seq, sidecarID: "edge-sidecar")))
        }
        try send(collector, frames)
        XCTAssertTrue(eventually { (try? collector.get("/api/exchanges?app=edge").body.contains(id)) == true })
        // Past the checkpoint interval (5 s), which stores every sequence number.
        Thread.sleep(forTimeInterval: 6)
        XCTAssertTrue(collector.process.process.isRunning, collector.process.stderr)
        let metrics = try collector.get("/metrics").body
        XCTAssertTrue(metrics.contains(#"llmtap_sidecar_malformed_requests_total{sidecar="edge-sidecar"}"#), metrics)
        let promtool = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/promtool"), arguments: ["check", "metrics"], stdinText: metrics)
        XCTAssertEqual(promtool.waitForExit(), 0, promtool.stdout + promtool.stderr)
        // It restarts from what it stored.
        XCTAssertEqual(collector.stop(), 0)
        try collector.restart()
        XCTAssertEqual(try collector.get("/healthz").status, 200)
    }

    func testTheAPICanRequireAToken() throws {
        let apiToken = "api-token-0123456789abcdef"
        let managementToken = "management-token-0123456789"
        let collector = try CollectorHarness(
            arguments: ["--api-token", apiToken], environment: ["MANAGEMENT_TOKEN": managementToken])
        defer { _ = collector.stop() }
        let url = "http://127.0.0.1:\(collector.httpPort)"
        XCTAssertEqual(try curlWithStatus([url + "/api/exchanges"]).status, 401)
        XCTAssertEqual(
            try curlWithStatus([url + "/api/usage", "-H", "Authorization: Bearer wrong-token-0123456789"]).status, 401)
        XCTAssertEqual(
            try curlWithStatus([url + "/api/exchanges", "-H", "Authorization: Bearer \(apiToken)"]).status, 200)
        XCTAssertEqual(
            try curlWithStatus([url + "/api/usage", "-H", "Authorization: bearer \(managementToken)"]).status, 200)
        for open in ["/metrics", "/healthz", "/readyz"] {
            XCTAssertEqual(try curlWithStatus([url + open]).status, 200, open)
        }
        XCTAssertFalse(collector.process.stderr.contains("/api is open"))
        XCTAssertFalse(collector.process.stderr.contains(apiToken))

        let open = try CollectorHarness()
        defer { _ = open.stop() }
        XCTAssertTrue(open.process.stderr.contains("/api is open"), open.process.stderr)
        // A token too short to be safe stops the start.
        let short = try RunningProcess(
            product: "llmtap-collector", arguments: ["--api-token", "short", "--http", "127.0.0.1:0"])
        XCTAssertNotEqual(short.waitForExit(), 0)
        XCTAssertTrue(short.stderr.contains("--api-token"), short.stderr)
    }

    /// The issue's budget bypass: a header value with obs-text (Latin-1 "José") made the records
    /// undecodable, so a 100-token budget let every request through and counted none of them.
    func testAHeaderThatIsNotUTF8CostsNoExchangeItsAccounting() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let port = try fleet.startSidecar()
        /// Requests one at a time until the budget denies one; the statuses and the day's tokens.
        func spend(project name: String, userHeader: [UInt8]) throws -> (statuses: [Int], tokens: Int) {
            let project = try fleet.createProject(name)
            let key = try fleet.createToken(project: project)
            XCTAssertEqual(
                try fleet.manage("PUT", "/manage/projects/\(project)/budget", #"{"period":"day","max_tokens":100}"#)
                    .status, 200)
            // curl takes the raw bytes from a file: a process argument can only be UTF-8.
            let headers = fleet.folder.appendingPathComponent("headers-\(name).txt")
            try
                (Data("Authorization: Bearer \(key)\r\nX-User: ".utf8) + userHeader
                + Data("\r\ncontent-type: application/json\r\n".utf8))
                .write(to: headers)
            var statuses: [Int] = []
            for _ in 0..<10 {
                let result = try curlWithStatus([
                    "http://127.0.0.1:\(port)/v1/chat/completions", "-H", "@\(headers.path)",
                    "--data-binary",
                    #"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#,
                ])
                statuses.append(result.status)
                if result.status == 429 { break }
                // Each exchange's spend reaches the collector, and a crossing's denial the sidecar, before the next.
                Thread.sleep(forTimeInterval: 0.5)
            }
            let usage = try fleet.manage("GET", "/manage/usage?project_id=\(project)")
            let tokens = ((usage.json["spend"] as? [String: Any])?["day"] as? [String: Any])?["tokens"] as? Int ?? 0
            return (statuses, tokens)
        }
        let plain = try spend(project: "plain", userHeader: Array("Jose".utf8))
        let latin1 = try spend(project: "latin-1", userHeader: Array("Jos".utf8) + [0xE9])
        XCTAssertEqual(plain.statuses.last, 429, "the budget never denied: \(plain.statuses)")
        XCTAssertEqual(
            latin1.statuses, plain.statuses, "the same requests, one header byte apart, must be cut off alike")
        XCTAssertEqual(latin1.tokens, plain.tokens)
        XCTAssertGreaterThanOrEqual(latin1.tokens, 100)
        let statuses = plain.statuses + latin1.statuses
        // Stored with the exact bytes' readable form, and counted.
        var configuration = Configuration()
        configuration.readonly = true
        let rows = try DatabaseQueue(path: fleet.databasePath, configuration: configuration).read { db in
            try ExchangeRecord.fetchAll(db)
        }
        XCTAssertEqual(
            rows.filter { $0.status == 200 && $0.totalTokens > 0 }.count, statuses.filter { $0 == 200 }.count)
    }

    /// A peer that subscribes thousands of times, and a body nested thirty thousand deep: each is
    /// bounded, counted, and costs the sidecars and the operator nothing.
    func testASubscriptionFloodAndDeepNestingAreBounded() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let project = try fleet.createProject("flood")
        let key = try fleet.createToken(project: project)
        let context = try ZMQContext()
        let flood = try ZMQSocket(context: context, kind: .sub)
        try flood.set(.linger(milliseconds: 0))
        try flood.connect(fleet.policyEndpoint)
        for index in 0..<5_000 { try flood.set(.subscribe(Array("Sflood-\(index)".utf8))) }
        let metricsURL = fleet.api + "/metrics"
        func metric(_ name: String) -> Double {
            let body = (try? curl([metricsURL]).body).map { String(decoding: $0, as: UTF8.self) } ?? ""
            return body.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap {
                Double($0.split(separator: " ").last ?? "")
            } ?? 0
        }
        XCTAssertTrue(eventually { metric("llmtap_policy_snapshots_refused_total") > 0 })
        XCTAssertLessThan(
            metric("llmtap_policy_snapshots_sent_total"), 1_000, "snapshots past the budget were built and sent")
        // A sidecar that joins now still gets its snapshot, and serves the key.
        let port = try fleet.startSidecar()
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(5), { try fleet.chat(port: port, key: key).status }, { $0 == 200 }),
            fleet.sidecarLog())
        flood.close()

        let deep = String(repeating: "[", count: 30_000) + String(repeating: "]", count: 30_000)
        let (status, json) = try fleet.manage("POST", "/manage/projects", #"{"name":"deep","x":"# + deep + "}")
        XCTAssertEqual(status, 400, "\(json)")
        XCTAssertTrue(((json["error"] as? [String: Any])?["message"] as? String ?? "").contains("nests"), "\(json)")
        XCTAssertEqual(try fleet.manage("GET", "/manage/projects").status, 200)
        XCTAssertTrue(fleet.collector?.process.isRunning == true)
    }

    func testConfigurationValuesThatCantBeReadStopTheStartByName() throws {
        for (arguments, environment, expected) in [
            ([String](), ["LLMTAP_EXCHANGE_TIMEOUT": "1e400"], "LLMTAP_EXCHANGE_TIMEOUT"),
            ([], ["LLMTAP_MAX_MODEL_LABELS": "lots"], "LLMTAP_MAX_MODEL_LABELS"),
            ([], ["LLMTAP_STORE_BODIES": "perhaps"], "LLMTAP_STORE_BODIES"),
            (["--exchange-timeout", "99999999999"], [:], "--exchange-timeout"),
            (["--max-exchange-bytes", "9223372036854775807"], [:], "--max-exchange-bytes"),
        ] as [([String], [String: String], String)] {
            let process = try RunningProcess(
                product: "llmtap-collector", arguments: arguments + ["--http", "127.0.0.1:0"], environment: environment)
            XCTAssertEqual(process.waitForExit(), 64, "\(arguments) \(environment): \(process.stderr)")
            XCTAssertTrue(process.stderr.contains(expected), "\(expected): \(process.stderr)")
        }
    }
}
