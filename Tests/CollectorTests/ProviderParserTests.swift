import Foundation
import TestSupport
import XCTest

@testable import Collector

final class SSEDecoderTests: XCTestCase {
    private func decode(_ pieces: [[UInt8]]) -> [SSEEvent] {
        var decoder = SSEDecoder()
        var events: [SSEEvent] = []
        for piece in pieces { decoder.feed(piece) { events.append($0) } }
        decoder.finish()
        return events
    }

    func testLineEndsCommentsMultiLineDataAndTheLastUnclosedEvent() {
        let stream =
            "\u{FEFF}: a comment\r\nevent: first\r\ndata: one\r\ndata:two\r\n\r\ndata: three\rid: 7\r\rdata: four\n\nretry: 10\n\ndata: unclosed"
        let expected = [
            SSEEvent(type: "first", data: Array("one\ntwo".utf8)),
            SSEEvent(type: "message", data: Array("three".utf8)),
            SSEEvent(type: "message", data: Array("four".utf8)),
        ]
        let bytes = Array(stream.utf8)
        XCTAssertEqual(decode([bytes]), expected)
        for cut in 0...bytes.count {
            XCTAssertEqual(decode([Array(bytes[..<cut]), Array(bytes[cut...])]), expected, "cut at \(cut)")
        }
        XCTAssertEqual(decode(bytes.map { [$0] }), expected, "byte by byte")
    }

    func testUTF8SplitAcrossPiecesComesOutWhole() {
        let bytes = Array("data: héllo ✓ 🙂\n\n".utf8)
        for cut in 0...bytes.count {
            XCTAssertEqual(
                decode([Array(bytes[..<cut]), Array(bytes[cut...])]).map(\.dataString), ["héllo ✓ 🙂"], "cut at \(cut)")
        }
    }

    func testAHoleDropsTheHalfEventAndResynchronisesAtTheNextBlankLine() {
        var decoder = SSEDecoder()
        var events: [String] = []
        decoder.feed(Array("data: kept\n\ndata: cut sho".utf8)) { events.append($0.dataString) }
        decoder.skipToNextEvent()
        decoder.feed(Array("rt half\n\ndata: after\n\n".utf8)) { events.append($0.dataString) }
        XCTAssertEqual(events, ["kept", "after"])
    }

    func testAnEndlessLineIsCappedAndCounted() {
        var decoder = SSEDecoder(maxLineBytes: 16)
        var events: [SSEEvent] = []
        decoder.feed(Array(("data: " + String(repeating: "x", count: 100) + "\n\n").utf8)) { events.append($0) }
        XCTAssertEqual(decoder.oversizeLines, 1)
        XCTAssertEqual(events.first?.data.count, 10)
    }
}

final class ProviderParserTests: XCTestCase {
    private func fixture(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: repositoryRoot.appendingPathComponent("Tests/CollectorTests/Fixtures/\(name)")))
    }

    /// Parses a response body fed in two pieces cut at `cut`.
    private func parse(host: String, path: String, request: String, response: [UInt8], cut: Int? = nil)
        -> ParsedExchange
    {
        var parser = ExchangeParser(host: host, path: path)
        parser.requestBody(Array(request.utf8), truncated: false)
        if let cut {
            parser.responseBody(response[..<cut], afterHole: false)
            parser.responseBody(response[cut...], afterHole: false)
        } else {
            parser.responseBody(response, afterHole: false)
        }
        return parser.finish()
    }

    private func usage(input: Int = 0, output: Int = 0, cached: Int = 0, creation: Int = 0, reasoning: Int = 0)
        -> TokenUsage
    {
        TokenUsage(input: input, output: output, cachedInput: cached, cacheCreation: creation, reasoning: reasoning)
    }

    func testTheSharedFixturesAtEveryChunkBoundary() throws {
        let cases: [(String, String, String, String, TokenUsage?, String, Bool)] = [
            (
                "openai-chat.json", "api.openai.com", "/v1/chat/completions", #"{"model":"gpt-4o-mini","messages":[]}"#,
                usage(input: 9, output: 12), "gpt-4o-mini-2024-07-18", false
            ),
            (
                "openai-chat-stream-usage.sse", "api.openai.com", "/v1/chat/completions",
                #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}"#,
                usage(input: 9, output: 12), "gpt-4o-mini-2024-07-18", true
            ),
            (
                "openai-chat-stream-nousage.sse", "api.openai.com", "/v1/chat/completions",
                #"{"model":"gpt-4o-mini","stream":true}"#,
                nil, "gpt-4o-mini-2024-07-18", true
            ),
            (
                "anthropic-messages-stream.sse", "api.anthropic.com", "/v1/messages",
                #"{"model":"claude-sonnet-4-20250514","stream":true}"#,
                usage(input: 25, output: 15, cached: 10), "claude-sonnet-4-20250514", true
            ),
            (
                "gemini-stream.sse", "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", "{}",
                usage(input: 8, output: 9), "gemini-2.0-flash", true
            ),
        ]
        for (file, host, path, request, expected, served, stream) in cases {
            let body = try fixture(file)
            for cut in 0...body.count {
                let parsed = parse(host: host, path: path, request: request, response: body, cut: cut)
                XCTAssertEqual(parsed.usage, expected ?? TokenUsage(), "\(file) cut at \(cut)")
                XCTAssertEqual(parsed.usageSource, expected == nil ? .missing : .reported, "\(file) cut at \(cut)")
                XCTAssertEqual(parsed.modelServed, served, "\(file) cut at \(cut)")
                XCTAssertEqual(parsed.stream, stream, file)
                XCTAssertEqual(parsed.parseError, "", "\(file) cut at \(cut)")
                if cut > 0 { continue }
                XCTAssertFalse(parsed.modelRequested.isEmpty, file)
            }
        }
    }

    func testTheOtherEndpointsAndTheirUsageShapes() {
        // OpenAI chat with cached and reasoning tokens: cached ones are part of prompt_tokens.
        var parsed = parse(
            host: "api.openai.com", path: "/v1/chat/completions", request: #"{"model":"o3-mini"}"#,
            response: Array(
                #"""
                {"model":"o3-mini-2025-01-31","usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,
                 "prompt_tokens_details":{"cached_tokens":1920},"completion_tokens_details":{"reasoning_tokens":256}}}
                """#.utf8))
        XCTAssertEqual(parsed.usage, usage(input: 86, output: 300, cached: 1920, reasoning: 256))
        XCTAssertEqual(parsed.usage.total, 2306)

        parsed = parse(
            host: "api.openai.com", path: "/v1/embeddings", request: #"{"model":"text-embedding-3-small","input":"x"}"#,
            response: Array(
                #"{"object":"list","data":[],"model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#
                    .utf8))
        XCTAssertEqual([parsed.endpoint.rawValue, parsed.modelServed], ["embeddings", "text-embedding-3-small"])
        XCTAssertEqual(parsed.usage, usage(input: 5))

        parsed = parse(
            host: "api.openai.com", path: "/v1/completions", request: #"{"model":"gpt-3.5-turbo-instruct"}"#,
            response: Array(
                #"{"model":"gpt-3.5-turbo-instruct","usage":{"prompt_tokens":4,"completion_tokens":7}}"#.utf8))
        XCTAssertEqual([parsed.endpoint.rawValue, parsed.modelRequested], ["completions", "gpt-3.5-turbo-instruct"])
        XCTAssertEqual(parsed.usage, usage(input: 4, output: 7))

        // Responses API, JSON and stream.
        let responseJSON =
            #"{"id":"resp_1","object":"response","model":"gpt-4.1-2025-04-14","output":[],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":4},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#
        parsed = parse(
            host: "api.openai.com", path: "/v1/responses", request: #"{"model":"gpt-4.1"}"#,
            response: Array(responseJSON.utf8))
        XCTAssertEqual(parsed.usage, usage(input: 32, output: 87, cached: 4))
        let responseStream = """
            event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1","model":"gpt-4.1-2025-04-14","usage":null}}\n\n\
            event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n\
            event: response.completed\ndata: {"type":"response.completed","response":{"id":"resp_1","model":"gpt-4.1-2025-04-14","usage":{"input_tokens":36,"output_tokens":87,"total_tokens":123}}}\n\n
            """
        parsed = parse(
            host: "api.openai.com", path: "/v1/responses", request: #"{"model":"gpt-4.1","stream":true}"#,
            response: Array(responseStream.utf8))
        XCTAssertEqual(parsed.usage, usage(input: 36, output: 87))
        XCTAssertEqual(parsed.modelServed, "gpt-4.1-2025-04-14")
        XCTAssertTrue(parsed.stream)

        // Azure: the deployment stands for the model when the body names none.
        parsed = parse(
            host: "x.openai.azure.com", path: "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
            request: #"{"messages":[]}"#,
            response: Array(#"{"model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1,"completion_tokens":2}}"#.utf8))
        XCTAssertEqual(
            [parsed.provider.rawValue, parsed.modelRequested, parsed.modelServed],
            ["openai", "prod-gpt4o", "gpt-4o-2024-08-06"])

        // Anthropic JSON with cache creation.
        parsed = parse(
            host: "api.anthropic.com", path: "/v1/messages", request: #"{"model":"claude-3-5-haiku-latest"}"#,
            response: Array(
                #"""
                {"id":"msg_1","type":"message","model":"claude-3-5-haiku-20241022","usage":{"input_tokens":12,"cache_creation_input_tokens":2048,"cache_read_input_tokens":0,"output_tokens":40}}
                """#.utf8))
        XCTAssertEqual(parsed.usage, usage(input: 12, output: 40, creation: 2048))

        // Gemini JSON with cached content and thoughts.
        parsed = parse(
            host: "generativelanguage.googleapis.com", path: "/v1beta/models/gemini-2.5-flash:generateContent",
            request: "{}",
            response: Array(
                #"""
                {"candidates":[],"usageMetadata":{"promptTokenCount":100,"cachedContentTokenCount":60,"candidatesTokenCount":20,"thoughtsTokenCount":30,"totalTokenCount":150},"modelVersion":"gemini-2.5-flash"}
                """#.utf8))
        XCTAssertEqual(parsed.usage, usage(input: 40, output: 50, cached: 60, reasoning: 30))
        XCTAssertEqual([parsed.modelRequested, parsed.endpoint.rawValue], ["gemini-2.5-flash", "generateContent"])
        XCTAssertFalse(parsed.stream)

        // Gemini streamGenerateContent without alt=sse: a JSON array.
        parsed = parse(
            host: "generativelanguage.googleapis.com", path: "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            request: "{}",
            response: Array(
                #"""
                [{"usageMetadata":{"promptTokenCount":8},"modelVersion":"gemini-2.0-flash"},{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":9},"modelVersion":"gemini-2.0-flash"}]
                """#.utf8))
        XCTAssertEqual(parsed.usage, usage(input: 8, output: 9))
        XCTAssertTrue(parsed.stream)
    }

    func testErrorBodiesGiveTheProvidersErrorType() {
        let cases: [(String, String, String, String)] = [
            (
                "api.openai.com", "/v1/chat/completions",
                #"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
                "requests"
            ),
            (
                "api.openai.com", "/v1/chat/completions",
                #"{"error":{"message":"bad key","type":null,"code":"invalid_api_key"}}"#, "invalid_api_key"
            ),
            (
                "api.anthropic.com", "/v1/messages",
                #"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#, "overloaded_error"
            ),
            (
                "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent",
                #"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#,
                "RESOURCE_EXHAUSTED"
            ),
            (
                "api.anthropic.com", "/v1/messages",
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
                "overloaded_error"
            ),
        ]
        for (host, path, body, type) in cases {
            let parsed = parse(host: host, path: path, request: "{}", response: Array(body.utf8))
            XCTAssertEqual(parsed.errorType, type, body)
            XCTAssertEqual(parsed.parseError, "", body)
        }
    }

    func testBadBodiesAreRecordedAsParseErrorsNeverThrown() {
        let cases: [(String, [UInt8], String)] = [
            ("invalid JSON", Array(#"{"model": "gpt-4o", "usage": {"prompt_tokens": 1,"#.utf8), "not valid JSON"),
            ("non-UTF-8 bytes", [0x7B, 0x22, 0x6D, 0xFF, 0xFE, 0x22, 0x3A, 0x31, 0x7D], "not valid JSON"),
            ("a broken stream event", Array("data: {\"model\":\"gpt-4o\",\"choices\":[\n\n".utf8), "not valid JSON"),
            ("a stream with no complete event", Array("data: {\"model\":\"gpt-4o\"}".utf8), "no complete event"),
        ]
        for (what, body, message) in cases {
            let parsed = parse(host: "api.openai.com", path: "/v1/chat/completions", request: "{}", response: body)
            XCTAssertTrue(parsed.parseError.contains(message), "\(what): \(parsed.parseError)")
            XCTAssertEqual(parsed.usageSource, .missing, what)
        }
        var parser = ExchangeParser(host: "api.openai.com", path: "/v1/chat/completions")
        parser.requestBody(Array("{not json".utf8), truncated: false)
        XCTAssertTrue(parser.finish().parseError.contains("request body"))
    }

    func testACutCaptureStillYieldsTheUsageFromItsTail() throws {
        // A stream whose middle the sidecar did not capture: usage is in the tail.
        let stream = try fixture("openai-chat-stream-usage.sse")
        var parser = ExchangeParser(host: "api.openai.com", path: "/v1/chat/completions")
        parser.requestBody(
            Array(#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"#.utf8), truncated: true)
        parser.responseBody(stream[..<400], afterHole: false)
        parser.responseBody(stream[(stream.count - 700)...], afterHole: true)
        var parsed = parser.finish()
        XCTAssertEqual(parsed.usage, usage(input: 9, output: 12))
        XCTAssertEqual(parsed.modelRequested, "gpt-4o-mini")
        XCTAssertTrue(parsed.stream)

        // A JSON body cut the same way.
        let json = try fixture("openai-chat.json")
        parser = ExchangeParser(host: "api.openai.com", path: "/v1/chat/completions")
        parser.responseBody(json[..<200], afterHole: false)
        parser.responseBody(json[(json.count - 400)...], afterHole: true)
        parsed = parser.finish()
        XCTAssertEqual(parsed.usage, usage(input: 9, output: 12))
        XCTAssertEqual(parsed.modelServed, "gpt-4o-mini-2024-07-18")
    }

    func testRoutes() {
        let cases: [(String, String, Provider, Endpoint, String)] = [
            ("api.openai.com", "/v1/chat/completions", .openai, .chatCompletions, ""),
            ("localhost:8000", "/v1/chat/completions?x=1", .openai, .chatCompletions, ""),
            ("api.openai.com", "/v1/threads/t_1/messages", .openai, .other, ""),
            ("api.anthropic.com", "/v1/messages", .anthropic, .messages, ""),
            (
                "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent", .gemini,
                .generateContent, "gemini-2.0-flash"
            ),
            ("api.openai.com", "/v1/models", .openai, .other, ""),
            ("example.com", "/healthz", .unknown, .other, ""),
        ]
        for (host, path, provider, endpoint, model) in cases {
            XCTAssertEqual(
                ProviderRoute.detect(host: host, path: path),
                ProviderRoute(provider: provider, endpoint: endpoint, modelInPath: model), path)
        }
    }
}
