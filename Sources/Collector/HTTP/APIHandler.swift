import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// What the HTTP endpoints read from.
struct APIContext: Sendable {
    let metrics: CollectorMetrics
    let database: AppDatabase
    let writer: ExchangeWriter
    /// Extra readiness checks beyond storage: the analysis socket is bound, and so on.
    let isReceiving: @Sendable () -> Bool
    var management = ManagementAPI(policy: nil, token: nil)
    var apiAccess = APIAccess()
}

/// `/metrics`, `/healthz`, `/readyz`, `/api/exchanges` and `/api/usage`. Database reads run on
/// GRDB's own threads (async), never on the event loop; the answer is written back from there.
final class APIHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let api: APIContext
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var bodyTooLarge = false
    /// Management bodies are small JSON objects.
    static let maxBodyBytes = 64 << 10

    init(api: APIContext, logger: Logger) {
        self.api = api
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
            bodyTooLarge = false
        case .body(let buffer):
            if body.count + buffer.readableBytes > Self.maxBodyBytes {
                bodyTooLarge = true
            } else if !bodyTooLarge {
                body.append(contentsOf: buffer.readableBytesView)
            }
        case .end:
            guard let head else { return }
            self.head = nil
            if bodyTooLarge {
                return respond(
                    context, head, .payloadTooLarge,
                    json: ["error": "request bodies here are at most \(Self.maxBodyBytes) bytes"])
            }
            route(head, context: context)
        }
    }

    private func route(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path: String
        let query: [String: String]
        do {
            (path, query) = try Self.split(head.uri)
        } catch {
            return respond(context, head, .badRequest, json: ["error": "\(error)"])
        }
        if path == "/manage" || path.hasPrefix("/manage/") {
            return manage(head, path: path, query: query, context: context)
        }
        guard head.method == .GET || head.method == .HEAD else {
            return respond(context, head, .methodNotAllowed, json: ["error": "only GET is served here"])
        }
        if path.hasPrefix("/api/"), !api.apiAccess.authorizes(head.headers.first(name: "authorization")) {
            return respond(
                context, head, .unauthorized,
                json: ["error": "a valid API token is required (Authorization: Bearer <LLMTAP_API_TOKEN>)"])
        }
        switch path {
        case "/metrics":
            api.metrics.storage(api.writer.health)
            respond(
                context, head, .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: api.metrics.emit())
        case "/healthz":
            respond(context, head, .ok, json: ["status": "ok"])
        case "/readyz":
            let health = api.writer.health
            var problems: [String] = []
            if !health.healthy {
                problems.append("the database cannot be written: \(health.lastError ?? "unknown error")")
            }
            if !api.isReceiving() { problems.append("the analysis socket is not receiving") }
            if problems.isEmpty {
                respond(context, head, .ok, json: ["status": "ready"])
            } else {
                respond(
                    context, head, .serviceUnavailable,
                    json: ["status": "not ready", "problems": problems.joined(separator: "; ")])
            }
        case "/api/exchanges":
            do {
                let since = try Self.since(query["since"])
                let limit = try Self.limit(query["limit"])
                let (app, model) = (query["app"], query["model"])
                answerAsync(context, head) { database in
                    try await database.recentExchanges(sinceMs: since, limit: limit, app: app, model: model)
                }
            } catch {
                respond(context, head, .badRequest, json: ["error": "\(error)"])
            }
        case "/api/usage":
            do {
                let since = try Self.since(query["since"])
                guard let grouping = AppDatabase.UsageGrouping(rawValue: query["group_by"] ?? "app") else {
                    throw APIError("group_by must be one of: app, model, tenant")
                }
                answerAsync(context, head) { database in
                    try await database.usage(groupBy: grouping, sinceMs: since)
                }
            } catch {
                respond(context, head, .badRequest, json: ["error": "\(error)"])
            }
        default:
            respond(context, head, .notFound, json: ["error": "no such endpoint: \(path)"])
        }
    }

    private func manage(_ head: HTTPRequestHead, path: String, query: [String: String], context: ChannelHandlerContext)
    {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let body = self.body
        self.body = []
        api.management.handle(
            method: head.method, path: path, query: query, headers: head.headers, body: body,
            eventLoop: context.eventLoop
        )
        .whenSuccess { response in
            let (handler, context) = loopBound.value
            handler.respond(context, head, response.status, contentType: "application/json", body: response.body)
        }
    }

    /// Runs a database read off the loop and writes its JSON back on it.
    private func answerAsync<Result: Encodable & Sendable>(
        _ context: ChannelHandlerContext, _ head: HTTPRequestHead,
        _ read: @escaping @Sendable (AppDatabase) async throws -> Result
    ) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let database = api.database
        let eventLoop = context.eventLoop
        let logger = self.logger
        Task {
            let outcome: Swift.Result<[UInt8], any Error>
            do {
                let value = try await read(database)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                outcome = .success(Array(try encoder.encode(value)))
            } catch {
                outcome = .failure(error)
            }
            eventLoop.execute {
                let (handler, context) = loopBound.value
                switch outcome {
                case .success(let body):
                    handler.respond(context, head, .ok, contentType: "application/json", body: body)
                case .failure(let error):
                    logger.error("an API query failed", metadata: ["uri": "\(head.uri)", "error": "\(error)"])
                    handler.respond(
                        context, head, .internalServerError, json: ["error": "the database query failed: \(error)"])
                }
            }
        }
    }

    private func respond(
        _ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus,
        json: [String: String]
    ) {
        let body = (try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])) ?? Data()
        respond(context, request, status, contentType: "application/json", body: Array(body))
    }

    private func respond(
        _ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus, contentType: String,
        body: [UInt8]
    ) {
        // A 204 has neither a body nor a length (RFC 9110, section 8.6).
        var headers =
            status == .noContent
            ? HTTPHeaders() : HTTPHeaders([("content-type", contentType), ("content-length", "\(body.count)")])
        if status == .unauthorized { headers.add(name: "www-authenticate", value: "Bearer") }
        if !request.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))),
            promise: nil)
        if request.method != .HEAD && status != .noContent {
            context.write(
                wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let keepAlive = request.isKeepAlive
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { [channel = context.channel] _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }

    /// The path and the query's parameters, percent-decoded (`+` as a space). A parameter that
    /// does not decode to UTF-8 is refused, never read as empty: a filter must not silently widen.
    static func split(_ uri: String) throws(APIError) -> (String, [String: String]) {
        guard let question = uri.firstIndex(of: "?") else { return (uri, [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: question)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = String(parts[0]).removingPercentEncoding else {
                throw APIError("a query parameter's name is not valid percent-encoded UTF-8: \(parts[0].prefix(64))")
            }
            guard
                let value = parts.count > 1
                    ? String(parts[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding : ""
            else {
                throw APIError("the query parameter \(name.prefix(64)) is not valid percent-encoded UTF-8")
            }
            query[name] = value
        }
        return (String(uri[..<question]), query)
    }

    /// The latest `since` accepted, in Unix milliseconds: the end of the year 9999.
    static let latestSinceMs: Int64 = 253_402_300_799_999

    /// `since`: Unix seconds (or milliseconds), an ISO 8601 time, or an age such as `30m`, `24h`, `7d`.
    /// Anything that is not a time between 1970 and 9999 (NaN, an infinity, a negative number, an
    /// age reaching before 1970) is refused with a message naming `since`.
    static func since(_ text: String?, now: Date = Date()) throws(APIError) -> Int64? {
        guard let text, !text.isEmpty else { return nil }
        let outOfRange = APIError(
            "since must be a time from 1970 to 9999: Unix seconds, an ISO 8601 time, or an age such as 30m, 24h or 7d; not \(text.prefix(64))"
        )
        func milliseconds(_ value: Double) throws(APIError) -> Int64 {
            guard let ms = Int64(checkedTruncating: value), (0...latestSinceMs).contains(ms) else { throw outOfRange }
            return ms
        }
        if let number = Double(text) {
            guard number.isFinite else { throw outOfRange }
            return try milliseconds(number > 1e12 ? number : number * 1000)
        }
        if let unit = text.last, let amount = Double(text.dropLast()) {
            let seconds: Double? =
                switch unit {
                case "s": amount
                case "m": amount * 60
                case "h": amount * 3600
                case "d": amount * 86_400
                default: nil
                }
            if let seconds {
                guard seconds.isFinite, seconds >= 0 else { throw outOfRange }
                return try milliseconds((now.timeIntervalSince1970 - seconds) * 1000)
            }
        }
        if let date = try? Date(text, strategy: .iso8601) {
            return try milliseconds(date.timeIntervalSince1970 * 1000)
        }
        throw APIError(
            "since must be Unix seconds, an ISO 8601 time, or an age such as 30m, 24h or 7d; not \(text.prefix(64))")
    }

    static func limit(_ text: String?) throws(APIError) -> Int {
        guard let text else { return 100 }
        guard let limit = Int(text), (1...1_000).contains(limit) else {
            throw APIError("limit must be a whole number from 1 to 1000, not \(text.prefix(64))")
        }
        return limit
    }
}

struct APIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
