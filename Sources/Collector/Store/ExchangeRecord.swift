import Foundation
import GRDB

/// One exchange as it is stored, served by `/api/exchanges` and counted in the metrics: one row of
/// the `exchange` table. Credentials never reach it: the sidecar sends only the tenant hash.
struct ExchangeRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "exchange"

    var sidecarID: String
    var exchangeID: String
    var bootID: String
    var app: String
    var tenant: String
    var provider: String
    var endpoint: String
    var method: String
    var host: String
    var path: String
    var modelRequested: String
    var modelServed: String
    var stream: Bool
    /// The status the client received; 0 when none.
    var status: Int
    var outcome: String
    var errorType: String
    var parseError: String
    var startedAtMs: Int64
    var endedAtMs: Int64?
    var ttfbMs: Double?
    var durationMs: Double?
    var requestBytes: Int64
    var responseBytes: Int64
    var inputTokens: Int
    var outputTokens: Int
    var cachedInputTokens: Int
    var cacheCreationTokens: Int
    var reasoningTokens: Int
    /// A Realtime session's audio tokens, priced apart from its text.
    var audioInputTokens = 0
    var audioCachedInputTokens = 0
    var audioOutputTokens = 0
    var totalTokens: Int
    var usageSource: String
    /// USD; nil when the usage is missing or the model is not in the price table.
    var costUSD: Double?
    var priced: Bool
    var captureComplete: Bool
    var truncated: Bool
    var requestBody: Data?
    var responseBody: Data?
    /// The virtual key and project of a request made with one; empty otherwise.
    var keyID = ""
    var projectID = ""
    /// Why policy refused it (outcome "rejected"), else empty.
    var rejectReason = ""
    /// The sidecar's gateway provider (its configuration `name`) that answered, and which of its
    /// keys went (a keyed hash); empty without a configuration.
    var gatewayProvider = ""
    var providerKeyID = ""
    /// Upstreams tried: more than 1 when the gateway retried elsewhere; 0 when none was.
    var attempts = 0
    /// What carried the exchange from the client: `http1`, `h2` or `websocket` (`protocolLabel`).
    var clientProtocol = "http1"
    /// A WebSocket session: its close code (0 without a Close frame), its data messages each way,
    /// and, for a Realtime session, each `response.done`'s usage and the `error` events, as JSON
    /// arrays (empty text for other exchanges).
    var closeCode = 0
    var clientMessages = 0
    var upstreamMessages = 0
    var realtimeResponses = ""
    var realtimeErrors = ""

    enum CodingKeys: String, CodingKey {
        case sidecarID = "sidecar_id"
        case exchangeID = "exchange_id"
        case bootID = "boot_id"
        case app, tenant, provider, endpoint, method, host, path
        case modelRequested = "model_requested"
        case modelServed = "model_served"
        case stream, status, outcome
        case errorType = "error_type"
        case parseError = "parse_error"
        case startedAtMs = "started_at_ms"
        case endedAtMs = "ended_at_ms"
        case ttfbMs = "ttfb_ms"
        case durationMs = "duration_ms"
        case requestBytes = "request_bytes"
        case responseBytes = "response_bytes"
        case inputTokens = "input_tokens"
        case outputTokens = "output_tokens"
        case cachedInputTokens = "cached_input_tokens"
        case cacheCreationTokens = "cache_creation_tokens"
        case reasoningTokens = "reasoning_tokens"
        case audioInputTokens = "audio_input_tokens"
        case audioCachedInputTokens = "audio_cached_input_tokens"
        case audioOutputTokens = "audio_output_tokens"
        case totalTokens = "total_tokens"
        case usageSource = "usage_source"
        case costUSD = "cost_usd"
        case priced
        case captureComplete = "capture_complete"
        case truncated
        case requestBody = "request_body"
        case responseBody = "response_body"
        case keyID = "key_id"
        case projectID = "project_id"
        case rejectReason = "reject_reason"
        case gatewayProvider = "gateway_provider"
        case providerKeyID = "provider_key_id"
        case attempts
        case clientProtocol = "protocol"
        case closeCode = "close_code"
        case clientMessages = "client_messages"
        case upstreamMessages = "upstream_messages"
        case realtimeResponses = "realtime_responses"
        case realtimeErrors = "realtime_errors"
    }

    /// "2xx", "4xx", ...; "none" when the client received no status.
    var statusClass: String {
        status >= 100 && status < 600 ? "\(status / 100)xx" : "none"
    }

    /// The model the exchange is priced and labelled by: the one that answered, else the one asked for.
    var model: String {
        modelServed.isEmpty ? modelRequested : modelServed
    }
}

extension ExchangeRecord {
    /// The row for an assembled exchange, priced by `prices`.
    init(_ exchange: AssembledExchange, prices: PriceTable) {
        let request = exchange.request
        let done = exchange.done
        let parsed = exchange.parsed
        let start = request?.startUnixNanos ?? exchange.firstChunkUnixNanos
        sidecarID = exchange.sidecarID
        exchangeID = exchange.exchangeID
        bootID = exchange.bootID
        app = request?.app ?? ""
        tenant = request?.tenant ?? ""
        provider = parsed.provider.rawValue
        endpoint = parsed.endpoint.rawValue
        method = request?.method ?? ""
        host = request?.host ?? ""
        path = request?.path ?? ""
        modelRequested = parsed.modelRequested
        modelServed = parsed.modelServed
        stream = parsed.stream
        status = Int(done?.status ?? 0)
        outcome = exchange.outcome
        errorType = parsed.errorType
        parseError = parsed.parseError
        startedAtMs = start / 1_000_000
        endedAtMs = done.map { $0.endUnixNanos / 1_000_000 }
        if let done, start > 0, done.upstreamFirstByteUnixNanos >= start {
            ttfbMs = Double(done.upstreamFirstByteUnixNanos - start) / 1e6
        }
        if let done, start > 0, done.endUnixNanos >= start {
            durationMs = Double(done.endUnixNanos - start) / 1e6
        }
        // Wire fields: any UInt64 may come, and SQLite's integers are signed.
        requestBytes = Int64(clamping: done?.requestBytes ?? request?.bodySize ?? 0)
        responseBytes = Int64(clamping: done?.responseBytes ?? exchange.responseBytesSeen)
        inputTokens = parsed.usage.input
        outputTokens = parsed.usage.output
        cachedInputTokens = parsed.usage.cachedInput
        cacheCreationTokens = parsed.usage.cacheCreation
        reasoningTokens = parsed.usage.reasoning
        audioInputTokens = parsed.usage.audioInput
        audioCachedInputTokens = parsed.usage.audioCachedInput
        audioOutputTokens = parsed.usage.audioOutput
        totalTokens = parsed.usage.total
        usageSource = parsed.usageSource.rawValue
        let price = prices.price(for: parsed.modelServed) ?? prices.price(for: parsed.modelRequested)
        priced = price != nil
        costUSD = parsed.usageSource == .reported ? price?.cost(of: parsed.usage) : nil
        captureComplete = exchange.captureComplete
        truncated = exchange.truncated
        requestBody = exchange.requestBody.map { Data($0) }
        responseBody = exchange.responseBody.map { Data($0) }
        keyID = request?.keyID ?? ""
        projectID = request?.projectID ?? ""
        rejectReason = done?.rejectReason ?? ""
        gatewayProvider = done?.provider ?? ""
        providerKeyID = done?.providerKeyID ?? ""
        attempts = Int(done?.attempts ?? 0)
        clientProtocol = Self.protocolLabel(httpVersion: request?.httpVersion ?? "")
        if let done, done.hasWebsocket {
            clientProtocol = "websocket"
            closeCode = Int(done.websocket.closeCode)
            clientMessages = Int(clamping: done.websocket.clientMessages)
            upstreamMessages = Int(clamping: done.websocket.upstreamMessages)
        }
        // Only a Realtime session has these: no encoder is made for any other row.
        if !parsed.realtimeResponses.isEmpty { realtimeResponses = Self.json(parsed.realtimeResponses) }
        if !parsed.realtimeErrors.isEmpty { realtimeErrors = Self.json(parsed.realtimeErrors) }
    }

    /// A JSON array for a text column, keys sorted; empty if it can't be encoded.
    private static func json<Value: Encodable>(_ value: Value) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// The protocol label of a Request record's `http_version`: `h2` for HTTP/2 (each stream is
    /// an exchange), `http1` for anything else, an empty or unknown value included: a bounded
    /// label whatever a sidecar sends. A session that switched to WebSocket is `websocket`.
    static func protocolLabel(httpVersion: String) -> String {
        httpVersion == "HTTP/2" || httpVersion == "HTTP/2.0" ? "h2" : "http1"
    }
}
