import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// A bearer token the collector's HTTP routes require (`MANAGEMENT_TOKEN`, `--api-token`), held
/// only as its SHA-256 and compared in constant time: comparing digests of equal length leaks
/// neither the token's length nor where it differs.
struct AccessToken: Sendable {
    /// Shorter tokens are refused at start: the management token guards key creation for the whole fleet.
    static let minimumLength = 16
    private let digest: [UInt8]

    init?(_ token: String) {
        guard token.utf8.count >= Self.minimumLength else { return nil }
        digest = Array(SHA256.hash(data: Data(token.utf8)))
    }

    /// Whether an `Authorization` header carries the token as a Bearer credential.
    func authorizes(_ authorization: String?) -> Bool {
        guard let authorization, authorization.count > 7, authorization.prefix(7).lowercased() == "bearer " else {
            return false
        }
        let presented = Array(SHA256.hash(data: Data(authorization.dropFirst(7).utf8)))
        var difference: UInt8 = 0
        for (a, b) in zip(presented, digest) { difference |= a ^ b }
        return difference == 0
    }
}

/// Who may read `/api/*`: anyone, when no API token is set; else a bearer of the API token or of
/// the management token. `/metrics`, `/healthz` and `/readyz` stay open for probes and Prometheus.
struct APIAccess: Sendable {
    var apiToken: AccessToken?
    var managementToken: AccessToken?

    var isOpen: Bool { apiToken == nil }

    func authorizes(_ authorization: String?) -> Bool {
        guard let apiToken else { return true }
        // Both are checked, always, so the time taken says nothing about which one matched.
        let api = apiToken.authorizes(authorization)
        let management = managementToken?.authorizes(authorization) ?? false
        return api || management
    }
}

/// `/manage/...`: projects, virtual keys, budgets and usage. Every route needs the management
/// token. The work runs on the policy engine's thread (SQLite writes included), never on the loop.
struct ManagementAPI: Sendable {
    struct Response: Sendable {
        var status: HTTPResponseStatus
        var body: [UInt8]
    }

    let policy: (any PolicyRunning)?
    let token: AccessToken?
    var logger = Logger(label: "llmtap.collector.manage")

    func handle(
        method: HTTPMethod, path: String, query: [String: String], headers: HTTPHeaders, body: [UInt8],
        eventLoop: any EventLoop
    ) -> EventLoopFuture<Response> {
        guard let policy, let token else {
            return eventLoop.makeSucceededFuture(
                Self.error(
                    .serviceUnavailable, "the management API is off: start the collector with MANAGEMENT_TOKEN set"))
        }
        guard token.authorizes(headers.first(name: "authorization")) else {
            return eventLoop.makeSucceededFuture(
                Self.error(
                    .unauthorized, "a valid management token is required (Authorization: Bearer <MANAGEMENT_TOKEN>)"))
        }
        let route: @Sendable (any PolicyCommands) throws -> Response
        do {
            route = try Self.route(method: method, path: path, query: query, body: body)
        } catch let error as PolicyError {
            return eventLoop.makeSucceededFuture(Self.response(for: error))
        } catch let error as MethodNotAllowed {
            return eventLoop.makeSucceededFuture(Self.error(.methodNotAllowed, "\(error)"))
        } catch {
            // Every refusal above is a PolicyError or MethodNotAllowed: anything else is a fault here.
            logger.error(
                "a management request failed",
                metadata: ["method": "\(method.rawValue)", "path": "\(path)", "error": "\(error)"])
            return eventLoop.makeSucceededFuture(Self.error(.internalServerError, "the request failed: \(error)"))
        }
        let promise = eventLoop.makePromise(of: Response.self)
        policy.submit { core in
            do {
                promise.succeed(try route(core))
            } catch let error as PolicyError {
                promise.succeed(Self.response(for: error))
            } catch {
                logger.error(
                    "a management change could not be stored",
                    metadata: ["method": "\(method.rawValue)", "path": "\(path)", "error": "\(error)"])
                promise.succeed(Self.error(.internalServerError, "the change could not be stored: \(error)"))
            }
        }
        return promise.futureResult
    }

    /// Validates the request on the loop and returns the work to do on the engine's thread.
    private static func route(method: HTTPMethod, path: String, query: [String: String], body: [UInt8]) throws
        -> @Sendable (any PolicyCommands) throws -> Response
    {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst(2).map(String.init)
        switch (method, parts) {
        case (.POST, ["projects"]):
            let request = try decode(NewProject.self, body)
            let name = request.name.trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, name.count <= 128 else {
                throw PolicyError.invalid("name must be 1 to 128 characters")
            }
            let credentialRef = request.credentialRef ?? "default"
            guard isCredentialRef(credentialRef) else {
                throw PolicyError.invalid(
                    "credential_ref must be 1 to 64 letters, digits, '-', '_' or '.': it names a credential the sidecars hold, not the credential itself"
                )
            }
            return { core in
                json(.created, projectJSON(try core.createProject(name: name, credentialRef: credentialRef)))
            }
        case (.GET, ["projects"]):
            return { core in
                json(
                    .ok,
                    [
                        "projects": core.projects().map(projectJSON)
                    ])
            }
        case (.DELETE, let parts) where parts.count == 2 && parts[0] == "projects":
            let id = parts[1]
            return { core in
                try core.deleteProject(id: id)
                return Response(status: .noContent, body: [])
            }
        case (.PUT, let parts) where parts.count == 3 && parts[0] == "projects" && parts[2] == "budget":
            let id = parts[1]
            let request = try decode(NewBudget.self, body)
            guard let period = BudgetPeriod(rawValue: request.period) else {
                throw PolicyError.invalid("period must be day, month or total")
            }
            guard request.maxUSD != nil || request.maxTokens != nil else {
                throw PolicyError.invalid("give max_usd, max_tokens or both")
            }
            if let max = request.maxUSD, !(max >= 0 && max <= Self.maxBudgetUSD) {
                throw PolicyError.invalid("max_usd must be zero or more, up to \(Int(Self.maxBudgetUSD)), not \(max)")
            }
            if let max = request.maxTokens, !(0...Self.maxBudgetTokens).contains(max) {
                throw PolicyError.invalid("max_tokens must be zero or more, up to \(Self.maxBudgetTokens), not \(max)")
            }
            return { core in
                let project = try core.setBudget(
                    projectID: id, period: period, maxUSD: request.maxUSD, maxTokens: request.maxTokens)
                return json(.ok, projectJSON(project))
            }
        case (.DELETE, let parts) where parts.count == 3 && parts[0] == "projects" && parts[2] == "budget":
            let id = parts[1]
            return { core in
                try core.setBudget(projectID: id, period: nil, maxUSD: nil, maxTokens: nil)
                return Response(status: .noContent, body: [])
            }
        case (.DELETE, let parts) where parts.count == 3 && parts[0] == "projects" && parts[2] == "denial":
            let id = parts[1]
            return { core in
                try core.liftDenial(projectID: id)
                return Response(status: .noContent, body: [])
            }
        case (.POST, ["tokens"]):
            let request = try decode(NewToken.self, body)
            guard request.durationHours > 0, request.durationHours <= 87_600, request.durationHours.isFinite else {
                throw PolicyError.invalid("duration_hours must be more than 0 and at most 87600 (ten years)")
            }
            // The wire carries both as uint32: a larger value must be refused, not cut down silently.
            if let limit = request.rateLimitPerHour, !(1...Self.maxRatePerHour).contains(limit) {
                throw PolicyError.invalid("rate_limit_per_hour must be 1 to \(Self.maxRatePerHour), not \(limit)")
            }
            if let limit = request.maxParallel, !(1...Self.maxParallel).contains(limit) {
                throw PolicyError.invalid("max_parallel must be 1 to \(Self.maxParallel), not \(limit)")
            }
            let models = request.allowedModels ?? []
            guard models.allSatisfy({ !$0.isEmpty && $0.count <= 256 }), models.count <= 1_000 else {
                throw PolicyError.invalid("allowed_models must be a list of model names")
            }
            let newKey = NewKey(
                projectID: request.projectID, durationHours: request.durationHours,
                rateLimitPerHour: request.rateLimitPerHour,
                maxParallel: request.maxParallel, allowedModels: models
            )
            return { core in
                let (secret, key) = try core.createKey(newKey)
                return json(
                    .created,
                    [
                        "token": secret, "expires_at": iso8601(key.expiresAtMs), "key_id": key.id,
                        "project_id": key.projectID,
                    ])
            }
        case (.DELETE, ["tokens"]):
            let request = try decode(RevokeToken.self, body)
            guard request.token != nil || request.keyID != nil else {
                throw PolicyError.invalid("give the token, or its key_id")
            }
            return { core in
                _ = try core.revokeKey(secret: request.token, keyID: request.keyID)
                return Response(status: .noContent, body: [])
            }
        case (.GET, ["usage"]):
            let projectID = query["project_id"]
            return { core in
                if let projectID {
                    guard let project = core.project(id: projectID) else {
                        throw PolicyError.notFound("no project \(projectID)")
                    }
                    return json(.ok, try usageJSON(project, core))
                }
                return json(
                    .ok,
                    [
                        "projects": try core.projects().map { try usageJSON($0, core) }
                    ])
            }
        case (_, ["projects"]), (_, ["tokens"]), (_, ["usage"]):
            throw MethodNotAllowed(method: method)
        default:
            throw PolicyError.notFound("no such management route: \(method.rawValue) \(path)")
        }
    }

    static let maxRatePerHour = 1_000_000_000
    static let maxParallel = 1_000_000
    static let maxBudgetUSD: Double = 1e12
    static let maxBudgetTokens: Int64 = 1 << 50

    private struct MethodNotAllowed: Error, CustomStringConvertible {
        let method: HTTPMethod
        var description: String { "\(method.rawValue) is not served on this route" }
    }

    private struct NewProject: Decodable {
        var name: String
        var credentialRef: String?
        enum CodingKeys: String, CodingKey {
            case name
            case credentialRef = "credential_ref"
        }
    }

    private struct NewBudget: Decodable {
        var period: String
        var maxUSD: Double?
        var maxTokens: Int64?
        enum CodingKeys: String, CodingKey {
            case period
            case maxUSD = "max_usd"
            case maxTokens = "max_tokens"
        }
    }

    private struct NewToken: Decodable {
        var projectID: String
        var durationHours: Double
        var rateLimitPerHour: Int?
        var maxParallel: Int?
        var allowedModels: [String]?
        enum CodingKeys: String, CodingKey {
            case projectID = "project_id"
            case durationHours = "duration_hours"
            case rateLimitPerHour = "rate_limit_per_hour"
            case maxParallel = "max_parallel"
            case allowedModels = "allowed_models"
        }
    }

    private struct RevokeToken: Decodable {
        var token: String?
        var keyID: String?
        enum CodingKeys: String, CodingKey {
            case token
            case keyID = "key_id"
        }
    }

    private static func isCredentialRef(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 64
            && text.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7A) || byte == 0x2D
                    || byte == 0x5F || byte == 0x2E
            }
    }

    /// Decodes a JSON body, with a message a person can act on when it does not fit.
    private static func decode<T: Decodable>(_ type: T.Type, _ body: [UInt8]) throws -> T {
        guard !body.isEmpty else { throw PolicyError.invalid("the request needs a JSON object body") }
        // No body here nests deeper than a list in an object: a deeper one is refused before a
        // recursive decoder spends its stack on it.
        guard nestingDepth(body) <= maxNesting else {
            throw PolicyError.invalid("the body nests objects or lists deeper than \(maxNesting) levels")
        }
        do {
            return try JSONDecoder().decode(type, from: Data(body))
        } catch let error as DecodingError {
            func field(_ path: [any CodingKey], _ key: (any CodingKey)? = nil) -> String {
                ((path + (key.map { [$0] } ?? [])).map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }).joined(
                    separator: ".")
            }
            switch error {
            case .keyNotFound(let key, let context):
                throw PolicyError.invalid("missing field \"\(field(context.codingPath, key))\"")
            case .typeMismatch(let expected, let context):
                if context.codingPath.isEmpty { throw PolicyError.invalid("the body must be a JSON object") }
                throw PolicyError.invalid("field \"\(field(context.codingPath))\" must be a \(typeName(expected))")
            case .valueNotFound(let expected, let context):
                throw PolicyError.invalid(
                    "field \"\(field(context.codingPath))\" must be a \(typeName(expected)), not null")
            case .dataCorrupted(let context):
                if context.codingPath.isEmpty { throw PolicyError.invalid("the body is not valid JSON") }
                throw PolicyError.invalid(
                    "field \"\(field(context.codingPath))\" is not valid: \(context.debugDescription)")
            @unknown default:
                throw PolicyError.invalid("the body does not fit: \(error)")
            }
        }
    }

    static let maxNesting = 16

    /// The deepest nesting of objects and lists in a body, strings skipped.
    static func nestingDepth(_ bytes: [UInt8]) -> Int {
        JSONScan.nestingDepth(bytes, limit: maxNesting)
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "string"
        case is Double.Type, is Int.Type, is Int64.Type: "number"
        case is [String].Type, is [Any].Type: "list"
        default: "\(type)"
        }
    }

    private static func projectJSON(_ view: ProjectView) -> [String: Any] {
        let project = view.project
        var out: [String: Any] = [
            "id": project.id, "name": project.name, "credential_ref": project.credentialRef,
            "created_at": iso8601(project.createdAtMs), "keys": view.activeKeys,
        ]
        if let period = project.budgetPeriod {
            var budget: [String: Any] = ["period": period.rawValue]
            if let max = project.budgetMaxUSD { budget["max_usd"] = max }
            if let max = project.budgetMaxTokens { budget["max_tokens"] = max }
            out["budget"] = budget
        } else {
            out["budget"] = NSNull()
        }
        if let denial = view.denial {
            out["denied"] = true
            out["denial_reason"] = denial.reason
            if let until = denial.until { out["denied_until"] = iso8601(until) }
        } else {
            out["denied"] = false
        }
        return out
    }

    private static func usageJSON(_ view: ProjectView, _ core: any PolicyCommands) throws -> [String: Any] {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let spend = view.spend
        var out = projectJSON(view)
        out["spend"] = [
            "day": ["usd": spend.dayUSD, "tokens": spend.dayTokens, "since": iso8601(spend.dayStartMs)],
            "month": ["usd": spend.monthUSD, "tokens": spend.monthTokens, "since": iso8601(spend.monthStartMs)],
            "total": ["usd": spend.totalUSD, "tokens": spend.totalTokens],
        ]
        let since = (view.project.budgetPeriod ?? .month).bounds(containing: now).start
        out["keys_usage"] = try core.keyUsage(projectID: view.project.id, sinceMs: since).map {
            usage -> [String: Any] in
            [
                "key_id": usage.keyID, "requests": usage.requests, "rejected": usage.rejected,
                "cost_usd": usage.costUSD, "tokens": usage.tokens,
            ]
        }
        out["keys_usage_since"] = iso8601(since)
        return out
    }

    static func iso8601(_ ms: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    private static func json(_ status: HTTPResponseStatus, _ object: [String: Any]) -> Response {
        let body =
            (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data("{}".utf8)
        return Response(status: status, body: Array(body))
    }

    static func error(_ status: HTTPResponseStatus, _ message: String) -> Response {
        json(status, ["error": ["message": message, "status": Int(status.code)]])
    }

    private static func response(for error: PolicyError) -> Response {
        switch error {
        case .invalid(let message): Self.error(.badRequest, message)
        case .notFound(let message): Self.error(.notFound, message)
        case .conflict(let message): Self.error(.conflict, message)
        }
    }
}
