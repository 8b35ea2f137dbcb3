/// Which provider API an exchange spoke, from its upstream host and request path.
///
/// The path decides first, because OpenAI-compatible servers (Azure, vLLM, Ollama, gateways) sit
/// on any host; the host only settles what the path leaves open.
struct ProviderRoute: Equatable, Sendable {
    var provider: Provider
    var endpoint: Endpoint
    /// The model named in the path: Gemini's `models/{model}:…`, or Azure's deployment.
    var modelInPath = ""

    static func detect(host: String, path: String) -> ProviderRoute {
        let path =
            path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? path
        let host = host.lowercased()
        let segments = path.split(separator: "/")

        if let last = segments.last, let colon = last.lastIndex(of: ":") {
            let method = last[last.index(after: colon)...]
            let model = String(last[..<colon])
            switch method {
            case "generateContent":
                return ProviderRoute(provider: .gemini, endpoint: .generateContent, modelInPath: model)
            case "streamGenerateContent":
                return ProviderRoute(provider: .gemini, endpoint: .streamGenerateContent, modelInPath: model)
            default: break
            }
        }
        // Azure: /openai/deployments/{deployment}/chat/completions
        var deployment = ""
        if let index = segments.firstIndex(of: "deployments"), index + 1 < segments.count {
            deployment = String(segments[index + 1])
        }
        if path.hasSuffix("/chat/completions") {
            return ProviderRoute(provider: .openai, endpoint: .chatCompletions, modelInPath: deployment)
        }
        if path.hasSuffix("/messages"), !segments.contains("threads") {
            // Anthropic's /v1/messages (OpenAI's assistants keep messages under /threads/).
            return ProviderRoute(provider: .anthropic, endpoint: .messages)
        }
        if path.hasSuffix("/completions") {
            return ProviderRoute(provider: .openai, endpoint: .completions, modelInPath: deployment)
        }
        if path.hasSuffix("/embeddings") {
            return ProviderRoute(provider: .openai, endpoint: .embeddings, modelInPath: deployment)
        }
        if path.hasSuffix("/responses") {
            return ProviderRoute(provider: .openai, endpoint: .responses, modelInPath: deployment)
        }
        if host.hasSuffix("anthropic.com") { return ProviderRoute(provider: .anthropic, endpoint: .other) }
        if host.hasSuffix("googleapis.com") { return ProviderRoute(provider: .gemini, endpoint: .other) }
        if host.hasSuffix("openai.com") || host.hasSuffix("openai.azure.com") {
            return ProviderRoute(provider: .openai, endpoint: .other)
        }
        return ProviderRoute(provider: .unknown, endpoint: .other)
    }
}
