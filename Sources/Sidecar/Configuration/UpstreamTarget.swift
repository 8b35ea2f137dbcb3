import Wire

/// Where the reverse listener forwards to: `UPSTREAM`, such as `https://api.openai.com` or
/// `http://127.0.0.1:8081/openai`. A path in it is put in front of every request's path.
struct UpstreamTarget: Sendable, Hashable, CustomStringConvertible {
    let scheme: String
    let host: String
    let port: Int
    let basePath: String
    /// What the upstream expects in `Host`: the port only when it isn't the scheme's default.
    /// Worked out once: every request uses it.
    let authority: String

    var isTLS: Bool { scheme == "https" }

    /// The name to send in TLS SNI and to verify the certificate against; nil for an IP address,
    /// which SNI does not allow.
    var serverName: String? {
        let isIPv4 = host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
        return isIPv4 || host.contains(":") ? nil : host
    }

    var description: String { "\(scheme)://\(authority)\(basePath)" }

    init(url: String) throws(ConfigurationError) {
        guard let schemeEnd = url.range(of: "://") else {
            throw ConfigurationError("the upstream \(url) needs a scheme: http:// or https://")
        }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else {
            throw ConfigurationError("the upstream \(url) must be http:// or https://, not \(scheme)://")
        }
        var rest = url[schemeEnd.upperBound...]
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[slash...])
            rest = rest[..<slash]
        }
        guard !path.contains("?"), !path.contains("#") else {
            throw ConfigurationError("the upstream \(url) may have a path but no query or fragment")
        }
        while path.hasSuffix("/") { path.removeLast() }
        var host = String(rest)
        var port = scheme == "https" ? 443 : 80
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else {
                throw ConfigurationError("the upstream \(url) has an unclosed [")
            }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") {
                guard let parsed = Int(after.dropFirst()), (1...65535).contains(parsed) else {
                    throw ConfigurationError("the upstream \(url) has a bad port")
                }
                port = parsed
            }
            host = String(host[host.index(after: host.startIndex)..<close])
        } else if let colon = host.lastIndex(of: ":") {
            guard let parsed = Int(host[host.index(after: colon)...]), (1...65535).contains(parsed) else {
                throw ConfigurationError("the upstream \(url) has a bad port")
            }
            port = parsed
            host = String(host[..<colon])
        }
        guard !host.isEmpty else { throw ConfigurationError("the upstream \(url) has no host") }
        self.scheme = scheme
        self.host = host
        self.port = port
        self.basePath = path
        let bracketed = host.contains(":") ? "[\(host)]" : host
        self.authority = port == (scheme == "https" ? 443 : 80) ? bracketed : "\(bracketed):\(port)"
    }
}
