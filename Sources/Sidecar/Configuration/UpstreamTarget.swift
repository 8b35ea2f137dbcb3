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
        let absolute: AbsoluteURL?
        do {
            absolute = try AbsoluteURL(url)
        } catch .unclosedBracket {
            throw ConfigurationError("the upstream \(url) has an unclosed [")
        } catch .noHost {
            throw ConfigurationError("the upstream \(url) has no host")
        } catch {
            throw ConfigurationError("the upstream \(url) has a bad port")
        }
        guard let parsed = absolute else { throw ConfigurationError("the upstream \(url) needs a scheme") }
        guard (1...65535).contains(parsed.port) else { throw ConfigurationError("the upstream \(url) has a bad port") }
        var path = String(parsed.pathAndQuery)
        guard !path.contains("?"), !path.contains("#") else {
            throw ConfigurationError("the upstream \(url) may have a path but no query or fragment")
        }
        while path.hasSuffix("/") { path.removeLast() }
        let host = parsed.authority.host
        let port = parsed.port
        self.scheme = scheme
        self.host = host
        self.port = port
        self.basePath = path
        let bracketed = parsed.authority.bracketedHost
        self.authority = port == (scheme == "https" ? 443 : 80) ? bracketed : "\(bracketed):\(port)"
    }
}
