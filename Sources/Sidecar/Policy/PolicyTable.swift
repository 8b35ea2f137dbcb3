import Crypto
import Foundation
import Wire

/// A SHA-256 digest as four words: hashed and compared without touching the heap.
struct KeyHash: Hashable, Sendable {
    let a: UInt64, b: UInt64, c: UInt64, d: UInt64

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count == 32 else { return nil }
        a = bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        b = bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        c = bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        d = bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
    }

    init?(_ data: Data) {
        guard let hash = data.withUnsafeBytes({ KeyHash($0) }) else { return nil }
        self = hash
    }

    /// The hash of a key as presented: what the collector stores and sends instead of the key.
    static func of(_ key: String) -> KeyHash {
        var key = key
        let digest = key.withUTF8 { SHA256.hash(data: UnsafeRawBufferPointer($0)) }
        return digest.withUnsafeBytes { KeyHash($0)! }
    }
}

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

/// The upstream credentials this sidecar holds, by the name projects refer to them by
/// (`credential_ref`). They come from its own environment (`LLMTAP_CREDENTIAL_<NAME>`, the name
/// upper-cased with `-` and `.` as `_`) or `--credentials-file` (`name=secret` lines), never from
/// the policy channel.
struct UpstreamCredentials: Sendable {
    private let byName: [String: String]

    init(byName: [String: String]) {
        self.byName = byName
    }

    static func load(file: String?, environment: [String: String]) throws -> UpstreamCredentials {
        var byName: [String: String] = [:]
        for (name, value) in environment where name.hasPrefix("LLMTAP_CREDENTIAL_") && !value.isEmpty {
            byName[String(name.dropFirst("LLMTAP_CREDENTIAL_".count))] = value
        }
        if let file {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
                if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
                guard let equals = trimmed.firstIndex(of: "="), equals != trimmed.startIndex else {
                    // The line may hold a secret: say where it is, not what it says.
                    throw CredentialsFileError(description: "\(file):\(number + 1): expected name=secret")
                }
                byName[normalized(String(trimmed[..<equals]))] = String(trimmed[trimmed.index(after: equals)...])
            }
        }
        return UpstreamCredentials(byName: byName)
    }

    func secret(for reference: String) -> String? {
        byName[Self.normalized(reference)]
    }

    var names: [String] { byName.keys.sorted() }

    static func normalized(_ name: String) -> String {
        String(name.uppercased().map { $0 == "-" || $0 == "." ? "_" : $0 })
    }

    struct CredentialsFileError: Error, CustomStringConvertible {
        let description: String
    }
}
