import Foundation
import Logging
import NIOCore
import Wire

/// A configuration's providers as requests find them: by `Host` (exact; a configured host
/// without a port matches any port), then by the longest `path_prefix` that starts the path,
/// then by weight among the providers of that route. Built once per configuration; pure.
final class GatewayRoutes: Sendable {
    /// One provider, ready to take requests.
    final class Provider: Sendable {
        let name: String
        let kind: ProviderConfig.Kind
        let target: UpstreamTarget
        let isFallback: Bool
        /// Other providers a request may try when this one can't be reached.
        let retries: Int
        /// Statuses of its answers that send the request to another provider instead (429, 502,
        /// 503, 504), when none of the answer has reached the client and the body was held.
        let retryOn: Set<UInt>
        /// From what its requests (and its health checks) saw: out for a cool-down after failures.
        /// A reload keeps it for a provider of the same name and place.
        let health: ProviderHealth
        /// Its active health check's request, if it has one.
        let probe: HealthProbe?
        /// The keys its requests carry upstream, by weight; nil for none (the client's pass).
        let keys: WeightedChoice<Key>?
        /// The client keys its requests must show (the file's and its own); nil when none are set.
        let clientKeys: ClientKeys?

        init(
            _ config: ProviderConfig, keys: [(value: Key, weight: Double)], clientKeys: [String] = [],
            health: ProviderHealth = ProviderHealth()
        ) throws(ConfigurationError) {
            self.health = health
            name = config.name
            kind = config.kind
            let host = config.endpoint.contains(":") ? "[\(config.endpoint)]" : config.endpoint
            target = try UpstreamTarget(url: "\(config.tls ? "https" : "http")://\(host):\(config.port)")
            isFallback = config.isFallback
            retries = config.retries
            retryOn = Set(config.retryOn.map { UInt($0) })
            probe = config.probe
            self.keys = keys.isEmpty ? nil : WeightedChoice(keys.map(\.value), weights: keys.map(\.weight))
            self.clientKeys = clientKeys.isEmpty ? nil : ClientKeys(clientKeys)
        }

        /// A change of its health, logged: out (with why), or back.
        func log(_ change: ProviderHealth.Change?, why: String, logger: Logger) {
            switch change {
            case .down(let failures, let coolDown):
                logger.warning(
                    "provider out after a failure; fallbacks or other providers serve its route",
                    metadata: [
                        "provider": "\(name)", "failures": "\(failures)", "cool_down_s": "\(coolDown)",
                        "error": "\(why)",
                    ])
            case .up:
                logger.notice("provider back: it answered", metadata: ["provider": "\(name)"])
            case nil:
                break
            }
        }

        /// A key as it goes upstream: its header, its value, and its id for the records.
        struct Credential {
            let header: CredentialHeader
            let value: String
            let keyID: String

            var pair: (header: CredentialHeader, value: String) { (header, value) }
        }

        /// The header its credential goes in, and the value: by its type. `advancing`: the next
        /// key by weight (a request); otherwise its first key, taking no request's turn (a probe).
        /// An Anthropic key from a command is an OAuth token: it goes as `Authorization: Bearer`
        /// (and the request gets `anthropic-beta: oauth-2025-04-20`, `sendsOAuth`).
        func credential(advancing: Bool = true) -> Credential? {
            guard kind != .forward, let key = advancing ? keys?.next() : keys?.items.first else { return nil }
            let (value, keyID): (String, String)
            switch key {
            case .fixed(let fixed, let id): (value, keyID) = (fixed, id)
            case .command(let command): (value, keyID) = command.current()
            }
            switch (kind, key) {
            case (.openai, _), (.forward, _): return Credential(header: .authorization, value: value, keyID: keyID)
            case (.anthropic, .fixed): return Credential(header: .xAPIKey, value: value, keyID: keyID)
            case (.anthropic, .command): return Credential(header: .authorization, value: value, keyID: keyID)
            case (.gemini, _): return Credential(header: .xGoogAPIKey, value: value, keyID: keyID)
            }
        }

        /// Whether a request with this credential speaks Anthropic's OAuth.
        func sendsOAuth(_ credential: (header: CredentialHeader, value: String)?) -> Bool {
            kind == .anthropic && credential?.header == .authorization
        }

        /// The upstream refused its key (401): a key from a command is fetched again.
        func keyRefused() {
            for case .command(let command) in keys?.items ?? [] { command.refused() }
        }

        /// The commands its keys come from, if any.
        var commandKeys: [CommandKey] {
            (keys?.items ?? []).compactMap { if case .command(let command) = $0 { command } else { nil } }
        }
    }

    /// A provider key: as the file gave it (or read at start), or the latest a command printed;
    /// with its id, a keyed hash (`TenantHasher`), which the records carry instead.
    enum Key: Sendable {
        case fixed(String, id: String)
        case command(CommandKey)
    }

    /// The providers one `host` and `path_prefix` share.
    struct Route: Sendable {
        /// Lower-cased; nil matches any host.
        let host: String?
        let hostHasPort: Bool
        let pathPrefix: String?
        let primaries: WeightedChoice<Provider>?
        let fallbacks: WeightedChoice<Provider>?

        /// `asked`: the request's `Host`, lower-cased, and without its port.
        func matches(host asked: (host: String, withoutPort: String)?, path: String) -> Bool {
            if let host {
                guard let asked else { return false }
                if asked.host != host {
                    guard !hostHasPort, asked.withoutPort == host else { return false }
                }
            }
            guard let pathPrefix else { return true }
            guard path.utf8.starts(with: pathPrefix.utf8) else { return false }
            let rest = path.utf8.dropFirst(pathPrefix.utf8.count)
            return rest.first.map { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? true
        }

        /// `host:8080` as `host`, `[::1]:8080` as `[::1]` (read as bytes: this runs per request).
        static func withoutPort(_ authority: String) -> String {
            let bytes = authority.utf8
            if bytes.first == UInt8(ascii: "["), let close = bytes.firstIndex(of: UInt8(ascii: "]")) {
                return String(authority[...close])
            }
            guard let colon = bytes.lastIndex(of: UInt8(ascii: ":")), bytes.firstIndex(of: UInt8(ascii: ":")) == colon
            else { return authority }
            return String(authority[..<colon])
        }
    }

    /// Where a request goes: the provider, and the request target as it is sent there.
    struct Decision: Sendable {
        let provider: Provider
        let uri: String
    }

    /// The routes of a configuration, its keys read: literals as they are, `env:` and `file:` keys
    /// now (a file's trailing newline dropped).
    ///
    /// - Parameter previous: the routes a reload replaces: a provider of the same name and place
    ///   keeps its health.
    static func make(
        _ config: GatewayConfig, environment: [String: String], keepingHealthOf previous: GatewayRoutes? = nil,
        keyHasher: TenantHasher = TenantHasher(key: TenantHasher.defaultKey),
        logger: Logger = Logger(label: "llmtap.sidecar")
    )
        throws(ConfigurationError) -> GatewayRoutes
    {
        var providers: [(config: ProviderConfig, provider: Provider)] = []
        var shared: [String] = []
        for key in config.authKeys { shared.append(try resolve(key, environment: environment, provider: "auth_keys")) }
        for provider in config.providers {
            var keys: [(value: Key, weight: Double)] = []
            for key in provider.keys {
                if case .command(let command) = key.source {
                    let made = try CommandKey(
                        command: command, provider: provider.name,
                        refreshIntervalSeconds: provider.refreshIntervalSeconds, keyHasher: keyHasher, logger: logger)
                    keys.append((.command(made), key.weight))
                } else {
                    let value = try resolve(key.source, environment: environment, provider: provider.name)
                    keys.append((.fixed(value, id: keyHasher.tenant(for: value)), key.weight))
                }
            }
            var clientKeys = shared
            for key in provider.authKeys {
                clientKeys.append(try resolve(key, environment: environment, provider: provider.name))
            }
            var made = try Provider(provider, keys: keys, clientKeys: clientKeys)
            if let kept = previous?.providers.first(where: { $0.name == made.name && $0.target == made.target }) {
                made = try Provider(provider, keys: keys, clientKeys: clientKeys, health: kept.health)
            }
            providers.append((provider, made))
        }
        return GatewayRoutes(providers: providers, clientKeys: shared)
    }

    static func resolve(_ source: KeySource, environment: [String: String], provider: String) throws(ConfigurationError)
        -> String
    {
        switch source {
        case .literal(let value):
            return value
        case .environment(let name):
            guard let value = environment[name], !value.isEmpty else {
                throw ConfigurationError("provider \(provider): \(source) is not set")
            }
            return value
        case .file(let path):
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigurationError("provider \(provider): \(source) cannot be read")
            }
            var value = text
            while value.last == "\n" || value.last == "\r" { value.removeLast() }
            guard !value.isEmpty else { throw ConfigurationError("provider \(provider): \(source) is empty") }
            return value
        case .command(let command):
            // A client key from a command is read once, like a file's.
            switch CommandKey.run(command) {
            case .success(let value): return value
            case .failure(let failure): throw ConfigurationError("provider \(provider): its $(command) key \(failure)")
            }
        }
    }

    let providers: [Provider]
    var isEmpty: Bool { providers.isEmpty }
    /// The file's own `auth_keys` (every route's), which a CONNECT tunnel must show; nil when none.
    let clientKeys: ClientKeys?
    /// Most specific first: the longest prefix, then a named host before any host.
    let routes: [Route]

    init(providers: [(config: ProviderConfig, provider: Provider)], clientKeys: [String] = []) {
        self.providers = providers.map(\.provider)
        self.clientKeys = clientKeys.isEmpty ? nil : ClientKeys(clientKeys)
        var groups: [String: [(config: ProviderConfig, provider: Provider)]] = [:]
        var order: [String] = []
        for entry in providers {
            let key = "\(entry.config.host?.lowercased() ?? "")\u{0}\(entry.config.pathPrefix ?? "")"
            if groups[key] == nil { order.append(key) }
            groups[key, default: []].append(entry)
        }
        routes = order.map { key -> Route in
            let members = groups[key] ?? []
            let first = members[0].config
            func choice(_ entries: [(config: ProviderConfig, provider: Provider)]) -> WeightedChoice<Provider>? {
                entries.isEmpty ? nil : WeightedChoice(entries.map(\.provider), weights: entries.map(\.config.weight))
            }
            let host = first.host?.lowercased()
            return Route(
                host: host, hostHasPort: host.map { Route.withoutPort($0) != $0 } ?? false,
                pathPrefix: first.pathPrefix,
                primaries: choice(members.filter { !$0.config.isFallback }),
                fallbacks: choice(members.filter { $0.config.isFallback }))
        }.sorted { a, b in
            let (aPrefix, bPrefix) = (a.pathPrefix?.utf8.count ?? 0, b.pathPrefix?.utf8.count ?? 0)
            if aPrefix != bPrefix { return aPrefix > bPrefix }
            return (a.host != nil) && (b.host == nil)
        }
    }

    /// The provider for a request with this `Host` and target, and the target it is sent with;
    /// nil when no route matches. A route's fallbacks serve only while none of its primaries is
    /// available; when none of either is, a primary is tried anyway (a guess beats a refusal).
    ///
    /// - Parameter excluding: providers already tried for this request (a retry's).
    func route(
        host: String?, uri: String, now: UInt64 = NIODeadline.now().uptimeNanoseconds,
        excluding tried: [ObjectIdentifier] = []
    ) -> Decision? {
        let path = uri.utf8.first == UInt8(ascii: "/") ? uri : AbsoluteURL.originForm(uri)
        let asked = host.map { host -> (host: String, withoutPort: String) in
            let lowered = host.utf8.contains { $0 >= 0x41 && $0 <= 0x5A } ? host.lowercased() : host
            return (lowered, Route.withoutPort(lowered))
        }
        guard let route = routes.first(where: { $0.matches(host: asked, path: path) }) else { return nil }
        let untried: (Provider) -> Bool = { !tried.contains(ObjectIdentifier($0)) }
        let available: (Provider) -> Bool = { untried($0) && $0.health.isAvailable(now: now) }
        guard
            let provider = route.primaries?.next(where: available) ?? route.fallbacks?.next(where: available)
                ?? route.primaries?.next(where: untried) ?? route.fallbacks?.next(where: untried)
        else { return nil }
        let sent = route.pathPrefix.map { prefix -> String in
            let rest = String(path.dropFirst(prefix.count))
            return rest.hasPrefix("/") ? rest : "/" + rest
        }
        return Decision(provider: provider, uri: sent ?? path)
    }
}
