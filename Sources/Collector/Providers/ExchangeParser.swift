import Foundation

/// Puts together what an exchange's request and response said: provider, endpoint, models, the
/// stream flag, usage and errors. Pure: the assembler feeds it bytes.
struct ExchangeParser {
    private(set) var route: ProviderRoute
    let maxJSONBytes: Int
    private var request: RequestDocument?
    private var requestParseError = ""
    private var response: ResponseBodyReader
    private var responseStarted = false
    /// Set once a WebSocket message came: the exchange is a session.
    private var realtime: RealtimeSession?

    init(host: String, path: String, maxJSONBytes: Int = 8 << 20) {
        self.maxJSONBytes = maxJSONBytes
        route = ProviderRoute.detect(host: host, path: path)
        response = ResponseBodyReader(route: route, maxJSONBytes: maxJSONBytes)
    }

    /// Names the upstream once the request is known; too late once the response has begun.
    mutating func route(host: String, path: String) {
        guard !responseStarted else { return }
        route = ProviderRoute.detect(host: host, path: path)
        response = ResponseBodyReader(route: route, maxJSONBytes: maxJSONBytes)
    }

    /// The captured request body (possibly cut at the sidecar's cap).
    mutating func requestBody(_ body: [UInt8], truncated: Bool) {
        guard !body.isEmpty else { return }
        if truncated {
            // A cut body is not JSON any more; the model is near its start in every API.
            request = RequestDocument(
                model: JSONScan.stringValue(of: "model", in: body),
                stream: JSONScan.contains(key: "stream", in: body) ? Self.streamFlag(in: body) : nil
            )
            return
        }
        do {
            request = try JSONDecoder().decode(RequestDocument.self, from: Data(body))
        } catch {
            requestParseError = "the request body is not valid JSON: \(ResponseBodyReader.describe(error))"
        }
    }

    mutating func responseBody<Bytes: Collection>(_ bytes: Bytes, afterHole: Bool) where Bytes.Element == UInt8 {
        responseStarted = true
        response.append(bytes, afterHole: afterHole)
    }

    /// A WebSocket message of the exchange (a session after its 101), in the order the sidecar saw it.
    mutating func webSocketMessage(_ data: [UInt8], size: UInt64, opcode: UInt32, fromUpstream: Bool) {
        responseStarted = true
        if realtime == nil { realtime = RealtimeSession() }
        if fromUpstream { realtime!.upstreamMessage(data, size: size, opcode: opcode) }
    }

    mutating func finish() -> ParsedExchange {
        if let realtime { return finish(realtime) }
        let findings = response.finish()
        var parsed = ParsedExchange()
        parsed.provider = route.provider
        parsed.endpoint = route.endpoint
        parsed.modelRequested = request?.model ?? route.modelInPath
        parsed.modelServed = findings.modelServed
        parsed.stream = request?.stream ?? (route.endpoint == .streamGenerateContent || findings.isEventStream)
        parsed.usage = findings.usage
        parsed.usageSource = findings.usageSource
        parsed.errorType = findings.errorType
        parsed.parseError = findings.parseError.isEmpty ? requestParseError : findings.parseError
        return parsed
    }

    private func finish(_ session: RealtimeSession) -> ParsedExchange {
        var parsed = ParsedExchange()
        parsed.provider = route.provider
        parsed.endpoint = route.endpoint
        parsed.modelRequested = route.modelInPath
        parsed.modelServed = session.model
        parsed.stream = true
        parsed.usage = session.usage
        parsed.usageSource = session.usageSource
        parsed.realtimeResponses = session.responses
        parsed.realtimeErrors = session.errors
        parsed.errorType = session.errors.first.map { $0.code.isEmpty ? $0.type : $0.code } ?? ""
        parsed.parseError = session.parseError
        return parsed
    }

    private static func streamFlag(in body: [UInt8]) -> Bool? {
        let text = String(decoding: body.prefix(64 << 10), as: UTF8.self)
        if text.contains("\"stream\":true") || text.contains("\"stream\": true") { return true }
        if text.contains("\"stream\":false") || text.contains("\"stream\": false") { return false }
        return nil
    }
}
