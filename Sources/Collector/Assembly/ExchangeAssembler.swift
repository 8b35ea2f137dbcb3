import Wire

/// One exchange as the collector knows it once it is over: what the sidecar reported and what
/// its bodies said.
struct AssembledExchange: Sendable {
    var sidecarID: String
    var bootID: String
    var exchangeID: String
    /// Nil when the sidecar's `Request` record never arrived (dropped on the way).
    var request: RequestSummary?
    /// Nil when the exchange timed out without its `ResponseDone`.
    var done: WireResponseDone?
    var parsed: ParsedExchange
    /// "completed", "client_aborted", "upstream_error", "rejected", "timeout", or "incomplete"
    /// (no `ResponseDone` within the exchange timeout).
    var outcome: String
    /// Every response chunk the sidecar published arrived.
    var captureComplete: Bool
    /// The collector stopped holding this exchange's bytes at its memory cap (it still counted them).
    var truncated: Bool
    /// Response body bytes seen in chunks, whatever was held.
    var responseBytesSeen: UInt64
    /// When the first response chunk passed the sidecar, Unix nanoseconds; 0 if none did.
    var firstChunkUnixNanos: Int64
    /// Kept only with `--store-bodies`, each capped.
    var requestBody: [UInt8]?
    var responseBody: [UInt8]?
}

/// The parts of a `Request` record kept once its body has been read.
struct RequestSummary: Sendable {
    var method: String
    var scheme: String
    var host: String
    var path: String
    var app: String
    var tenant: String
    var clientAddress: String
    var startUnixNanos: Int64
    var bodySize: UInt64
    var bodyTruncated: Bool
    var httpVersion: String
    var keyID: String
    var projectID: String

    init(_ request: WireRequest) {
        method = request.method
        scheme = request.scheme
        host = request.host
        path = request.path
        app = request.app
        tenant = request.tenant
        clientAddress = request.clientAddress
        startUnixNanos = request.startUnixNanos
        bodySize = request.bodySize
        bodyTruncated = request.bodyTruncated
        httpVersion = request.httpVersion
        keyID = request.keyID
        projectID = request.projectID
    }
}

/// Joins each exchange's `Request`, `StreamChunk`s (put back in index order) and `ResponseDone`,
/// keyed by (sidecar id, exchange id), reading the bodies as they come. Pure: time is passed in.
///
/// Memory is bounded twice: per exchange (`maxExchangeBytes`) and in total (`maxTotalBytes`). Past
/// either, the exchange is marked truncated, its further bytes are counted but not held, and
/// what it already holds still gives its usage (streams and JSON bodies report it at their end,
/// and the tail arrives after the hole).
struct ExchangeAssembler {
    struct Limits: Sendable {
        var exchangeTimeoutNanos: Int64 = 600 * 1_000_000_000
        var maxExchangeBytes = 8 << 20
        var maxTotalBytes = 512 << 20
        /// Bodies kept for storage with `--store-bodies` (0: none), per body.
        var storedBodyBytes = 0
        /// Exchanges remembered after they end, to tell a late or repeated record from an unknown one.
        var rememberedEnded = 100_000
        /// Exchanges open at once; a record that would open one more is refused and counted (each
        /// open exchange costs memory even when its chunks are empty).
        var maxOpenExchanges = 200_000
    }

    /// Records that fit no exchange, counted by kind.
    enum Anomaly: String, CaseIterable, Sendable {
        case chunkForUnknownExchange = "chunk_for_unknown_exchange"
        case doneForUnknownExchange = "done_for_unknown_exchange"
        case duplicateDone = "duplicate_done"
        case duplicateRequest = "duplicate_request"
        case duplicateChunk = "duplicate_chunk"
        case requestAfterChunks = "request_after_chunks"
        case tooManyOpenExchanges = "too_many_open_exchanges"
    }

    enum Output: Sendable {
        case ended(AssembledExchange)
        case anomaly(Anomaly, sidecarID: String)
    }

    struct Key: Hashable, Sendable {
        let sidecarID: String
        let exchangeID: String
    }

    let limits: Limits
    private var open: [Key: OpenExchange] = [:]
    private var ended = RecentKeys(capacity: 100_000)
    /// Bytes held by all open exchanges.
    private(set) var heldBytes = 0

    init(limits: Limits = Limits()) {
        self.limits = limits
        self.ended = RecentKeys(capacity: limits.rememberedEnded)
    }

    var openExchanges: Int { open.count }

    /// Takes one record; returns what it completed or could not place.
    ///
    /// - Parameter textRepaired: the record held text that was not UTF-8 and was read with
    ///   U+FFFD (`DecodedEnvelope.textRepaired`): the exchange still counts, with a parse error.
    mutating func add(
        sidecarID: String, bootID: String, record: WireRecord, nowNanos: Int64, textRepaired: Bool = false
    ) -> [Output] {
        switch record {
        case .request(let request):
            let key = Key(sidecarID: sidecarID, exchangeID: request.exchangeID)
            if ended.contains(key) { return [.anomaly(.duplicateRequest, sidecarID: sidecarID)] }
            if let exchange = open[key] {
                guard exchange.request == nil else { return [.anomaly(.duplicateRequest, sidecarID: sidecarID)] }
                if textRepaired { exchange.textRepaired = true }
                // Its chunks were read without knowing the provider; the request still names the exchange.
                exchange.attach(request)
                return [.anomaly(.requestAfterChunks, sidecarID: sidecarID)]
            }
            guard open.count < limits.maxOpenExchanges else {
                return [.anomaly(.tooManyOpenExchanges, sidecarID: sidecarID)]
            }
            let exchange = OpenExchange(
                sidecarID: sidecarID, bootID: bootID, exchangeID: request.exchangeID, nowNanos: nowNanos, limits: limits
            )
            exchange.attach(request)
            exchange.textRepaired = textRepaired
            open[key] = exchange
            account(exchange)
            return []
        case .streamChunk(let chunk):
            let key = Key(sidecarID: sidecarID, exchangeID: chunk.exchangeID)
            if open[key] == nil && !ended.contains(key) && open.count >= limits.maxOpenExchanges {
                return [.anomaly(.tooManyOpenExchanges, sidecarID: sidecarID)]
            }
            guard
                let exchange = open[key]
                    ?? (ended.contains(key) ? nil : startWithoutRequest(key, bootID: bootID, nowNanos: nowNanos))
            else {
                return [.anomaly(.chunkForUnknownExchange, sidecarID: sidecarID)]
            }
            exchange.lastActivityNanos = nowNanos
            if textRepaired { exchange.textRepaired = true }
            let accepted = exchange.add(chunk, memoryLeft: limits.maxTotalBytes - heldBytes)
            account(exchange)
            return accepted ? [] : [.anomaly(.duplicateChunk, sidecarID: sidecarID)]
        case .responseDone(let done):
            let key = Key(sidecarID: sidecarID, exchangeID: done.exchangeID)
            guard let exchange = open.removeValue(forKey: key) else {
                return [.anomaly(ended.contains(key) ? .duplicateDone : .doneForUnknownExchange, sidecarID: sidecarID)]
            }
            heldBytes -= exchange.heldBytes
            ended.insert(key)
            if textRepaired { exchange.textRepaired = true }
            return [.ended(exchange.finish(done: done))]
        case .heartbeat:
            return []
        }
    }

    /// Closes exchanges that have heard nothing for the exchange timeout, as `incomplete`.
    mutating func expire(nowNanos: Int64) -> [Output] {
        let cutoff = nowNanos - limits.exchangeTimeoutNanos
        let stale = open.filter { $0.value.lastActivityNanos <= cutoff }
        return stale.map { key, exchange in
            open[key] = nil
            heldBytes -= exchange.heldBytes
            ended.insert(key)
            return .ended(exchange.finish(done: nil))
        }
    }

    /// Closes every open exchange, as at shutdown.
    mutating func closeAll() -> [Output] {
        expire(nowNanos: .max)
    }

    /// A chunk whose `Request` was lost: the exchange still counts, read without a provider.
    private mutating func startWithoutRequest(_ key: Key, bootID: String, nowNanos: Int64) -> OpenExchange {
        let exchange = OpenExchange(
            sidecarID: key.sidecarID, bootID: bootID, exchangeID: key.exchangeID, nowNanos: nowNanos, limits: limits)
        open[key] = exchange
        return exchange
    }

    private mutating func account(_ exchange: OpenExchange) {
        heldBytes += exchange.heldBytes - exchange.accountedBytes
        exchange.accountedBytes = exchange.heldBytes
    }
}

/// An exchange under way. A class: it is updated in place, many times, while it sits in the table.
private final class OpenExchange {
    let sidecarID: String
    let bootID: String
    let exchangeID: String
    let limits: ExchangeAssembler.Limits
    var request: RequestSummary?
    var lastActivityNanos: Int64
    private var parser: ExchangeParser
    /// Chunks that arrived ahead of their turn, by index.
    private var waiting: [UInt64: WireStreamChunk] = [:]
    private var waitingBytes = 0
    private var nextIndex: UInt64 = 0
    private var nextOffset: UInt64 = 0
    private var chunksSeen: UInt64 = 0
    private var bytesSeen: UInt64 = 0
    /// Bytes given to the parser (which holds JSON bodies whole, up to its cap).
    private var parsedBytes = 0
    private var firstChunkNanos: Int64 = 0
    private var truncated = false
    private var requestBody: [UInt8]?
    private var responseBody: [UInt8]?
    var accountedBytes = 0
    /// One of its records held text that was not UTF-8 (read with U+FFFD).
    var textRepaired = false

    /// What holding a chunk out of order costs besides its bytes: an empty chunk is not free.
    static let waitingOverhead = 64

    init(sidecarID: String, bootID: String, exchangeID: String, nowNanos: Int64, limits: ExchangeAssembler.Limits) {
        self.sidecarID = sidecarID
        self.bootID = bootID
        self.exchangeID = exchangeID
        self.lastActivityNanos = nowNanos
        self.limits = limits
        self.parser = ExchangeParser(host: "", path: "", maxJSONBytes: limits.maxExchangeBytes)
    }

    var heldBytes: Int {
        waitingBytes + min(parsedBytes, limits.maxExchangeBytes) + (requestBody?.count ?? 0)
            + (responseBody?.count ?? 0)
    }

    func attach(_ wire: WireRequest) {
        request = RequestSummary(wire)
        parser.route(host: wire.host, path: wire.path)
        let body = Array(wire.body)
        parser.requestBody(body, truncated: wire.bodyTruncated)
        if limits.storedBodyBytes > 0 { requestBody = Array(body.prefix(limits.storedBodyBytes)) }
    }

    /// False for a chunk already seen.
    func add(_ chunk: WireStreamChunk, memoryLeft: Int) -> Bool {
        guard chunk.index >= nextIndex, waiting[chunk.index] == nil else { return false }
        chunksSeen += 1
        bytesSeen = bytesSeen.addingClamped(UInt64(chunk.data.count))
        if firstChunkNanos == 0 || chunk.unixNanos < firstChunkNanos { firstChunkNanos = chunk.unixNanos }
        if chunk.index == nextIndex {
            feed(chunk)
            // Those that were waiting for it follow.
            while let next = waiting.removeValue(forKey: nextIndex) {
                waitingBytes -= next.data.count + Self.waitingOverhead
                feed(next)
            }
        } else if heldBytes + chunk.data.count + Self.waitingOverhead <= limits.maxExchangeBytes
            && chunk.data.count + Self.waitingOverhead <= memoryLeft
        {
            waiting[chunk.index] = chunk
            waitingBytes += chunk.data.count + Self.waitingOverhead
        } else {
            // No room to hold it until its turn: it is lost to parsing, and the next ones follow a hole.
            truncated = true
        }
        return true
    }

    private func feed(_ chunk: WireStreamChunk) {
        if chunk.websocketOpcode != 0 { return feedMessage(chunk) }
        let afterHole = chunk.offset != nextOffset
        // Both come from the wire: a sidecar (or anyone who reaches the port) may send any value.
        nextIndex = chunk.index.addingClamped(1)
        nextOffset = chunk.offset.addingClamped(UInt64(chunk.data.count))
        if parsedBytes + chunk.data.count > limits.maxExchangeBytes { truncated = true }
        parsedBytes += chunk.data.count
        parser.responseBody(chunk.data, afterHole: afterHole)
        if limits.storedBodyBytes > 0 {
            var body = responseBody ?? []
            let room = limits.storedBodyBytes - body.count
            if room > 0 { body.append(contentsOf: chunk.data.prefix(room)) }
            responseBody = body
        }
    }

    /// A WebSocket message: both directions share the index; each is read whole (or as cut).
    private func feedMessage(_ chunk: WireStreamChunk) {
        nextIndex = chunk.index.addingClamped(1)
        // Nothing of a message is held past it (a session may run for hours): only the cap cuts.
        if chunk.messageSize > UInt64(chunk.data.count) { truncated = true }
        let fromUpstream = chunk.direction == .response
        let data = Array(chunk.data)
        parser.webSocketMessage(
            data, size: chunk.messageSize, opcode: chunk.websocketOpcode, fromUpstream: fromUpstream)
        // Stored bodies: each direction's messages, one per line.
        if limits.storedBodyBytes > 0 {
            var body = (fromUpstream ? responseBody : requestBody) ?? []
            let separator = body.isEmpty ? 0 : 1
            let room = limits.storedBodyBytes - body.count - separator
            if room > 0 {
                if separator == 1 { body.append(0x0A) }
                body.append(contentsOf: data.prefix(room))
            }
            if fromUpstream { responseBody = body } else { requestBody = body }
        }
    }

    func finish(done: WireResponseDone?) -> AssembledExchange {
        // Chunks still waiting follow holes: read them in order, each after its gap.
        for index in waiting.keys.sorted() {
            if let chunk = waiting[index] { feed(chunk) }
        }
        waiting.removeAll()
        waitingBytes = 0
        var parsed = parser.finish()
        if textRepaired {
            let note = "a record held text that is not UTF-8 (read with U+FFFD)"
            parsed.parseError = parsed.parseError.isEmpty ? note : parsed.parseError + "; " + note
        }
        let expected = done?.responseChunks
        return AssembledExchange(
            sidecarID: sidecarID, bootID: bootID, exchangeID: exchangeID, request: request, done: done, parsed: parsed,
            outcome: done.map { Self.name(of: $0.outcome) } ?? "incomplete",
            captureComplete: expected.map { $0 == chunksSeen } ?? false,
            truncated: truncated || (done?.responseTruncated ?? false),
            responseBytesSeen: bytesSeen, firstChunkUnixNanos: firstChunkNanos,
            requestBody: requestBody, responseBody: responseBody
        )
    }

    static func name(of outcome: Outcome) -> String {
        switch outcome {
        case .completed: "completed"
        case .clientAborted: "client_aborted"
        case .upstreamError: "upstream_error"
        case .rejected: "rejected"
        case .timeout: "timeout"
        case .unspecified, .UNRECOGNIZED: "unknown"
        }
    }
}

/// The last `capacity` keys inserted, for membership tests.
struct RecentKeys {
    let capacity: Int
    private var set: Set<ExchangeAssembler.Key> = []
    private var order: [ExchangeAssembler.Key] = []
    private var next = 0

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    func contains(_ key: ExchangeAssembler.Key) -> Bool { set.contains(key) }

    mutating func insert(_ key: ExchangeAssembler.Key) {
        guard set.insert(key).inserted else { return }
        if order.count < capacity {
            order.append(key)
        } else {
            set.remove(order[next])
            order[next] = key
            next = (next + 1) % capacity
        }
    }
}
