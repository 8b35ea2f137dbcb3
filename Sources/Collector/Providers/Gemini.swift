/// Google's Gemini API (`generateContent`, `streamGenerateContent`, with or without `alt=sse`).
enum Gemini {
    /// Whether a stream event is decoded as it comes: the first (the model) and any with an
    /// error. Every event repeats a growing `usageMetadata`, so the last one is decoded at the
    /// stream's end for the total (`ResponseBodyReader` keeps it).
    static func selects(_ event: SSEEvent, isFirst: Bool) -> Bool {
        isFirst || JSONScan.contains(key: "error", in: event.data)
    }
}

/// Gemini's `usageMetadata`.
struct GeminiUsage: Decodable {
    var promptTokenCount: Int?
    var candidatesTokenCount: Int?
    var cachedContentTokenCount: Int?
    var thoughtsTokenCount: Int?
    var toolUsePromptTokenCount: Int?
}

extension GeminiUsage {
    var hasImplausibleCount: Bool {
        [promptTokenCount, candidatesTokenCount, cachedContentTokenCount, thoughtsTokenCount, toolUsePromptTokenCount]
            .contains { !TokenUsage.isPlausible($0) }
    }

    /// Gemini counts cached content inside the prompt, and thoughts apart from the candidates.
    var normalised: TokenUsage {
        let count = TokenUsage.count
        var usage = TokenUsage()
        let prompt = count(promptTokenCount) + count(toolUsePromptTokenCount)
        usage.cachedInput = min(count(cachedContentTokenCount), prompt)
        usage.input = prompt - usage.cachedInput
        usage.reasoning = count(thoughtsTokenCount)
        usage.output = count(candidatesTokenCount) + usage.reasoning
        return usage
    }
}
