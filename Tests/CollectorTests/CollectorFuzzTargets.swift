import Foundation
import TestSupport
import Wire
import XCTest

@testable import Collector

/// The collector's parsers as fuzz targets (`Fuzzing`): `sse`, `json-scan`, `exchange-parser`,
/// `query`. Each traps when an invariant fails, naming it.
final class CollectorFuzzTargets: XCTestCase {
    private static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
        "Fixtures")

    private static func fixture(_ name: String) -> [UInt8] {
        (try? Array(Data(contentsOf: fixtures.appendingPathComponent(name)))) ?? Array("data: {}\n\n".utf8)
    }

    private static var bodies: [[UInt8]] {
        [
            "openai-chat-stream-usage.sse", "openai-chat-stream-nousage.sse", "anthropic-messages-stream.sse",
            "gemini-stream.sse", "openai-chat.json",
        ]
        .map(fixture)
    }

    func testSSE() throws {
        try Fuzzing.run("sse", seeds: Self.bodies.map { [0x03] + $0 }) { data in
            guard let first = data.first else { return }
            let input = Array(data.dropFirst())
            func decode(_ pieces: [ArraySlice<UInt8>]) -> ([SSEEvent], Int) {
                var decoder = SSEDecoder(maxLineBytes: 256)
                var events: [SSEEvent] = []
                for piece in pieces { decoder.feed(piece) { events.append($0) } }
                return (events, decoder.oversizeLines)
            }
            let whole = decode([input[...]])
            let cut = decode(Fuzzing.reads(input, cuts: Fuzzing.cuts(first, input.count)))
            fuzzCheck(
                whole.0 == cut.0 && whole.1 == cut.1, "the SSE decoder's events depend on how the bytes are split")
            fuzzCheck(whole.0.allSatisfy { $0.data.count <= input.count }, "an SSE event holds more than the input")
        }
    }

    func testJSONScan() throws {
        try Fuzzing.run("json-scan", seeds: Self.bodies, mutations: 500) { data in
            let bytes = Array(data)
            for key in ["usage", "model", "error"] {
                _ = JSONScan.contains(key: key, in: bytes)
                _ = JSONScan.hasObject(named: key, in: bytes)
                if let object = JSONScan.lastObject(named: key, in: bytes) {
                    fuzzCheck(
                        object.first == UInt8(ascii: "{") && object.last == UInt8(ascii: "}"),
                        "lastObject gave something that is not an object")
                }
                _ = JSONScan.stringValue(of: key, in: bytes)
            }
        }
    }

    /// Whole exchanges from any bytes: the request body, then the response in pieces, for each
    /// provider's route. Usage must stay in range, whatever the numbers say.
    func testExchangeParser() throws {
        let requests = [
            #"{"model":"gpt-4o-mini","stream":true}"#, #"{"model":"claude-3-5-haiku","stream":true}"#, "{}",
        ].map { Array($0.utf8) }
        let seeds = Self.bodies.enumerated().map { index, body in
            [UInt8(index), 0x04] + requests[index % requests.count] + [0x00] + body
        }
        let routes = [
            ("api.openai.com", "/v1/chat/completions"), ("api.anthropic.com", "/v1/messages"),
            ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"),
            ("api.openai.com", "/v1/responses"), ("example.com", "/v1/embeddings"), ("example.com", "/other"),
        ]
        try Fuzzing.run("exchange-parser", seeds: seeds) { data in
            guard data.count >= 2 else { return }
            let route = routes[Int(data[0]) % routes.count]
            let rest = Array(data.dropFirst(2))
            let split = rest.firstIndex(of: 0) ?? rest.count
            var parser = ExchangeParser(host: route.0, path: route.1, maxJSONBytes: 4096)
            parser.requestBody(Array(rest[..<split]), truncated: data[1] & 0x80 != 0)
            let response = Array(rest.dropFirst(split + 1))
            for (index, piece) in Fuzzing.reads(response, cuts: Fuzzing.cuts(data[1], response.count)).enumerated() {
                parser.responseBody(piece, afterHole: index > 0 && data[1] & 0x40 != 0)
            }
            let parsed = parser.finish()
            let usage = parsed.usage
            for count in [usage.input, usage.output, usage.cachedInput, usage.cacheCreation, usage.reasoning] {
                fuzzCheck((0...2 * TokenUsage.maximumCount).contains(count), "a token count out of range: \(usage)")
            }
            fuzzCheck(usage.total >= 0, "a negative total: \(usage)")
        }
    }

    func testQuery() throws {
        let seeds = [
            "since=24h&limit=10&app=a", "since=1700000000", "since=2024-01-01T00:00:00Z&model=gpt-4o", "since=1e400",
            "app=%E9&limit=1e3", "since=-5m",
        ]
        .map { Array($0.utf8) }
        try Fuzzing.run("query", seeds: seeds) { data in
            let uri = "/api/exchanges?" + String(decoding: data, as: UTF8.self)
            guard let (_, query) = try? APIHandler.split(uri) else { return }
            if let since = try? APIHandler.since(query["since"]) {
                fuzzCheck((0...APIHandler.latestSinceMs).contains(since), "since out of range: \(since)")
            }
            if let limit = try? APIHandler.limit(query["limit"]) {
                fuzzCheck((1...1000).contains(limit), "limit out of range: \(limit)")
            }
            _ = ManagementAPI.nestingDepth(Array(data))
        }
    }
}
