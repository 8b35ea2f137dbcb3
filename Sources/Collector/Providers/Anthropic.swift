/// Anthropic's Messages API (`/v1/messages`).
enum Anthropic {
    /// Whether a stream event can carry the model, the usage or an error: `message_start` (the
    /// model, and the input counts), `message_delta` (the output count, at the end) and `error`.
    static func selects(_ event: SSEEvent) -> Bool {
        switch event.type {
        case "message_start", "message_delta", "error": true
        default: false
        }
    }

    /// A stream's usage comes in two parts: `message_start`'s, then `message_delta`'s, which
    /// repeats only what changed. The later overrides the earlier field by field. (Any provider's
    /// usage objects merge this way: one exchange never reports a count twice differently.)
    static func merge(_ earlier: UsageFields, with later: UsageFields) -> UsageFields {
        var merged = earlier
        merged.prompt_tokens = later.prompt_tokens ?? earlier.prompt_tokens
        merged.completion_tokens = later.completion_tokens ?? earlier.completion_tokens
        merged.prompt_tokens_details = later.prompt_tokens_details ?? earlier.prompt_tokens_details
        merged.completion_tokens_details = later.completion_tokens_details ?? earlier.completion_tokens_details
        merged.input_tokens = later.input_tokens ?? earlier.input_tokens
        merged.output_tokens = later.output_tokens ?? earlier.output_tokens
        merged.input_tokens_details = later.input_tokens_details ?? earlier.input_tokens_details
        merged.output_tokens_details = later.output_tokens_details ?? earlier.output_tokens_details
        merged.cache_creation_input_tokens = later.cache_creation_input_tokens ?? earlier.cache_creation_input_tokens
        merged.cache_read_input_tokens = later.cache_read_input_tokens ?? earlier.cache_read_input_tokens
        return merged
    }

    /// Anthropic counts cache reads and cache writes apart from `input_tokens`.
    static func normalise(_ fields: UsageFields) -> TokenUsage {
        let count = TokenUsage.count
        var usage = TokenUsage()
        usage.input = count(fields.input_tokens)
        usage.cachedInput = count(fields.cache_read_input_tokens)
        usage.cacheCreation = count(fields.cache_creation_input_tokens)
        usage.output = count(fields.output_tokens)
        return usage
    }
}
