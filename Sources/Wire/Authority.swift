/// `host`, `host:port`, `[v6]` or `[v6]:port`: the one parser of an authority for every address
/// either binary reads (listen addresses, upstream URLs, CONNECT targets, absolute-form requests).
/// Without brackets the last colon starts the port, so `::1:3000` is `::1` port 3000.
public struct Authority: Sendable, Equatable, CustomStringConvertible {
    /// Without brackets.
    public let host: String
    /// Nil when the text has none.
    public let port: Int?

    public enum Problem: Error, Sendable, Equatable {
        case noHost
        /// A port that is not a number from 0 to 65535.
        case badPort
        case unclosedBracket
        /// Bytes after `]` that are not `:port`.
        case junkAfterBracket
    }

    public init(_ text: Substring) throws(Problem) {
        var host = text
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .unclosedBracket }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw .junkAfterBracket }
                portText = after.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        if let portText {
            guard portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let port = Int(portText), port <= 65535
            else { throw .badPort }
            self.port = port
        } else {
            self.port = nil
        }
        guard !host.isEmpty else { throw .noHost }
        self.host = String(host)
    }

    public init(host: String, port: Int?) {
        self.host = host
        self.port = port
    }

    /// The host as it goes in a URL or `Host`: IPv6 in brackets.
    public var bracketedHost: String { host.contains(":") ? "[\(host)]" : host }

    public var description: String { port.map { "\(bracketedHost):\($0)" } ?? bracketedHost }

    /// A host fit to dial: a DNS name (letters, digits, `-`, `.`, `_`) or an IP address. Anything
    /// else would only reach the resolver, or worse.
    public var hasDialableHost: Bool {
        let host = host.lowercased()
        let isName = host.utf8.allSatisfy { byte in
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2D || byte == 0x2E
                || byte == 0x5F
        }
        let isIPv6 =
            host.contains(":")
            && host.utf8.allSatisfy { byte in
                (byte >= 0x61 && byte <= 0x66) || (byte >= 0x30 && byte <= 0x39) || byte == 0x3A || byte == 0x2E
            }
        return isName || isIPv6
    }
}

/// `scheme://authority[/path][?query]`, split: the one parser of an absolute URL (an upstream, or
/// an absolute-form request target).
public struct AbsoluteURL: Sendable, Equatable {
    /// Lowercased.
    public let scheme: String
    public let authority: Authority
    /// From the first `/` or `?` after the authority to the end; empty when there is neither.
    public let pathAndQuery: Substring

    /// Nil when there is no `://`; throws when the authority can't be read.
    public init?(_ text: String) throws(Authority.Problem) {
        guard let parts = Self.split(text) else { return nil }
        scheme = parts.scheme.lowercased()
        authority = try Authority(parts.authority)
        pathAndQuery = parts.pathAndQuery
    }

    /// The three parts, the authority unread: nil when there is no `://`.
    public static func split(_ text: String) -> (scheme: Substring, authority: Substring, pathAndQuery: Substring)? {
        guard let schemeEnd = text.range(of: "://") else { return nil }
        let rest = text[schemeEnd.upperBound...]
        let end = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        return (text[..<schemeEnd.lowerBound], rest[..<end], rest[end...])
    }

    /// The path and query of a request target, whatever form it came in, as origin form.
    public static func originForm(_ target: String) -> String {
        if target.hasPrefix("/") { return target }
        guard let parts = split(target) else { return "/" + target }
        return originForm(parts.pathAndQuery)
    }

    private static func originForm(_ pathAndQuery: Substring) -> String {
        if pathAndQuery.isEmpty { return "/" }
        return pathAndQuery.hasPrefix("?") ? "/" + pathAndQuery : String(pathAndQuery)
    }

    /// The scheme's port when the authority names none (443 for https, 80 otherwise).
    public var port: Int { authority.port ?? (scheme == "https" ? 443 : 80) }

    /// The path and query as an origin-form request target: always starting with `/`.
    public var originForm: String { Self.originForm(pathAndQuery) }
}
