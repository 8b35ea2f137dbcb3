/// Token counts as every provider's are normalised: the four kinds of token are disjoint, so they
/// add up to `total` and each can be priced on its own.
///
/// - `input`: prompt tokens read fresh (OpenAI's prompt tokens less cached ones; Anthropic's
///   `input_tokens`; Gemini's prompt count less cached content).
/// - `cachedInput`: prompt tokens read from the provider's cache.
/// - `cacheCreation`: prompt tokens written to the cache (Anthropic).
/// - `output`: generated tokens, reasoning included (Gemini's thoughts are added to its candidates).
/// - `reasoning`: the part of `output` spent on reasoning; not added again to `total`.
/// - `audioInput`, `audioCachedInput`, `audioOutput`: the Realtime API's audio tokens, priced
///   apart from text; the text counts above then hold only text.
struct TokenUsage: Equatable, Sendable {
    var input = 0
    var output = 0
    var cachedInput = 0
    var cacheCreation = 0
    var reasoning = 0
    var audioInput = 0
    var audioCachedInput = 0
    var audioOutput = 0

    var total: Int { input + cachedInput + cacheCreation + output + audioInput + audioCachedInput + audioOutput }

    /// Both summed, each count held to `maximumCount`.
    static func + (lhs: TokenUsage, rhs: TokenUsage) -> TokenUsage {
        func add(_ a: Int, _ b: Int) -> Int { min(a + b, maximumCount) }
        return TokenUsage(
            input: add(lhs.input, rhs.input), output: add(lhs.output, rhs.output),
            cachedInput: add(lhs.cachedInput, rhs.cachedInput),
            cacheCreation: add(lhs.cacheCreation, rhs.cacheCreation),
            reasoning: add(lhs.reasoning, rhs.reasoning), audioInput: add(lhs.audioInput, rhs.audioInput),
            audioCachedInput: add(lhs.audioCachedInput, rhs.audioCachedInput),
            audioOutput: add(lhs.audioOutput, rhs.audioOutput))
    }

    /// The most one count may be: far above any real exchange, and small enough that sums of
    /// them never overflow. A count from a response is untrusted input: a negative one would lower
    /// a project's spend, and a huge one would overflow the sums (and trap).
    static let maximumCount = 1 << 40

    /// A reported count held to 0...maximumCount; absent is 0.
    static func count(_ value: Int?) -> Int {
        min(max(value ?? 0, 0), maximumCount)
    }

    static func isPlausible(_ value: Int?) -> Bool {
        value.map { (0...maximumCount).contains($0) } ?? true
    }
}

/// Where an exchange's token counts come from.
enum UsageSource: String, Sendable {
    /// The provider said so in the response.
    case reported
    /// The response carried no usage (a stream without `include_usage`, an error, a cut capture).
    case missing
}

/// The API an exchange spoke, known from its host and path.
enum Provider: String, Sendable, CaseIterable {
    case openai
    case anthropic
    case gemini
    case unknown
}

enum Endpoint: String, Sendable {
    case chatCompletions = "chat.completions"
    case completions
    case embeddings
    case responses
    case messages
    case generateContent
    case streamGenerateContent
    /// OpenAI's Realtime API: a WebSocket session at /v1/realtime.
    case realtime
    case other
}

/// What the collector learns of one exchange from its request and response bodies.
struct ParsedExchange: Equatable, Sendable {
    var provider = Provider.unknown
    var endpoint = Endpoint.other
    var modelRequested = ""
    var modelServed = ""
    var stream = false
    var usage = TokenUsage()
    var usageSource = UsageSource.missing
    /// The provider's error type, for 4xx and 5xx answers ("rate_limit_error", "RESOURCE_EXHAUSTED").
    var errorType = ""
    /// Why a body could not be read (invalid JSON, a broken stream), empty when it could.
    var parseError = ""
    /// A Realtime session's responses, each with its own usage (`usage` is their sum).
    var realtimeResponses: [RealtimeResponseUsage] = []
    /// A Realtime session's `error` events.
    var realtimeErrors: [RealtimeError] = []
}

/// One `response.done` of a Realtime session.
struct RealtimeResponseUsage: Codable, Equatable, Sendable {
    var id: String
    var status: String
    var usage: TokenUsage
}

/// One `error` event of a Realtime session.
struct RealtimeError: Codable, Equatable, Sendable {
    var type: String
    var code: String
    var message: String
}

extension TokenUsage: Codable {
    // swift-format-ignore: AlwaysUseLowerCamelCase
    enum CodingKeys: String, CodingKey {
        case input = "input_tokens"
        case output = "output_tokens"
        case cachedInput = "cached_input_tokens"
        case cacheCreation = "cache_creation_tokens"
        case reasoning = "reasoning_tokens"
        case audioInput = "audio_input_tokens"
        case audioCachedInput = "audio_cached_input_tokens"
        case audioOutput = "audio_output_tokens"
    }
}
