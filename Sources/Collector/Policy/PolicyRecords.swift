import Foundation
import GRDB

/// A project: the unit that owns virtual keys, an upstream credential and a budget.
struct ProjectRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "project"

    var id: String
    var name: String
    /// The name under which each sidecar holds this project's upstream credential
    /// (LLMTAP_CREDENTIAL_<NAME> or its --credentials-file). The secret is never here.
    var credentialRef: String
    var createdAtMs: Int64
    var budgetPeriod: BudgetPeriod?
    var budgetMaxUSD: Double?
    var budgetMaxTokens: Int64?
    var denialLiftedPeriodStartMs: Int64?

    enum CodingKeys: String, CodingKey {
        case id, name
        case credentialRef = "credential_ref"
        case createdAtMs = "created_at_ms"
        case budgetPeriod = "budget_period"
        case budgetMaxUSD = "budget_max_usd"
        case budgetMaxTokens = "budget_max_tokens"
        case denialLiftedPeriodStartMs = "denial_lifted_period_start_ms"
    }

    var hasBudget: Bool { budgetPeriod != nil && (budgetMaxUSD != nil || budgetMaxTokens != nil) }
}

/// A virtual key: what an app sends instead of the provider's key. Only its SHA-256 is kept.
struct VirtualKeyRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "virtual_key"

    var id: String
    var projectID: String
    var secretSHA256: Data
    var createdAtMs: Int64
    var expiresAtMs: Int64
    var revoked: Bool
    var revokedAtMs: Int64?
    var rateLimitPerHour: Int?
    var maxParallel: Int?
    /// A JSON array of model names; empty for any model.
    var allowedModels: String

    enum CodingKeys: String, CodingKey {
        case id
        case projectID = "project_id"
        case secretSHA256 = "secret_sha256"
        case createdAtMs = "created_at_ms"
        case expiresAtMs = "expires_at_ms"
        case revoked
        case revokedAtMs = "revoked_at_ms"
        case rateLimitPerHour = "rate_limit_per_hour"
        case maxParallel = "max_parallel"
        case allowedModels = "allowed_models"
    }

    var allowedModelList: [String] {
        (try? JSONDecoder().decode([String].self, from: Data(allowedModels.utf8))) ?? []
    }
}

/// The span a budget counts over, in UTC.
enum BudgetPeriod: String, Codable, Sendable, CaseIterable, DatabaseValueConvertible {
    case day
    case month
    case total

    /// The start of the period holding `ms` (Unix milliseconds), and the start of the next one
    /// (nil for `total`, which never ends).
    func bounds(containing ms: Int64) -> (start: Int64, end: Int64?) {
        switch self {
        case .total:
            return (0, nil)
        case .day:
            let start = ms - ((ms % 86_400_000) + 86_400_000) % 86_400_000
            return (start, start + 86_400_000)
        case .month:
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = TimeZone(identifier: "UTC")!
            let date = Date(timeIntervalSince1970: Double(ms) / 1000)
            let components = calendar.dateComponents([.year, .month], from: date)
            let start = calendar.date(from: components)!
            let end = calendar.date(byAdding: .month, value: 1, to: start)!
            return (Int64(start.timeIntervalSince1970 * 1000), Int64(end.timeIntervalSince1970 * 1000))
        }
    }
}

/// Key material: `llmtap-` and 43 base64url characters (256 random bits), its id, and its hash.
enum VirtualKeySecret {
    static let prefix = "llmtap-"

    static func make() -> (secret: String, id: String) {
        (prefix + base64URL(randomBytes(32)), randomID(prefix: "key_", bytes: 8))
    }

    /// An id that says nothing about a secret: `prefix` and `bytes` random bytes in hex.
    static func randomID(prefix: String, bytes: Int) -> String {
        prefix + randomBytes(bytes).map { String(format: "%02x", $0) }.joined()
    }

    private static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(
                of: "=", with: "")
    }
}
