import Foundation

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
        let parts = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let query = parts.count > 1 ? String(parts[1]) : ""
        let path = parts.first.map(String.init) ?? path
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
        if path.hasSuffix("/realtime") {
            return ProviderRoute(provider: .openai, endpoint: .realtime, modelInPath: Self.queryModel(in: query))
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

    /// The `model` parameter of a query (`model=gpt-realtime&x=y`), percent-decoded; empty without one.
    static func queryModel(in query: String) -> String {
        for pair in query.split(separator: "&") {
            let field = pair.split(separator: "=", maxSplits: 1)
            guard field.count == 2, field[0] == "model" else { continue }
            return String(field[1]).removingPercentEncoding ?? String(field[1])
        }
        return ""
    }
}
