/// OpenAI's API, and the many that copy it (`Provider.unknown` is read the same way): chat
/// completions, completions, embeddings and the Responses API.
enum OpenAI {
    /// Whether a stream event can carry the model, the usage or an error: only those are decoded.
    /// The first event names the model; chat streams report usage in a last chunk (with
    /// `stream_options.include_usage`); the Responses API in `response.completed` (or
    /// `.incomplete`, `.failed`).
    static func selects(_ event: SSEEvent, isFirst: Bool) -> Bool {
        if event.data.elementsEqual("[DONE]".utf8) { return false }
        return isFirst
            || event.type.hasPrefix("response.completed") || event.type.hasPrefix("response.incomplete")
            || event.type.hasPrefix("response.failed") || event.type == "error"
            || JSONScan.hasObject(named: "usage", in: event.data) || JSONScan.contains(key: "error", in: event.data)
    }

    /// The Responses API names the counts input/output, the older APIs prompt/completion. Cached
    /// tokens are part of the prompt count, so they are taken out of input; reasoning tokens are
    /// part of the output.
    static func normalise(_ fields: UsageFields) -> TokenUsage {
        let count = TokenUsage.count
        var usage = TokenUsage()
        let prompt = count(fields.prompt_tokens ?? fields.input_tokens)
        let cached = count(fields.prompt_tokens_details?.cached_tokens ?? fields.input_tokens_details?.cached_tokens)
        usage.cachedInput = min(cached, prompt)
        usage.input = prompt - usage.cachedInput
        usage.output = count(fields.completion_tokens ?? fields.output_tokens)
        usage.reasoning = min(
            count(
                fields.completion_tokens_details?.reasoning_tokens ?? fields.output_tokens_details?.reasoning_tokens),
            usage.output)
        return usage
    }
}
