import Foundation

/// What the management API may ask of the policy, and all it may read: it never touches the
/// engine's tables. Each call runs on the engine's thread (`PolicyRunning.submit`).
protocol PolicyCommands {
    /// Every project, oldest first.
    func projects() -> [ProjectView]
    func project(id: String) -> ProjectView?
    func createProject(name: String, credentialRef: String) throws -> ProjectView
    func deleteProject(id: String) throws
    /// Sets a project's budget, or with a nil period removes it.
    @discardableResult
    func setBudget(projectID: String, period: BudgetPeriod?, maxUSD: Double?, maxTokens: Int64?) throws
        -> ProjectView
    /// Lifts a project's budget denial until its period ends.
    func liftDenial(projectID: String) throws
    func createKey(_ request: NewKey) throws -> (secret: String, key: VirtualKeyRecord)
    /// Revokes the key with this secret, or this id.
    @discardableResult
    func revokeKey(secret: String?, keyID: String?) throws -> VirtualKeyRecord
    /// Requests and spend per key of a project since `sinceMs`, from storage.
    func keyUsage(projectID: String, sinceMs: Int64) throws -> [KeyUsage]
}

/// Runs commands on the thread that owns the policy (the engine, or a test's stand-in).
protocol PolicyRunning: Sendable {
    func submit(_ job: @escaping @Sendable (any PolicyCommands) -> Void)
}

/// A project as the management API shows it.
struct ProjectView: Sendable {
    var project: ProjectRecord
    /// Keys not revoked.
    var activeKeys: Int
    var spend: ProjectSpend
    var denial: Budget.Denial?
}

struct NewKey: Sendable {
    var projectID: String
    var durationHours: Double
    var rateLimitPerHour: Int?
    var maxParallel: Int?
    var allowedModels: [String]
}

/// Why a management request failed; the HTTP layer turns each into a status.
enum PolicyError: Error, CustomStringConvertible {
    case invalid(String)
    case notFound(String)
    case conflict(String)

    var description: String {
        switch self {
        case .invalid(let text), .notFound(let text), .conflict(let text): text
        }
    }
}
