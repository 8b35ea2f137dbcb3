import Foundation

/// What a response body told about its exchange.
struct ResponseFindings: Equatable, Sendable {
    var modelServed = ""
    var usage = TokenUsage()
    var usageSource = UsageSource.missing
    var errorType = ""
    var parseError = ""
    /// The body was an event stream.
    var isEventStream = false
}

/// Reads one exchange's response body as its pieces arrive, for the provider that sent it.
///
/// A body starting with `{` or `[` is JSON and is held (up to `maxJSONBytes`) to be decoded whole at
/// the end. Anything else is an event stream: it goes through `SSEDecoder` as it comes, and only the
/// events that can carry the model, usage or an error are decoded as JSON. So a long stream costs
/// the collector almost nothing to hold.
///
/// Where the sidecar's capture was cut (a hole before the body's tail), usage is still found in the
/// tail: streams report it in their last events, and JSON bodies end with it.
struct ResponseBodyReader {
    private enum Mode {
        case undecided
        case json
        case eventStream
    }

    let route: ProviderRoute
    let maxJSONBytes: Int
    private var mode = Mode.undecided
    private var json: [UInt8] = []
    /// JSON bytes after a hole, or past `maxJSONBytes`: the body's end, where usage sits.
    private var jsonTail: [UInt8] = []
    private var jsonCut = false
    private var sse = SSEDecoder()
    private var events = 0
    private var lastGeminiEvent: [UInt8]?
    private var usage: UsageFields?
    private var geminiUsage: GeminiUsage?
    private var findings = ResponseFindings()
    private let decoder = JSONDecoder()

    /// The tail kept of a JSON body that outgrew `maxJSONBytes`.
    static let jsonTailBytes = 64 << 10

    init(route: ProviderRoute, maxJSONBytes: Int = 8 << 20) {
        self.route = route
        self.maxJSONBytes = maxJSONBytes
    }

    /// The next piece of the body; `afterHole` when bytes before it were never captured.
    mutating func append<Bytes: Collection>(_ bytes: Bytes, afterHole: Bool) where Bytes.Element == UInt8 {
        if mode == .undecided {
            guard let first = bytes.first(where: { !($0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09) }) else {
                return
            }
            mode = first == UInt8(ascii: "{") || first == UInt8(ascii: "[") ? .json : .eventStream
            findings.isEventStream = mode == .eventStream
        }
        switch mode {
        case .undecided:
            return
        case .json:
            if afterHole || jsonCut {
                jsonCut = true
                if afterHole { jsonTail.removeAll() }
                jsonTail.append(contentsOf: bytes)
                if jsonTail.count > 2 * Self.jsonTailBytes { jsonTail.removeFirst(jsonTail.count - Self.jsonTailBytes) }
            } else if json.count + bytes.count > maxJSONBytes {
                jsonCut = true
                json.append(contentsOf: bytes.prefix(maxJSONBytes - json.count))
                jsonTail.append(contentsOf: bytes.dropFirst(maxJSONBytes - json.count))
            } else {
                json.append(contentsOf: bytes)
            }
        case .eventStream:
            if afterHole { sse.skipToNextEvent() }
            // Collected first: handling an event touches this reader, which the decoder is part of.
            var completed: [SSEEvent] = []
            sse.feed(bytes) { completed.append($0) }
            for event in completed { handle(event) }
        }
    }

    /// The body has ended (or the exchange did): what it said.
    mutating func finish() -> ResponseFindings {
        switch mode {
        case .undecided:
            break
        case .json:
            finishJSON()
        case .eventStream:
            sse.finish()
            if let last = lastGeminiEvent, let document = decode(last, what: "the last stream event") {
                take(document)
            }
            if events == 0 && findings.parseError.isEmpty {
                findings.parseError = "the event stream held no complete event"
            }
            if sse.oversizeLines > 0 && findings.parseError.isEmpty {
                findings.parseError = "the event stream has a line over \(sse.maxLineBytes) bytes"
            }
        }
        var implausible = false
        if let geminiUsage {
            findings.usage = geminiUsage.normalised
            findings.usageSource = .reported
            implausible = geminiUsage.hasImplausibleCount
        } else if let usage, !usage.isEmpty {
            findings.usage = usage.normalised(for: route.provider, endpoint: route.endpoint)
            findings.usageSource = .reported
            implausible = usage.hasImplausibleCount
        }
        if implausible && findings.parseError.isEmpty {
            findings.parseError =
                "the usage holds a negative or implausibly large token count (counted as 0 to \(TokenUsage.maximumCount))"
        }
        return findings
    }

    // MARK: JSON bodies

    private mutating func finishJSON() {
        if !jsonCut {
            if json.first == UInt8(ascii: "[") {
                // Gemini's streamGenerateContent without alt=sse: an array of responses.
                if let documents = decodeArray(json) { for document in documents { take(document) } }
            } else if let document = decode(json, what: "the response body") {
                take(document)
            }
            return
        }
        // Cut: the model from the start, the usage (or error) from the end, each as its own object.
        if let model = JSONScan.stringValue(of: "model", in: json) ?? JSONScan.stringValue(of: "modelVersion", in: json)
        {
            findings.modelServed = model
        }
        let end = jsonTail.isEmpty ? json : jsonTail
        if let object = JSONScan.lastObject(named: "usageMetadata", in: end) {
            geminiUsage = try? decoder.decode(GeminiUsage.self, from: Data(object))
        } else if let object = JSONScan.lastObject(named: "usage", in: end) {
            usage = try? decoder.decode(UsageFields.self, from: Data(object))
        }
        if let object = JSONScan.lastObject(named: "error", in: json + jsonTail),
            let error = try? decoder.decode(ProviderError.self, from: Data(object))
        {
            findings.errorType = error.name
        }
    }

    // MARK: Event streams

    private mutating func handle(_ event: SSEEvent) {
        events += 1
        let first = events == 1
        switch route.provider {
        case .anthropic:
            if Anthropic.selects(event), let document = decode(event.data, what: "a \(event.type) event") {
                take(document)
            }
        case .gemini:
            // Decoded once more at the end: its usage is the exchange's total.
            lastGeminiEvent = event.data
            if Gemini.selects(event, isFirst: first), let document = decode(event.data, what: "a stream event") {
                take(document)
            }
        case .openai, .unknown:
            if OpenAI.selects(event, isFirst: first), let document = decode(event.data, what: "a stream event") {
                take(document)
            }
        }
    }

    // MARK: Documents

    private mutating func take(_ document: ProviderDocument) {
        if let model = document.model ?? document.modelVersion ?? document.message?.model ?? document.response?.model,
            !model.isEmpty
        {
            findings.modelServed = model
        }
        for fields in [document.usage, document.message?.usage, document.response?.usage].compactMap({ $0 }) {
            usage = usage.map { Anthropic.merge($0, with: fields) } ?? fields
        }
        if let gemini = document.usageMetadata { geminiUsage = gemini }
        if let error = document.error ?? document.response?.error ?? document.message?.error {
            findings.errorType = error.name
        }
    }

    private mutating func decode(_ bytes: [UInt8], what: String) -> ProviderDocument? {
        do {
            return try decoder.decode(ProviderDocument.self, from: Data(bytes))
        } catch {
            if findings.parseError.isEmpty {
                findings.parseError = "\(what) is not valid JSON: \(Self.describe(error))"
            }
            return nil
        }
    }

    private mutating func decodeArray(_ bytes: [UInt8]) -> [ProviderDocument]? {
        do {
            return try decoder.decode([ProviderDocument].self, from: Data(bytes))
        } catch {
            if findings.parseError.isEmpty {
                findings.parseError = "the response body is not valid JSON: \(Self.describe(error))"
            }
            return nil
        }
    }

    /// A decoding error in one line, without the bytes themselves (they may be anything).
    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let context): context.debugDescription
        case DecodingError.typeMismatch(_, let context):
            "\(context.codingPath.map(\.stringValue).joined(separator: ".")): \(context.debugDescription)"
        default: "\(error)"
        }
    }
}
