import Foundation

/// Reads an OpenAI Realtime session from its WebSocket messages (each a JSON event): the model
/// from `session.created` and `session.updated`, each `response.done`'s usage (summed, and kept
/// per response), and the `error` events. Pure: the assembler feeds it the messages in order.
///
/// Usage is normalised as `TokenUsage` wants it, disjoint: `input_tokens` counts text and audio,
/// cached ones included, so fresh text is `text_tokens` less the cached text, and so on. Without
/// `cached_tokens_details`, cached tokens are taken as text (what older models reported).
struct RealtimeSession {
    private(set) var model = ""
    private(set) var usage = TokenUsage()
    private(set) var responses: [RealtimeResponseUsage] = []
    private(set) var errors: [RealtimeError] = []
    /// Why some message could not be read, the first one.
    private(set) var parseError = ""
    private var sawUsage = false

    /// A session keeps at most this many responses and errors in its row; the sums count them all.
    static let maxKept = 1000

    var usageSource: UsageSource { sawUsage ? .reported : .missing }

    private static let read: Set<String> = ["session.created", "session.updated", "response.done", "error"]

    /// A message from the upstream: `data` its captured bytes, `size` its whole size.
    mutating func upstreamMessage(_ data: [UInt8], size: UInt64, opcode: UInt32) {
        guard opcode == 1, !data.isEmpty else { return }
        guard UInt64(data.count) == size else {
            if RealtimeEventTypes.typeValue(in: data) == "response.done" {
                note("a response.done event was cut at the capture cap: its usage is lost")
            }
            return
        }
        // Most events are deltas (audio among them, large): only those that say something are parsed.
        guard let type = RealtimeEventTypes.typeValue(in: data), Self.read.contains(type) else { return }
        let event: Event
        do {
            event = try JSONDecoder().decode(Event.self, from: Data(data))
        } catch {
            return note("a Realtime event is not valid JSON: \(ResponseBodyReader.describe(error))")
        }
        switch event.type {
        case "session.created", "session.updated":
            if let model = event.session?.model, !model.isEmpty { self.model = model }
        case "response.done":
            guard let response = event.response else { return }
            let counted = response.usage.map(Self.normalise)
            if let counted {
                sawUsage = true
                usage = usage + counted
            }
            if responses.count < Self.maxKept {
                responses.append(
                    RealtimeResponseUsage(
                        id: response.id ?? "", status: response.status ?? "", usage: counted ?? TokenUsage()))
            }
        case "error":
            if errors.count < Self.maxKept {
                errors.append(
                    RealtimeError(
                        type: event.error?.type ?? "", code: event.error?.code ?? "",
                        message: String((event.error?.message ?? "").prefix(500))))
            }
        default:
            break
        }
    }

    private mutating func note(_ problem: String) {
        if parseError.isEmpty { parseError = problem }
    }

    static func normalise(_ usage: Usage) -> TokenUsage {
        let details = usage.input_token_details
        let audio = TokenUsage.count(details?.audio_tokens)
        let text = details?.text_tokens.map(TokenUsage.count) ?? max(0, TokenUsage.count(usage.input_tokens) - audio)
        let cached = TokenUsage.count(details?.cached_tokens)
        let cachedAudio = min(audio, TokenUsage.count(details?.cached_tokens_details?.audio_tokens))
        let cachedText = min(
            text, details?.cached_tokens_details?.text_tokens.map(TokenUsage.count) ?? cached - cachedAudio)
        let output = usage.output_token_details
        let outputAudio = TokenUsage.count(output?.audio_tokens)
        let outputText =
            output?.text_tokens.map(TokenUsage.count) ?? max(0, TokenUsage.count(usage.output_tokens) - outputAudio)
        return TokenUsage(
            input: text - cachedText, output: outputText, cachedInput: cachedText,
            audioInput: audio - cachedAudio, audioCachedInput: cachedAudio, audioOutput: outputAudio)
    }

    // swift-format-ignore: AlwaysUseLowerCamelCase
    struct Usage: Decodable {
        struct InputDetails: Decodable {
            struct Cached: Decodable {
                var text_tokens: Int?
                var audio_tokens: Int?
            }
            var text_tokens: Int?
            var audio_tokens: Int?
            var cached_tokens: Int?
            var cached_tokens_details: Cached?
        }
        struct OutputDetails: Decodable {
            var text_tokens: Int?
            var audio_tokens: Int?
        }
        var input_tokens: Int?
        var output_tokens: Int?
        var input_token_details: InputDetails?
        var output_token_details: OutputDetails?
    }

    private struct Event: Decodable {
        struct Session: Decodable {
            var model: String?
        }
        struct Response: Decodable {
            var id: String?
            var status: String?
            var usage: Usage?
        }
        struct ErrorBody: Decodable {
            var type: String?
            var code: String?
            var message: String?
        }
        var type: String
        var session: Session?
        var response: Response?
        var error: ErrorBody?
    }
}

/// The `"type"` of a Realtime event, read from its first bytes without parsing it.
enum RealtimeEventTypes {
    static func typeValue(in data: [UInt8]) -> String? {
        let key = Array("\"type\"".utf8)
        let head = data.prefix(256)
        guard let at = head.indices.first(where: { head[$0...].starts(with: key) }) else { return nil }
        var position = at + key.count
        while position < head.endIndex, head[position] == 0x20 || head[position] == UInt8(ascii: ":") { position += 1 }
        guard position < head.endIndex, head[position] == UInt8(ascii: "\"") else { return nil }
        guard let end = head[(position + 1)...].firstIndex(of: UInt8(ascii: "\"")) else { return nil }
        return String(decoding: head[(position + 1)..<end], as: UTF8.self)
    }
}
