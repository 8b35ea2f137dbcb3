import Foundation
import TestSupport
import Wire
import XCTest

@testable import Collector

final class ExchangeAssemblerTests: XCTestCase {
    private let second: Int64 = 1_000_000_000

    private func request(_ id: String, body: String = #"{"model":"gpt-4o-mini","stream":true}"#) -> WireRecord {
        ExchangeRecords.request(id, app: "billing", body: body)
    }

    private func chunks(_ id: String, _ body: [UInt8], size: Int) -> [WireRecord] {
        ExchangeRecords.chunks(id, body, size: size)
    }

    private func done(_ id: String, chunks: Int) -> WireRecord {
        ExchangeRecords.done(id, chunks: chunks)
    }

    private func stream() throws -> [UInt8] {
        Array(
            try Data(
                contentsOf: repositoryRoot.appendingPathComponent(
                    "Tests/CollectorTests/Fixtures/openai-chat-stream-usage.sse")))
    }

    private func run(
        _ assembler: inout ExchangeAssembler, _ records: [WireRecord], sidecar: String = "s1", now: Int64 = 0
    ) -> [ExchangeAssembler.Output] {
        records.flatMap { assembler.add(sidecarID: sidecar, bootID: "b1", record: $0, nowNanos: now) }
    }

    private func ended(_ outputs: [ExchangeAssembler.Output]) -> [AssembledExchange] {
        outputs.compactMap { if case .ended(let exchange) = $0 { exchange } else { nil } }
    }

    private func anomalies(_ outputs: [ExchangeAssembler.Output]) -> [ExchangeAssembler.Anomaly] {
        outputs.compactMap { if case .anomaly(let anomaly, _) = $0 { anomaly } else { nil } }
    }

    func testAnExchangeIsJoinedAndReadWhateverTheOrderOfItsChunks() throws {
        let body = try stream()
        let parts = chunks("ex-1", body, size: 300)
        for order in [
            Array(parts.indices), Array(parts.indices.reversed()), parts.indices.map { ($0 * 7) % parts.count },
        ] {
            var assembler = ExchangeAssembler()
            let outputs = run(
                &assembler, [request("ex-1")] + order.map { parts[$0] } + [done("ex-1", chunks: parts.count)])
            let exchange = try XCTUnwrap(ended(outputs).first, "\(order)")
            XCTAssertEqual(exchange.parsed.usage, TokenUsage(input: 9, output: 12))
            XCTAssertEqual(exchange.parsed.modelRequested, "gpt-4o-mini")
            XCTAssertEqual(exchange.outcome, "completed")
            XCTAssertTrue(exchange.captureComplete)
            XCTAssertEqual(exchange.responseBytesSeen, UInt64(body.count))
            XCTAssertEqual(exchange.request?.app, "billing")
            XCTAssertEqual(assembler.openExchanges, 0)
            XCTAssertEqual(assembler.heldBytes, 0)
        }
    }

    func testRecordsThatFitNoExchangeAreCountedByKind() {
        var assembler = ExchangeAssembler()
        let outputs = run(
            &assembler,
            [
                done("nobody", chunks: 0),
                request("ex-1"), done("ex-1", chunks: 0), done("ex-1", chunks: 0),
                request("ex-1"),
            ] + chunks("ex-1", Array("data: late\n\n".utf8), size: 100))
        XCTAssertEqual(
            anomalies(outputs), [.doneForUnknownExchange, .duplicateDone, .duplicateRequest, .chunkForUnknownExchange])
        XCTAssertEqual(ended(outputs).count, 1)
        // The same exchange id from two sidecars is two exchanges.
        var other = ExchangeAssembler()
        let both =
            run(&other, [request("ex-1"), done("ex-1", chunks: 0)], sidecar: "a")
            + run(&other, [request("ex-1"), done("ex-1", chunks: 0)], sidecar: "b")
        XCTAssertEqual(ended(both).map(\.sidecarID), ["a", "b"])
    }

    func testAnExchangeWithoutItsDoneTimesOutAsIncomplete() throws {
        var limits = ExchangeAssembler.Limits()
        limits.exchangeTimeoutNanos = 10 * second
        var assembler = ExchangeAssembler(limits: limits)
        _ = run(&assembler, [request("ex-1")] + chunks("ex-1", try stream(), size: 500), now: 0)
        XCTAssertTrue(assembler.expire(nowNanos: 9 * second).isEmpty)
        let exchange = try XCTUnwrap(ended(assembler.expire(nowNanos: 10 * second)).first)
        XCTAssertEqual(exchange.outcome, "incomplete")
        XCTAssertEqual(exchange.parsed.usage.output, 12, "what arrived is still read")
        XCTAssertFalse(exchange.captureComplete)
        XCTAssertEqual(assembler.openExchanges, 0)
    }

    func testALostChunkLeavesAHoleAndTheRestIsStillRead() throws {
        let body = try stream()
        var parts = chunks("ex-1", body, size: 200)
        parts.remove(at: 3)
        var assembler = ExchangeAssembler()
        let exchange = try XCTUnwrap(
            ended(run(&assembler, [request("ex-1")] + parts + [done("ex-1", chunks: parts.count + 1)])).first)
        XCTAssertFalse(exchange.captureComplete)
        XCTAssertEqual(exchange.parsed.usage, TokenUsage(input: 9, output: 12))
    }

    func testALostRequestStillGivesAnExchange() throws {
        let body = try stream()
        var assembler = ExchangeAssembler()
        let exchange = try XCTUnwrap(
            ended(run(&assembler, chunks("ex-1", body, size: 400) + [done("ex-1", chunks: 10)])).first)
        XCTAssertNil(exchange.request)
        XCTAssertEqual(
            exchange.parsed.usage, TokenUsage(input: 9, output: 12),
            "an OpenAI-shaped stream is read without knowing its host")
    }

    func testA50MBBodyIsCountedButNotHeld() throws {
        var limits = ExchangeAssembler.Limits()
        limits.maxExchangeBytes = 4 << 20
        var assembler = ExchangeAssembler(limits: limits)
        var outputs = run(&assembler, [request("ex-1", body: #"{"model":"gpt-4o"}"#)])
        let piece = Data(repeating: UInt8(ascii: "a"), count: 1 << 20)
        for index in 0..<50 {
            var chunk = WireStreamChunk()
            chunk.exchangeID = "ex-1"
            chunk.index = UInt64(index)
            chunk.offset = UInt64(index) << 20
            // A JSON body: an opening brace first, so it is read as JSON.
            chunk.data = index == 0 ? Data("{\"pad\":\"".utf8) + piece : piece
            outputs += run(&assembler, [.streamChunk(chunk)])
            XCTAssertLessThanOrEqual(assembler.heldBytes, 4 << 20 + (1 << 20))
        }
        outputs += run(&assembler, [done("ex-1", chunks: 50)])
        let exchange = try XCTUnwrap(ended(outputs).first)
        XCTAssertTrue(exchange.truncated)
        XCTAssertEqual(exchange.responseBytesSeen, 50 << 20 + 8)
        XCTAssertEqual(assembler.heldBytes, 0)
    }
}
