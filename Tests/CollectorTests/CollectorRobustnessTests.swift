import Foundation
import GRDB
import TestSupport
import Wire
import XCTest

@testable import Collector

/// Bad input and bad days: each is counted, logged, and costs nothing else.
final class CollectorRobustnessTests: XCTestCase {
    private func request(_ id: String) -> WireRecord {
        ExchangeRecords.request(id, app: "robust")
    }

    private func chunk(_ id: String, _ index: UInt64, offset: UInt64, _ data: Data) -> WireRecord {
        ExchangeRecords.chunk(id, index: index, offset: offset, data)
    }

    private func done(_ id: String, chunks: UInt64, bytes: UInt64 = 0) -> WireRecord {
        ExchangeRecords.done(id, chunks: Int(chunks), responseBytes: bytes)
    }

    private func publisher(_ collector: CollectorHarness, sidecar: String = "robust-sidecar") throws
        -> AnalysisPublisher
    {
        try AnalysisPublisher(
            configuration: AnalysisPublisherConfiguration(endpoint: collector.analysisEndpoint, sidecarID: sidecar),
            logger: testLogger())
    }

    private func rows(_ collector: CollectorHarness) throws -> [ExchangeRecord] {
        try collector.rows()
    }

    func testEveryKindOfBadInputIsCountedAndTheCollectorCarriesOn() throws {
        let collector = try CollectorHarness()
        defer { _ = collector.stop() }

        // On the wire: garbage, a cut-off envelope, and a record of a kind this build doesn't know.
        let context = try ZMQContext()
        let push = try ZMQSocket(context: context, kind: .push)
        try push.set(.linger(milliseconds: 2_000))
        try push.connect(collector.analysisEndpoint)
        try push.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        let whole = try WireFrame.encode(SampleRecords.envelope(SampleRecords.request, seq: 1, sidecarID: "raw"))
        try push.send(Array(whole.prefix(whole.count - 9)))
        var unknownKind = Array(WireFrame.header)
        // sidecar_id, boot_id, seq, then field 16 (a record kind this build doesn't know) instead of 10...13.
        unknownKind +=
            [0x0A, 0x03] + Array("raw".utf8) + [0x12, 0x01, 0x62, 0x18, 0x01] + [0x82, 0x01, 0x02, 0x08, 0x01]
        try push.send(unknownKind)

        // In records: strays, a duplicate, bodies that can't be read, and a 50 MB one.
        let publisher = try publisher(collector)
        publisher.publish(chunk("nobody", 0, offset: 0, Data("data: {}\n\n".utf8)))
        publisher.publish(done("nobody-else", chunks: 0))
        for (id, body) in [
            ("bad-json", Data("data: {\"model\": \"gpt-4o-mini\", \"usage\": {\n\n".utf8)),
            ("not-utf8", Data([0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x3A, 0x31, 0x7D])),
            ("broken-sse", Data("data: {\"model\":\"gpt-4o-mini\"}".utf8)),
        ] {
            publisher.publish(request(id))
            publisher.publish(chunk(id, 0, offset: 0, body))
            publisher.publish(done(id, chunks: 1))
        }
        publisher.publish(done("bad-json", chunks: 1))
        publisher.publish(request("huge"))
        let megabyte = Data(repeating: UInt8(ascii: "x"), count: 1 << 20)
        for index in 0..<50 {
            let data = index == 0 ? Data("{\"pad\":\"".utf8) + megabyte : megabyte
            publisher.publish(chunk("huge", UInt64(index), offset: UInt64(index) << 20, data))
            // Let the collector keep up, as a real stream would.
            if index % 8 == 7 { Thread.sleep(forTimeInterval: 0.05) }
        }
        publisher.publish(done("huge", chunks: 50, bytes: 50 << 20 + 8))
        publisher.shutdown()

        XCTAssertTrue(try eventually { try self.rows(collector).count == 4 })
        XCTAssertEqual(try collector.metric("llmtap_decode_errors_total", ["reason": "bad_marker"]), 1)
        XCTAssertEqual(try collector.metric("llmtap_decode_errors_total", ["reason": "undecodable"]), 1)
        XCTAssertEqual(try collector.metric("llmtap_decode_errors_total", ["reason": "incomplete_envelope"]), 1)
        XCTAssertEqual(
            try collector.metric("llmtap_assembly_anomalies_total", ["kind": "chunk_for_unknown_exchange"]), 0,
            "a chunk before its request opens the exchange")
        XCTAssertEqual(
            try collector.metric("llmtap_assembly_anomalies_total", ["kind": "done_for_unknown_exchange"]), 1)
        XCTAssertEqual(try collector.metric("llmtap_assembly_anomalies_total", ["kind": "duplicate_done"]), 1)
        XCTAssertEqual(try collector.metric("llmtap_parse_errors_total"), 3)
        let byID = Dictionary(uniqueKeysWithValues: try rows(collector).map { ($0.exchangeID, $0) })
        XCTAssertTrue(
            byID["bad-json"]?.parseError.contains("not valid JSON") == true, "\(String(describing: byID["bad-json"]))")
        XCTAssertTrue(byID["not-utf8"]?.parseError.contains("not valid JSON") == true)
        XCTAssertTrue(byID["broken-sse"]?.parseError.contains("no complete event") == true)
        XCTAssertEqual(byID["huge"]?.truncated, true)
        XCTAssertEqual(byID["huge"]?.responseBytes, 50 << 20 + 8)
        XCTAssertEqual(try collector.get("/healthz").status, 200)
        let rss =
            try String(contentsOfFile: "/proc/\(collector.process.process.processIdentifier)/status", encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("VmRSS") }.flatMap {
                Int($0.split(separator: " ").dropFirst().first ?? "")
            } ?? 0
        XCTAssertLessThan(rss, 300 << 10, "the 50 MB body was not held whole (RSS \(rss) kB)")
        // Each kind is logged, without flooding.
        let log = collector.process.stderr
        for kind in ["reason=bad_marker", "kind=done_for_unknown_exchange", "kind=duplicate_done"] {
            XCTAssertTrue(log.contains(kind), kind)
        }
        XCTAssertEqual(collector.stop(), 0, log)
    }

    func testALockedDatabaseHoldsRowsBackButNotIngestNorMetrics() throws {
        let collector = try CollectorHarness()
        defer { _ = collector.stop() }
        let publisher = try publisher(collector)
        publisher.publish(request("before"))
        publisher.publish(done("before", chunks: 0))
        XCTAssertTrue(try eventually { try self.rows(collector).count == 1 })

        // Another process takes the database's write lock and keeps it.
        let locker = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/python3"),
            arguments: [
                "-c",
                """
                import sqlite3, sys, time
                db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
                db.execute("BEGIN EXCLUSIVE")
                print("locked", flush=True)
                time.sleep(float(sys.argv[2]))
                db.execute("ROLLBACK")
                """, collector.databasePath, "12",
            ])
        XCTAssertTrue(eventually { locker.stdout.contains("locked") }, locker.stderr)
        for index in 0..<10 {
            publisher.publish(request("during-\(index)"))
            publisher.publish(done("during-\(index)", chunks: 0))
        }
        XCTAssertTrue(try eventually(timeout: .seconds(15)) { try collector.get("/readyz").status == 503 })
        XCTAssertTrue(try collector.get("/readyz").body.contains("database"))
        XCTAssertEqual(try collector.metric("llmtap_requests_total"), 11, "ingest and metrics go on")
        XCTAssertGreaterThan(try collector.metric("llmtap_storage_write_failures"), 0)
        XCTAssertEqual(try collector.metric("llmtap_storage_queue_depth"), 10)

        // The lock goes: the rows that waited are written.
        XCTAssertEqual(locker.waitForExit(timeout: .seconds(20)), 0, locker.stderr)
        XCTAssertTrue(try eventually(timeout: .seconds(20)) { try self.rows(collector).count == 11 })
        XCTAssertTrue(try eventually { try collector.get("/readyz").status == 200 })
        publisher.shutdown()
    }

    func testAKilledCollectorKeepsEveryCommittedRow() throws {
        let collector = try CollectorHarness()
        let publisher = try publisher(collector)
        for index in 0..<200 {
            publisher.publish(request("ex-\(index)"))
            publisher.publish(
                chunk(
                    "ex-\(index)", 0, offset: 0,
                    Data(
                        #"data: {"model":"gpt-4o-mini","usage":{"prompt_tokens":3,"completion_tokens":4}}"#.utf8
                            + Data("\n\n".utf8))))
            publisher.publish(done("ex-\(index)", chunks: 1))
        }
        publisher.shutdown()
        XCTAssertTrue(try eventually { try collector.metric("llmtap_storage_rows_written") == 200 })
        _ = collector.stop(SIGKILL)
        XCTAssertEqual(collector.process.process.terminationReason, .uncaughtSignal)

        try collector.restart()
        defer { _ = collector.stop() }
        let stored = try rows(collector)
        XCTAssertEqual(stored.count, 200)
        XCTAssertEqual(stored.reduce(0) { $0 + $1.totalTokens }, 200 * 7)
        let check = try DatabaseQueue(path: collector.databasePath).read { db in
            try String.fetchOne(db, sql: "PRAGMA integrity_check")
        }
        XCTAssertEqual(check, "ok")
    }
}

final class CollectorStorageOptionTests: XCTestCase {
    func testBodiesAreStoredOnlyWhenAskedAndCappedAndOldRowsExpire() throws {
        // A database that already holds a row from three days ago.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-retention-\(UUID().uuidString)")
        let path = folder.appendingPathComponent("data/llmtap.sqlite").path
        let database = try AppDatabase.open(path: path)
        var old = ExchangeRecord(
            AssembledExchange(
                sidecarID: "s", bootID: "b", exchangeID: "old", request: nil, done: nil, parsed: ParsedExchange(),
                outcome: "incomplete",
                captureComplete: false, truncated: false, responseBytesSeen: 0, firstChunkUnixNanos: 0,
                requestBody: nil, responseBody: nil),
            prices: try PriceTable.shipped()
        )
        old.startedAtMs = Int64(Date().timeIntervalSince1970 * 1000) - 3 * 86_400_000
        try database.insert([old])

        let collector = try RunningProcess(
            product: "llmtap-collector",
            arguments: [
                "--listen-analysis", "tcp://127.0.0.1:\(try freeTCPPort())", "--listen-policy", "tcp://127.0.0.1:*",
                "--http", "127.0.0.1:\(try freeTCPPort())", "--db", path,
                "--store-bodies", "--max-stored-body-bytes", "16", "--retention-days", "1",
            ])
        defer {
            collector.signal(SIGTERM)
            _ = collector.waitForExit()
        }
        XCTAssertTrue(eventually { collector.stderr.contains("llmtap-collector started") }, collector.stderr)
        let endpoint = try XCTUnwrap(
            collector.stderr.range(of: "analysis=").map {
                String(collector.stderr[$0.upperBound...].prefix { $0 != " " })
            })
        let publisher = try AnalysisPublisher(
            configuration: AnalysisPublisherConfiguration(endpoint: endpoint, sidecarID: "s"), logger: testLogger())
        var request = WireRequest()
        request.exchangeID = "new"
        request.body = Data(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a long prompt"}]}"#.utf8)
        request.startUnixNanos = WallClock.nowUnixNanos()
        var chunk = WireStreamChunk()
        chunk.exchangeID = "new"
        chunk.data = Data(#"{"model":"gpt-4o-mini","usage":{"prompt_tokens":1,"completion_tokens":2}}"#.utf8)
        var done = WireResponseDone()
        done.exchangeID = "new"
        done.responseChunks = 1
        publisher.publish(.request(request))
        publisher.publish(.streamChunk(chunk))
        publisher.publish(.responseDone(done))
        publisher.shutdown()

        XCTAssertTrue(
            try eventually {
                try database.writer.read { db in try ExchangeRecord.fetchAll(db) }.map(\.exchangeID) == ["new"]
            },
            "the three-day-old row is deleted, the new one kept")
        let row = try XCTUnwrap(try database.writer.read { db in try ExchangeRecord.fetchOne(db) })
        XCTAssertEqual(row.requestBody, Data(request.body.prefix(16)))
        XCTAssertEqual(row.responseBody, Data(chunk.data.prefix(16)))
        XCTAssertEqual(row.totalTokens, 3)
    }

    func testModelLabelsPastTheLimitFoldIntoOther() {
        let bounds = LabelBounds(limit: 2)
        XCTAssertEqual(["a", "b", "c", "a", "", "d"].map(bounds.label), ["a", "b", "other", "a", "other", "other"])
    }
}
