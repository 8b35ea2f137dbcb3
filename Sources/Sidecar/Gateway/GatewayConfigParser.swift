import Foundation
import X509
import Yams

/// One thing wrong with a configuration file, at its line (when there is one).
struct ConfigProblem: Sendable, Equatable, CustomStringConvertible {
    var line: Int?
    var message: String

    var description: String { line.map { "line \($0): \(message)" } ?? message }
}

/// A configuration file that can't be used, with every problem found in it.
struct ConfigFileError: Error, Sendable, CustomStringConvertible {
    var path: String
    var problems: [ConfigProblem]

    /// One problem a line, each led by the file and its line, as a compiler says it.
    var description: String {
        problems.map { problem in
            problem.line.map { "\(path):\($0): \(problem.message)" } ?? "\(path): \(problem.message)"
        }.joined(separator: "\n")
    }
}

/// Reads a gateway configuration (YAML) strictly: an unknown key, a value of the wrong kind, a
/// weight that is not positive, two providers of one name, a provider without an endpoint, an
/// HTTPS port without its certificate, a key file that is not the certificate's, an `env:`
/// variable that is not set: each is a problem with its line, and all are reported at once.
///
/// No message holds a key's value, nor the YAML around a problem (it could be a key's line).
struct GatewayConfigParser {
    /// Where `env:` keys and the checks of `file:` ones look.
    var environment: [String: String]
    private(set) var problems: [ConfigProblem] = []

    init(environment: [String: String]) {
        self.environment = environment
    }

    /// Reads and checks the file at `path`.
    static func load(path: String, environment: [String: String]) throws(ConfigFileError) -> GatewayConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigFileError(path: path, problems: [ConfigProblem(message: "cannot read the file: \(error)")])
        }
        var parser = GatewayConfigParser(environment: environment)
        let config = parser.parse(text)
        guard parser.problems.isEmpty, let config else { throw ConfigFileError(path: path, problems: parser.problems) }
        return config
    }

    static let topLevelKeys: Set<String> = [
        "cert_file", "private_key_file", "https_port", "https_bind_address", "http_port", "http_bind_address",
        "auth_keys", "health_check", "http_max_header_size", "connect_tunnel_enabled", "providers", "llmtap",
    ]
    static let providerKeys: Set<String> = [
        "type", "host", "endpoint", "port", "tls", "weight", "api_key", "api_keys", "auth_keys", "is_fallback",
        "health_check", "name", "path_prefix", "retries", "retry_on", "refresh_interval",
    ]

    /// The `llmtap:` section's keys: the command's options, by the variable each reads.
    static let optionVariables: [String: String] = [
        "mode": "LLMTAP_MODE", "mitm_listen": "MITM_LISTEN_ADDR", "allowlist": "LLMTAP_ALLOWLIST",
        "deny_unlisted": "LLMTAP_DENY_UNLISTED", "mitm_ports": "LLMTAP_MITM_PORTS", "ca_dir": "LLMTAP_CA_DIR",
        "listen": "LISTEN_ADDR", "upstream": "UPSTREAM", "upstream_ca_file": "UPSTREAM_CA_FILE",
        "collector": "LLMTAP_COLLECTOR", "policy": "LLMTAP_POLICY",
        "require_virtual_key": "LLMTAP_REQUIRE_VIRTUAL_KEY", "credentials_file": "LLMTAP_CREDENTIALS_FILE",
        "app": "LLMTAP_APP", "sidecar_id": "LLMTAP_SIDECAR_ID", "max_capture_bytes": "LLMTAP_MAX_CAPTURE_BYTES",
        "max_header_bytes": "LLMTAP_MAX_HEADER_BYTES", "upstream_timeout": "LLMTAP_UPSTREAM_TIMEOUT",
        "connect_timeout": "LLMTAP_CONNECT_TIMEOUT", "drain_timeout": "LLMTAP_DRAIN_TIMEOUT",
        "client_timeout": "LLMTAP_CLIENT_TIMEOUT", "tenant_key": "LLMTAP_TENANT_KEY", "threads": "LLMTAP_THREADS",
        "heartbeat_interval": "LLMTAP_HEARTBEAT_INTERVAL", "max_queued_records": "LLMTAP_MAX_QUEUED_RECORDS",
        "max_queued_bytes": "LLMTAP_MAX_QUEUED_BYTES", "max_connections": "LLMTAP_MAX_CONNECTIONS",
        "max_concurrent_streams": "LLMTAP_MAX_CONCURRENT_STREAMS", "log_level": "LOG_LEVEL",
        "max_websocket_message_bytes": "LLMTAP_MAX_WEBSOCKET_MESSAGE_BYTES",
    ]

    /// The configuration in `text`, or nil when it is not YAML at all; `problems` says what is wrong.
    mutating func parse(_ text: String) -> GatewayConfig? {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            problems.append(Self.describe(error))
            return nil
        } catch {
            problems.append(ConfigProblem(message: "not YAML: \(error)"))
            return nil
        }
        guard let root else { return GatewayConfig() }
        guard case .mapping(let top) = root else {
            problem(root, "the file must be a mapping of keys (cert_file, http_port, providers, ...)")
            return nil
        }
        var config = GatewayConfig()
        unknownKeys(top, allowed: Self.topLevelKeys, in: "at the top level")
        config.certFile = string(top, "cert_file")
        config.privateKeyFile = string(top, "private_key_file")
        config.httpsPort = int(top, "https_port", in: 1...65535)
        config.httpsBindAddress = string(top, "https_bind_address") ?? config.httpsBindAddress
        config.httpPort = int(top, "http_port", in: 1...65535)
        config.httpBindAddress = string(top, "http_bind_address") ?? config.httpBindAddress
        config.authKeys = keyList(top, "auth_keys")
        config.httpMaxHeaderSize = int(top, "http_max_header_size", in: 1024...(1 << 20))
        config.connectTunnelEnabled = bool(top, "connect_tunnel_enabled") ?? false
        if let node = top["health_check"] {
            if let check = mapping(node, "health_check") {
                unknownKeys(check, allowed: ["enabled", "interval"], in: "in health_check")
                config.healthCheck.enabled = bool(check, "enabled") ?? false
                if let interval = number(check, "interval") {
                    if interval > 0 && interval <= 86_400 {
                        config.healthCheck.intervalSeconds = interval
                    } else {
                        problem(check["interval"], "health_check.interval must be above 0 and at most 86400 seconds")
                    }
                }
            }
        }
        if let node = top["providers"] {
            if case .sequence(let list) = node {
                for (index, item) in list.enumerated() {
                    if let provider = self.provider(item, position: index + 1) { config.providers.append(provider) }
                }
            } else {
                problem(node, "providers must be a list")
            }
        }
        nameDefaults(&config.providers)
        if let node = top["llmtap"] { config.settings = settings(node) }
        listenerSettings(top, &config)
        if config.httpsPort != nil { checkCertificate(top, config) }
        return config
    }

    // MARK: Providers

    private mutating func provider(_ node: Node, position: Int) -> ProviderConfig? {
        let context = "provider \(position)"
        guard let map = mapping(node, context) else { return nil }
        unknownKeys(map, allowed: Self.providerKeys, in: "in \(context)")
        let line = node.mark?.line ?? 0
        var kind = ProviderConfig.Kind.openai
        if let text = string(map, "type") {
            if let parsed = ProviderConfig.Kind(rawValue: text) {
                kind = parsed
            } else {
                problem(
                    map["type"],
                    "\(context): type must be one of \(ProviderConfig.Kind.allCases.map(\.rawValue).joined(separator: ", ")), not \"\(text)\""
                )
            }
        } else {
            problem(node, "\(context) has no type (openai, anthropic, gemini or forward)")
        }
        let endpoint = string(map, "endpoint") ?? ""
        if endpoint.isEmpty {
            problem(node, "\(context) has no endpoint (the host it really is at, such as api.openai.com)")
        } else if endpoint.contains("/") || endpoint.contains(" ") {
            problem(map["endpoint"], "\(context): endpoint is a host name or address, not \"\(endpoint)\"")
        }
        var provider = ProviderConfig(name: string(map, "name") ?? "", line: line, kind: kind, endpoint: endpoint)
        provider.host = string(map, "host")
        if let prefix = string(map, "path_prefix") {
            if prefix.hasPrefix("/"), !prefix.hasSuffix("/"), !prefix.contains("?"), prefix.count > 1 {
                provider.pathPrefix = prefix
            } else {
                problem(
                    map["path_prefix"],
                    "\(context): path_prefix must start with / and not end with one, not \"\(prefix)\"")
            }
        }
        provider.port = int(map, "port", in: 1...65535) ?? 443
        provider.tls = bool(map, "tls") ?? true
        if let weight = number(map, "weight") {
            if weight > 0 && weight.isFinite {
                provider.weight = weight
            } else {
                problem(map["weight"], "\(context): weight must be above 0, not \(weight)")
            }
        }
        provider.isFallback = bool(map, "is_fallback") ?? false
        provider.authKeys = keyList(map, "auth_keys")
        provider.retries = int(map, "retries", in: 0...10) ?? 1
        if let node = map["retry_on"] {
            for status in intList(node, "retry_on") {
                if ProviderConfig.retryableStatuses.contains(status) {
                    provider.retryOn.insert(status)
                } else {
                    problem(node, "\(context): retry_on takes 429, 502, 503 and 504, not \(status)")
                }
            }
        }
        if let interval = number(map, "refresh_interval") {
            if interval > 0 && interval <= 86_400 * 30 {
                provider.refreshIntervalSeconds = interval
            } else {
                problem(map["refresh_interval"], "\(context): refresh_interval must be above 0 seconds, up to 30 days")
            }
        }
        if map["api_key"] != nil, map["api_keys"] != nil {
            problem(map["api_keys"], "\(context) has both api_key and api_keys: give one")
        }
        if let single = key(map, "api_key") {
            provider.keys = [WeightedKey(source: single, weight: 1)]
        } else if let list = map["api_keys"] {
            provider.keys = weightedKeys(list, context: context)
        }
        if kind == .forward, !provider.keys.isEmpty {
            problem(
                map["api_key"] ?? map["api_keys"],
                "\(context) is a forward provider: it passes the client's credential and takes no api_key")
        }
        if let check = map["health_check"] { provider.probe = probe(check, context: context) }
        return provider
    }

    private mutating func weightedKeys(_ node: Node, context: String) -> [WeightedKey] {
        guard case .sequence(let list) = node else {
            problem(node, "\(context): api_keys must be a list of {key, weight}")
            return []
        }
        var keys: [WeightedKey] = []
        for item in list {
            guard let map = mapping(item, "\(context): an api_keys entry") else { continue }
            unknownKeys(map, allowed: ["key", "weight"], in: "in \(context)'s api_keys")
            guard let source = key(map, "key") else {
                problem(item, "\(context): an api_keys entry has no key")
                continue
            }
            var weight = 1.0
            if let given = number(map, "weight") {
                if given > 0 && given.isFinite {
                    weight = given
                } else {
                    problem(map["weight"], "\(context): a key's weight must be above 0, not \(given)")
                }
            }
            keys.append(WeightedKey(source: source, weight: weight))
        }
        return keys
    }

    private mutating func probe(_ node: Node, context: String) -> HealthProbe? {
        guard let map = mapping(node, "\(context)'s health_check") else { return nil }
        unknownKeys(map, allowed: ["method", "path", "body", "headers"], in: "in \(context)'s health_check")
        var probe = HealthProbe()
        if let method = string(map, "method") {
            if !method.isEmpty, method.utf8.allSatisfy({ HeaderLineScanner.isTokenByte($0) }) {
                probe.method = method.uppercased()
            } else {
                problem(map["method"], "\(context): health_check.method must be an HTTP method, not \"\(method)\"")
            }
        }
        if let path = string(map, "path") {
            if path.hasPrefix("/"), !path.contains(" ") {
                probe.path = path
            } else {
                problem(map["path"], "\(context): health_check.path must start with /, not \"\(path)\"")
            }
        }
        probe.body = string(map, "body") ?? ""
        if let headers = map["headers"] {
            if case .mapping(let pairs) = headers {
                for (name, value) in pairs {
                    guard let name = name.string, let value = value.string, !name.isEmpty,
                        name.utf8.allSatisfy({ HeaderLineScanner.isTokenByte($0) }),
                        !value.utf8.contains(where: { $0 < 0x20 && $0 != 0x09 })
                    else {
                        problem(name, "\(context): a health_check header must be a name and a one-line value")
                        continue
                    }
                    probe.headers.append((name, value))
                }
            } else {
                problem(headers, "\(context): health_check.headers must be a mapping of names to values")
            }
        }
        return probe
    }

    /// Providers without a `name` are named by their type and endpoint (`openai:api.openai.com`),
    /// numbered when that repeats; two that were given one name are a problem.
    private mutating func nameDefaults(_ providers: inout [ProviderConfig]) {
        var given: [String: Int] = [:]
        for provider in providers where !provider.name.isEmpty {
            if let first = given[provider.name] {
                problems.append(
                    ConfigProblem(
                        line: provider.line,
                        message:
                            "two providers are named \"\(provider.name)\" (the first at line \(first)): names must be unique"
                    ))
            } else {
                given[provider.name] = provider.line
            }
        }
        var taken = Set(given.keys)
        for index in providers.indices where providers[index].name.isEmpty {
            let base = "\(providers[index].kind.rawValue):\(providers[index].endpoint)"
            var name = base
            var number = 2
            while taken.contains(name) {
                name = "\(base)#\(number)"
                number += 1
            }
            taken.insert(name)
            providers[index].name = name
        }
    }

    // MARK: The command's options

    private mutating func settings(_ node: Node) -> [String: FileSetting] {
        guard let map = mapping(node, "llmtap") else { return [:] }
        unknownKeys(map, allowed: Set(Self.optionVariables.keys), in: "in llmtap")
        var settings: [String: FileSetting] = [:]
        for (keyNode, value) in map {
            guard let key = keyNode.string else { continue }
            guard let variable = Self.optionVariables[key] else { continue }
            let text: String?
            switch value {
            case .scalar(let scalar): text = scalar.string
            case .sequence(let list): text = list.compactMap(\.string).joined(separator: ",")
            default: text = nil
            }
            guard let text else {
                problem(value, "llmtap.\(key) must be a value or a list of values")
                continue
            }
            settings[variable] = FileSetting(value: text, key: "llmtap.\(key)", line: value.mark?.line ?? 0)
        }
        return settings
    }

    /// `http_port` and `http_max_header_size` stand for the reverse listener and the head limit.
    private mutating func listenerSettings(_ top: Node.Mapping, _ config: inout GatewayConfig) {
        if let port = config.httpPort {
            let line = top["http_port"]?.mark?.line ?? 0
            if config.settings["LISTEN_ADDR"] != nil {
                problems.append(
                    ConfigProblem(
                        line: line, message: "http_port and llmtap.listen both set the HTTP listener: give one"))
            }
            let host = config.httpBindAddress.contains(":") ? "[\(config.httpBindAddress)]" : config.httpBindAddress
            config.settings["LISTEN_ADDR"] = FileSetting(value: "\(host):\(port)", key: "http_port", line: line)
        }
        if let size = config.httpMaxHeaderSize {
            let line = top["http_max_header_size"]?.mark?.line ?? 0
            if config.settings["LLMTAP_MAX_HEADER_BYTES"] != nil {
                problems.append(
                    ConfigProblem(
                        line: line,
                        message: "http_max_header_size and llmtap.max_header_bytes both set the head limit: give one"))
            }
            config.settings["LLMTAP_MAX_HEADER_BYTES"] = FileSetting(
                value: "\(size)", key: "http_max_header_size", line: line)
        }
    }

    // MARK: TLS

    private mutating func checkCertificate(_ top: Node.Mapping, _ config: GatewayConfig) {
        let portNode = top["https_port"]
        guard let certFile = config.certFile, let keyFile = config.privateKeyFile else {
            return problem(portNode, "https_port needs cert_file and private_key_file (PEM)")
        }
        let certificate: Certificate
        let key: Certificate.PrivateKey
        do {
            certificate = try Certificate(pemEncoded: String(contentsOfFile: certFile, encoding: .utf8))
        } catch {
            return problem(top["cert_file"], "cert_file \(certFile) is not a PEM certificate: \(Self.reason(error))")
        }
        do {
            key = try Certificate.PrivateKey(pemEncoded: String(contentsOfFile: keyFile, encoding: .utf8))
        } catch {
            // Never the key's bytes: only why it could not be read.
            return problem(
                top["private_key_file"], "private_key_file \(keyFile) is not a PEM private key: \(Self.reason(error))")
        }
        if key.publicKey != certificate.publicKey {
            problem(top["private_key_file"], "private_key_file \(keyFile) is not the key of cert_file \(certFile)")
        }
    }

    private static func reason(_ error: any Error) -> String {
        if let error = error as? CocoaError, error.code == .fileReadNoSuchFile { return "no such file" }
        if let error = error as? CocoaError, error.code == .fileReadNoPermission { return "not readable" }
        return "\(type(of: error))"
    }

    // MARK: Keys

    private mutating func keyList(_ map: Node.Mapping, _ name: String) -> [KeySource] {
        guard let node = map[name] else { return [] }
        guard case .sequence(let list) = node else {
            problem(node, "\(name) must be a list of keys")
            return []
        }
        return list.compactMap { item in
            guard let text = item.string, !text.isEmpty else {
                problem(item, "\(name) holds an empty or non-text key")
                return nil
            }
            return checked(KeySource(text), at: item)
        }
    }

    private mutating func key(_ map: Node.Mapping, _ name: String) -> KeySource? {
        guard let node = map[name] else { return nil }
        guard let text = node.string, !text.isEmpty else {
            problem(node, "\(name) must be a key, env:NAME, file:PATH or $(command)")
            return nil
        }
        return checked(KeySource(text), at: node)
    }

    /// A key whose value can't be had is a problem now, not at the first request.
    private mutating func checked(_ source: KeySource, at node: Node) -> KeySource {
        switch source {
        case .environment(let name):
            if name.isEmpty || environment[name, default: ""].isEmpty {
                problem(node, "\(source) is not set")
            }
        case .file(let path):
            if !FileManager.default.isReadableFile(atPath: path) { problem(node, "\(source) cannot be read") }
        case .literal, .command:
            break
        }
        return source
    }

    // MARK: Values

    private mutating func mapping(_ node: Node, _ what: String) -> Node.Mapping? {
        guard case .mapping(let map) = node else {
            problem(node, "\(what) must be a mapping of keys")
            return nil
        }
        return map
    }

    private mutating func string(_ map: Node.Mapping, _ key: String) -> String? {
        guard let node = map[key] else { return nil }
        guard case .scalar(let scalar) = node else {
            problem(node, "\(key) must be a single value")
            return nil
        }
        return scalar.string
    }

    private mutating func int(_ map: Node.Mapping, _ key: String, in range: ClosedRange<Int>) -> Int? {
        guard let text = string(map, key) else { return nil }
        guard let value = Int(text), range.contains(value) else {
            problem(
                map[key],
                "\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound), not \"\(text)\"")
            return nil
        }
        return value
    }

    private mutating func number(_ map: Node.Mapping, _ key: String) -> Double? {
        guard let text = string(map, key) else { return nil }
        guard let value = Double(text), value.isFinite else {
            problem(map[key], "\(key) must be a number, not \"\(text)\"")
            return nil
        }
        return value
    }

    private mutating func bool(_ map: Node.Mapping, _ key: String) -> Bool? {
        guard let text = string(map, key) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            problem(map[key], "\(key) must be true or false, not \"\(text)\"")
            return nil
        }
    }

    private mutating func intList(_ node: Node, _ key: String) -> [Int] {
        let items: [Node]
        if case .sequence(let list) = node { items = Array(list) } else { items = [node] }
        return items.compactMap { item in
            guard let text = item.string, let value = Int(text) else {
                problem(item, "\(key) must be a list of status codes")
                return nil
            }
            return value
        }
    }

    private mutating func unknownKeys(_ map: Node.Mapping, allowed: Set<String>, in place: String) {
        // A key given twice in one mapping is refused by the YAML reader itself.
        for key in map.keys {
            guard let name = key.string else {
                problem(key, "a key \(place) is not text")
                continue
            }
            if !allowed.contains(name) {
                problem(key, "unknown key \"\(name)\" \(place)\(suggestion(name, allowed))")
            }
        }
    }

    /// ` (did you mean "endpoint"?)` for a typo one or two edits away from a known key.
    private func suggestion(_ name: String, _ known: Set<String>) -> String {
        let best = known.map { ($0, Self.editDistance(name, $0)) }.min { ($0.1, $0.0) < ($1.1, $1.0) }
        guard let best, best.1 <= 2 else { return "" }
        return " (did you mean \"\(best.0)\"?)"
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8)
        let b = Array(b.utf8)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }

    private mutating func problem(_ node: Node?, _ message: String) {
        problems.append(ConfigProblem(line: node?.mark?.line, message: message))
    }

    /// A YAML error as a line and a reason: never libyaml's snippet of the line itself.
    static func describe(_ error: YamlError) -> ConfigProblem {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let around = context.map { "\($0.text) " } ?? ""
            return ConfigProblem(
                line: mark.line, message: "not valid YAML: \(around)\(problem) (column \(mark.column))")
        case .reader(let problem, _, _, _):
            return ConfigProblem(message: "not valid YAML: \(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ConfigProblem(
                line: context.mark.line, message: "a key is given twice: \(duplicates.sorted().joined(separator: ", "))"
            )
        default:
            return ConfigProblem(message: "not valid YAML")
        }
    }
}
