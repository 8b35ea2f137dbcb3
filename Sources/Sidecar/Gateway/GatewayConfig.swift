import Foundation

/// The sidecar as a gateway, as its configuration file describes it: the listeners, the client
/// keys, and the providers requests are routed to. The file's keys are openproxy's (a file written
/// for it works unchanged), with LLMTap's beside them; `GatewayConfigParser` reads it.
struct GatewayConfig: Sendable {
    var certFile: String?
    var privateKeyFile: String?
    var httpsPort: Int?
    var httpsBindAddress = "0.0.0.0"
    var httpPort: Int?
    var httpBindAddress = "0.0.0.0"
    /// Client keys accepted for every provider.
    var authKeys: [KeySource] = []
    var healthCheck = HealthCheckSchedule()
    var httpMaxHeaderSize: Int?
    var connectTunnelEnabled = false
    var providers: [ProviderConfig] = []
    /// The `llmtap:` section: settings of the command's own options, by the environment variable
    /// each option reads. A flag or a variable that is set wins over them.
    var settings: [String: FileSetting] = [:]

    /// Active health checks for every provider that has a probe.
    struct HealthCheckSchedule: Sendable, Equatable {
        var enabled = false
        var intervalSeconds: Double = 30
    }
}

/// A setting the file gives an option, and where: named in an error about its value.
struct FileSetting: Sendable, Equatable {
    var value: String
    /// `llmtap.collector`, as the file spells it.
    var key: String
    var line: Int
}

/// One provider: where it is, how its credential goes, and when it serves.
struct ProviderConfig: Sendable {
    enum Kind: String, Sendable, CaseIterable {
        case openai, anthropic, gemini, forward
    }

    /// Its stable label in metrics and records.
    var name: String
    /// The line of the file it starts at.
    var line: Int
    var kind: Kind
    /// The `Host` header that routes to it (with or without a port); nil: any host.
    var host: String?
    /// Requests whose path starts with it go here, sent upstream without it (`/anthropic`).
    var pathPrefix: String?
    /// Where it really is.
    var endpoint: String
    var port = 443
    var tls = true
    var weight = 1.0
    /// Its credentials, one chosen per request by weight; none for a `forward` provider.
    var keys: [WeightedKey] = []
    /// Client keys accepted for this provider only.
    var authKeys: [KeySource] = []
    /// Serves only while no primary provider of its route is healthy.
    var isFallback = false
    var probe: HealthProbe?
    /// Further providers a request may go to when one fails before any byte of it got there.
    var retries = 1
    /// Statuses (429, 502, 503, 504) that send a request, not yet answered to the client, elsewhere.
    var retryOn: Set<Int> = []
    /// How long a command's key is used before the command runs again.
    var refreshIntervalSeconds: Double = 3600

    static let retryableStatuses: Set<Int> = [429, 502, 503, 504]
}

struct WeightedKey: Sendable, Equatable {
    var source: KeySource
    var weight: Double
}

/// The request a health check sends to a provider; a 2xx answer means healthy.
struct HealthProbe: Sendable, Equatable {
    var method = "GET"
    var path = "/"
    var body = ""
    var headers: [(name: String, value: String)] = []

    static func == (lhs: HealthProbe, rhs: HealthProbe) -> Bool {
        lhs.method == rhs.method && lhs.path == rhs.path && lhs.body == rhs.body
            && lhs.headers.elementsEqual(rhs.headers) { $0.name == $1.name && $0.value == $1.value }
    }
}

/// Where a key's value comes from. Its description never holds the key.
enum KeySource: Sendable, Equatable, CustomStringConvertible {
    case literal(String)
    /// `env:NAME`: read once, when the file is loaded.
    case environment(String)
    /// `file:PATH`: read once, when the file is loaded, its trailing newline dropped.
    case file(String)
    /// `$(command)`: its output is the key (an OAuth token, say), run again after the refresh
    /// interval or when the upstream answers 401.
    case command(String)

    init(_ text: String) {
        if text.hasPrefix("env:") {
            self = .environment(String(text.dropFirst(4)))
        } else if text.hasPrefix("file:") {
            self = .file(String(text.dropFirst(5)))
        } else if text.hasPrefix("$("), text.hasSuffix(")"), text.count > 3 {
            self = .command(String(text.dropFirst(2).dropLast()))
        } else {
            self = .literal(text)
        }
    }

    var description: String {
        switch self {
        case .literal: "a literal key"
        case .environment(let name): "env:\(name)"
        case .file(let path): "file:\(path)"
        case .command: "a $(command) key"
        }
    }
}
