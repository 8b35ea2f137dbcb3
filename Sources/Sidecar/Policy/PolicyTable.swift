import Crypto
import Foundation
import Wire

/// One virtual key, as a request needs it.
struct KeyEntry: Sendable {
    let keyID: String
    let projectID: String
    /// Unix milliseconds; 0 never expires.
    let expiresAtMs: Int64
    let revoked: Bool
    let ratePerHour: Int
    let maxParallel: Int
    let allowedModels: Set<String>
}

struct ProjectEntry: Sendable {
    let projectID: String
    let name: String
    let credentialRef: String
    /// This sidecar's upstream credential for the project, from its own configuration; nil when it has none.
    let credential: String?
    let denied: Bool
    let denialReason: String
    let deniedUntilMs: Int64
}

/// The policy state at one version, immutable: the subscriber builds a new one for every change
/// and swaps it in, so a request's lookup never waits for an update.
final class PolicyTable: Sendable {
    let keys: [KeyHash: KeyEntry]
    let projects: [String: ProjectEntry]

    init(keys: [KeyHash: KeyEntry], projects: [String: ProjectEntry]) {
        self.keys = keys
        self.projects = projects
    }

    convenience init(_ replica: PolicyReplica, credentials: UpstreamCredentials) {
        var keys: [KeyHash: KeyEntry] = [:]
        keys.reserveCapacity(replica.keys.count)
        for key in replica.keys.values {
            guard let hash = KeyHash(key.secretSha256) else { continue }
            keys[hash] = KeyEntry(
                keyID: key.keyID, projectID: key.projectID, expiresAtMs: key.expiresUnixMs, revoked: key.revoked,
                ratePerHour: Int(key.rateLimitPerHour), maxParallel: Int(key.maxParallel),
                allowedModels: Set(key.allowedModels)
            )
        }
        let projects = replica.projects.mapValues { project in
            ProjectEntry(
                projectID: project.projectID, name: project.name, credentialRef: project.credentialRef,
                credential: credentials.secret(for: project.credentialRef), denied: project.denied,
                denialReason: project.denialReason, deniedUntilMs: project.deniedUntilUnixMs
            )
        }
        self.init(keys: keys, projects: projects)
    }
}
