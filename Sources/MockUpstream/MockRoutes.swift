import Crypto
import Foundation
import NIOHTTP1

struct MockResponse {
    enum Body {
        case whole(String)
        /// Each element leaves as its own write, with the delay between them.
        case events([String])
    }

    var status: HTTPResponseStatus
    var headers: [(String, String)]
    var body: Body

    static func json(_ value: Any, status: HTTPResponseStatus = .ok) -> MockResponse {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys])) ?? Data("{}".utf8)
        return MockResponse(
            status: status, headers: [("content-type", "application/json")],
            body: .whole(String(decoding: data, as: UTF8.self)))
    }

    static func sse(_ events: [String]) -> MockResponse {
        MockResponse(
            status: .ok, headers: [("content-type", "text/event-stream"), ("cache-control", "no-cache")],
            body: .events(events))
    }
}

/// Which provider a request is for, by its path, and what that provider would answer.
enum MockRoutes {
    static func response(method: HTTPMethod, uri: String, headers: HTTPHeaders, body: [UInt8], control: MockControl)
        -> MockResponse
    {
        let path = String(uri.split(separator: "?", maxSplits: 1).first ?? "")
        let request = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:]
        let model = request["model"] as? String
        let stream = request["stream"] as? Bool ?? false
        let inputTokens = max(1, body.count / 4)

        if path.hasSuffix("/echo") {
            return .json([
                "method": method.rawValue, "uri": uri,
                "headers": headers.map { [$0.name, $0.value] },
                "body_bytes": body.count,
                "body_sha256": SHA256.hash(data: body).map { String(format: "%02x", $0) }.joined(),
                // Large bodies are summed up, not sent back.
                "body": body.count <= 64 << 10 ? String(decoding: body, as: UTF8.self) : "",
            ])
        }
        if path.hasSuffix("/messages") {
            if let status = control.status { return AnthropicFormat.error(status: status) }
            return AnthropicFormat.messages(
                model: model ?? "claude-sonnet-4-20250514", stream: stream, inputTokens: inputTokens,
                events: control.events)
        }
        if path.contains(":streamGenerateContent") || path.contains(":generateContent") {
            if let status = control.status { return GeminiFormat.error(status: status) }
            let model =
                path.split(separator: "/").last.map { String($0.split(separator: ":").first ?? "") }
                ?? "gemini-2.0-flash"
            return GeminiFormat.generate(
                model: model, stream: path.contains(":streamGenerateContent"), inputTokens: inputTokens,
                events: control.events)
        }
        if let status = control.status { return OpenAIFormat.error(status: status) }
        if method == .GET && path.hasSuffix("/models") { return OpenAIFormat.models() }
        if path.hasSuffix("/chat/completions") {
            let includeUsage = (request["stream_options"] as? [String: Any])?["include_usage"] as? Bool ?? false
            return OpenAIFormat.chat(
                model: model ?? "gpt-4o-mini", stream: stream, includeUsage: includeUsage, inputTokens: inputTokens,
                events: control.events, padTo: control.eventBytes)
        }
        if path.hasSuffix("/completions") {
            return OpenAIFormat.completion(model: model ?? "gpt-3.5-turbo-instruct", inputTokens: inputTokens)
        }
        if path.hasSuffix("/embeddings") {
            return OpenAIFormat.embeddings(model: model ?? "text-embedding-3-small", inputTokens: inputTokens)
        }
        return .json(
            [
                "error": [
                    "message": "no mock route for \(method.rawValue) \(path)", "type": "invalid_request_error",
                    "code": "not_found",
                ]
            ], status: .notFound)
    }

    /// The streamed text, one piece per event.
    static func pieces(_ count: Int) -> [String] {
        let words = ["Hello", "!", " How", " can", " I", " help", " you", " today", "?"]
        return (0..<count).map { words[$0 % words.count] }
    }

    static func json(_ value: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

enum OpenAIFormat {
    static let created = 1_741_570_283

    static func chat(model: String, stream: Bool, includeUsage: Bool, inputTokens: Int, events: Int, padTo: Int? = nil)
        -> MockResponse
    {
        let id = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
        let served = model.contains("-20") ? model : "\(model)-2024-07-18"
        var text = MockRoutes.pieces(events)
        if let padTo { text = text.map { $0 + String(repeating: " ", count: max(0, padTo - $0.utf8.count)) } }
        let usage: [String: Any] = [
            "prompt_tokens": inputTokens, "completion_tokens": events, "total_tokens": inputTokens + events,
            "prompt_tokens_details": ["cached_tokens": 0, "audio_tokens": 0],
            "completion_tokens_details": [
                "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            ],
        ]
        guard stream else {
            return .json([
                "id": id, "object": "chat.completion", "created": created, "model": served,
                "choices": [
                    [
                        "index": 0,
                        "message": [
                            "role": "assistant", "content": text.joined(), "refusal": NSNull(), "annotations": [],
                        ],
                        "logprobs": NSNull(), "finish_reason": "stop",
                    ]
                ],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_06737a9306",
            ])
        }
        func chunk(_ delta: [String: Any], finish: Any = NSNull(), choices: Bool = true, usage: Any = NSNull())
            -> String
        {
            var object: [String: Any] = [
                "id": id, "object": "chat.completion.chunk", "created": created, "model": served,
                "service_tier": "default", "system_fingerprint": "fp_06737a9306",
                "choices": choices
                    ? [["index": 0, "delta": delta, "logprobs": NSNull(), "finish_reason": finish]] : [],
            ]
            if includeUsage { object["usage"] = usage }
            return "data: \(MockRoutes.json(object))\n\n"
        }
        var out = [chunk(["role": "assistant", "content": "", "refusal": NSNull()])]
        out += text.map { chunk(["content": $0]) }
        out.append(chunk([:], finish: "stop"))
        if includeUsage { out.append(chunk([:], choices: false, usage: usage)) }
        out.append("data: [DONE]\n\n")
        return .sse(out)
    }

    static func completion(model: String, inputTokens: Int) -> MockResponse {
        .json([
            "id": "cmpl-mock", "object": "text_completion", "created": created, "model": model,
            "choices": [["text": " Hello!", "index": 0, "logprobs": NSNull(), "finish_reason": "stop"]],
            "usage": ["prompt_tokens": inputTokens, "completion_tokens": 2, "total_tokens": inputTokens + 2],
        ])
    }

    static func embeddings(model: String, inputTokens: Int) -> MockResponse {
        .json([
            "object": "list", "model": model,
            "data": [["object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292, 0.015797347]]],
            "usage": ["prompt_tokens": inputTokens, "total_tokens": inputTokens],
        ])
    }

    static func models() -> MockResponse {
        .json([
            "object": "list",
            "data": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"].map {
                ["id": $0, "object": "model", "created": created, "owned_by": "system"]
            },
        ])
    }

    static func error(status: Int) -> MockResponse {
        let type: String
        let code: Any
        switch status {
        case 429: (type, code) = ("requests", "rate_limit_exceeded")
        case 401: (type, code) = ("invalid_request_error", "invalid_api_key")
        default: (type, code) = ("server_error", NSNull())
        }
        return .json(
            ["error": ["message": "mock error \(status)", "type": type, "param": NSNull(), "code": code]],
            status: HTTPResponseStatus(statusCode: status))
    }
}

enum AnthropicFormat {
    static func messages(model: String, stream: Bool, inputTokens: Int, events: Int) -> MockResponse {
        let id = "msg_01XFDUDYJgAACzvnptvVoYEL"
        let text = MockRoutes.pieces(events)
        guard stream else {
            return .json([
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [["type": "text", "text": text.joined()]],
                "stop_reason": "end_turn", "stop_sequence": NSNull(),
                "usage": [
                    "input_tokens": inputTokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    "output_tokens": events,
                ],
            ])
        }
        func event(_ name: String, _ data: [String: Any]) -> String {
            "event: \(name)\ndata: \(MockRoutes.json(data))\n\n"
        }
        var out = [
            event(
                "message_start",
                [
                    "type": "message_start",
                    "message": [
                        "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                        "stop_reason": NSNull(), "stop_sequence": NSNull(),
                        "usage": [
                            "input_tokens": inputTokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                            "output_tokens": 1,
                        ],
                    ],
                ]),
            event(
                "content_block_start",
                ["type": "content_block_start", "index": 0, "content_block": ["type": "text", "text": ""]]),
            event("ping", ["type": "ping"]),
        ]
        out += text.map {
            event(
                "content_block_delta",
                ["type": "content_block_delta", "index": 0, "delta": ["type": "text_delta", "text": $0]])
        }
        out.append(event("content_block_stop", ["type": "content_block_stop", "index": 0]))
        out.append(
            event(
                "message_delta",
                [
                    "type": "message_delta", "delta": ["stop_reason": "end_turn", "stop_sequence": NSNull()],
                    "usage": ["output_tokens": events],
                ]))
        out.append(event("message_stop", ["type": "message_stop"]))
        return .sse(out)
    }

    static func error(status: Int) -> MockResponse {
        let type =
            status == 429
            ? "rate_limit_error"
            : status == 401 ? "authentication_error" : status == 529 ? "overloaded_error" : "api_error"
        return .json(
            ["type": "error", "error": ["type": type, "message": "mock error \(status)"]],
            status: HTTPResponseStatus(statusCode: status))
    }
}

enum GeminiFormat {
    static func generate(model: String, stream: Bool, inputTokens: Int, events: Int) -> MockResponse {
        let text = MockRoutes.pieces(events)
        func response(_ text: String, final: Bool) -> [String: Any] {
            var candidate: [String: Any] = ["content": ["parts": [["text": text]], "role": "model"], "index": 0]
            var usage: [String: Any] = ["promptTokenCount": inputTokens, "totalTokenCount": inputTokens]
            if final {
                candidate["finishReason"] = "STOP"
                usage = [
                    "promptTokenCount": inputTokens, "candidatesTokenCount": events,
                    "totalTokenCount": inputTokens + events,
                    "promptTokensDetails": [["modality": "TEXT", "tokenCount": inputTokens]],
                    "candidatesTokensDetails": [["modality": "TEXT", "tokenCount": events]],
                ]
            }
            return [
                "candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
                "responseId": "mockResponseId",
            ]
        }
        guard stream else { return .json(response(text.joined(), final: true)) }
        // Gemini separates server-sent events with CRLF.
        return .sse(
            text.enumerated().map { index, piece in
                "data: \(MockRoutes.json(response(piece, final: index == text.count - 1)))\r\n\r\n"
            })
    }

    static func error(status: Int) -> MockResponse {
        let state =
            status == 429
            ? "RESOURCE_EXHAUSTED"
            : status == 400 ? "INVALID_ARGUMENT" : status == 403 ? "PERMISSION_DENIED" : "INTERNAL"
        return .json(
            ["error": ["code": status, "message": "mock error \(status)", "status": state]],
            status: HTTPResponseStatus(statusCode: status))
    }
}
