import Foundation

/// The parts of a provider's JSON the collector reads: one shape for all three providers, since
/// their field names don't collide. Everything is optional and unknown fields are ignored, so a
/// provider adding fields never breaks parsing.
struct ProviderDocument: Decodable {
    /// OpenAI, Anthropic: the model that answered.
    var model: String?
    /// Gemini: the model that answered.
    var modelVersion: String?
    /// OpenAI (chat, completions, embeddings, responses) and Anthropic.
    var usage: UsageFields?
    /// Gemini.
    var usageMetadata: GeminiUsage?
    var error: ProviderError?
    /// Anthropic stream events and errors ("message_start", "error"); OpenAI Responses events.
    var type: String?
    /// Anthropic's `message_start` carries the message, with its model and first usage.
    var message: Nested?
    /// OpenAI Responses stream events carry the response.
    var response: Nested?

    /// A nested message or response (one level deep is all the providers use).
    struct Nested: Decodable {
        var model: String?
        var usage: UsageFields?
        var error: ProviderError?
    }
}

/// OpenAI's and Anthropic's usage objects, under all their names (the properties spell the JSON's keys).
// swift-format-ignore: AlwaysUseLowerCamelCase
struct UsageFields: Decodable {
    // OpenAI chat, completions, embeddings.
    var prompt_tokens: Int?
    var completion_tokens: Int?
    var prompt_tokens_details: Details?
    var completion_tokens_details: Details?
    // OpenAI Responses, and Anthropic.
    var input_tokens: Int?
    var output_tokens: Int?
    var input_tokens_details: Details?
    var output_tokens_details: Details?
    // Anthropic.
    var cache_creation_input_tokens: Int?
    var cache_read_input_tokens: Int?

    struct Details: Decodable {
        var cached_tokens: Int?
        var reasoning_tokens: Int?
    }
}

/// `{"error": {...}}` in each provider's form: OpenAI's `type`/`code`, Anthropic's `type`,
/// Gemini's numeric `code` and `status`.
struct ProviderError: Decodable {
    var type: String?
    var code: LooseString?
    var status: String?
    var message: String?

    /// The most specific name the provider gives the error.
    var name: String {
        status ?? type ?? code?.value ?? "error"
    }
}

/// A JSON value read as text whether it is a string or a number (error codes are either).
struct LooseString: Decodable {
    var value: String

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let string = try? container.decode(String.self) {
            value = string
        } else if let number = try? container.decode(Int.self) {
            value = String(number)
        } else {
            value = ""
        }
    }
}

/// What a request body says that the collector needs: the model and whether it asked for a stream.
struct RequestDocument: Decodable {
    var model: String?
    var stream: Bool?
}

extension UsageFields {
    /// Normalised as `TokenUsage` says, for the provider that sent it.
    func normalised(for provider: Provider, endpoint: Endpoint) -> TokenUsage {
        provider == .anthropic ? Anthropic.normalise(self) : OpenAI.normalise(self)
    }

    /// Whether a count is negative or past `TokenUsage.maximumCount`: not a count a provider
    /// reports, so the exchange is stored with a parse error (and the count held to the range).
    var hasImplausibleCount: Bool {
        [
            prompt_tokens, completion_tokens, input_tokens, output_tokens, cache_creation_input_tokens,
            cache_read_input_tokens,
            prompt_tokens_details?.cached_tokens, completion_tokens_details?.reasoning_tokens,
            input_tokens_details?.cached_tokens, output_tokens_details?.reasoning_tokens,
        ].contains { !TokenUsage.isPlausible($0) }
    }

    var isEmpty: Bool {
        prompt_tokens == nil && completion_tokens == nil && input_tokens == nil && output_tokens == nil
            && cache_creation_input_tokens == nil && cache_read_input_tokens == nil
    }
}
