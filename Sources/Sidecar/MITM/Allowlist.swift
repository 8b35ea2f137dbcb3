import Foundation
import Wire

/// The hosts MITM mode decrypts: exact names and `*.suffix` patterns, compared without case.
struct Allowlist: Sendable, Equatable, CustomStringConvertible {
    static let defaultHosts = "api.openai.com,api.anthropic.com,generativelanguage.googleapis.com"

    private let exact: Set<String>
    /// For `*.example.com`: ".example.com" (a subdomain, never the bare name).
    private let suffixes: [String]

    init(_ list: String) throws(ConfigurationError) {
        var exact: Set<String> = []
        var suffixes: [String] = []
        for entry in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() })
        where !entry.isEmpty {
            if entry.hasPrefix("*.") {
                let suffix = String(entry.dropFirst(1))
                guard suffix.count > 1, !suffix.dropFirst().contains("*") else {
                    throw ConfigurationError("--allowlist: \(entry) is not a valid pattern")
                }
                suffixes.append(suffix)
            } else {
                guard !entry.contains("*"), !entry.contains("/"), !entry.contains(":") else {
                    throw ConfigurationError("--allowlist takes host names and *.suffix patterns, not \(entry)")
                }
                exact.insert(entry)
            }
        }
        self.exact = exact
        self.suffixes = suffixes
    }

    func contains(_ host: String) -> Bool {
        let host = host.lowercased()
        return exact.contains(host) || suffixes.contains { host.hasSuffix($0) }
    }

    var description: String {
        (exact.sorted() + suffixes.map { "*" + $0 }).joined(separator: ",")
    }
}
