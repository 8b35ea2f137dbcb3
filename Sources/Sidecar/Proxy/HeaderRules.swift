import Foundation
import NIOHTTP1
import Wire

/// What the proxy does to headers, both ways. Pure.
enum HeaderRules {
    /// Hop-by-hop headers (RFC 9110, section 7.6.1): they describe one connection, so they are not forwarded.
    static let hopByHop = HeaderNameSet([
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-authorization", "proxy-authenticate",
    ])

    /// Headers whose values never reach the wire.
    static let secret = HeaderNameSet([
        "authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie", "set-cookie", "proxy-authorization",
    ])

    /// Headers that carry the client's credential, in the order they are looked at for the tenant.
    static let credential = ["authorization", "x-api-key", "api-key", "x-goog-api-key"]

    static let redactedValue = EncodedRecord.redactedValue

    /// Removes the hop-by-hop headers, and any header the `Connection` header names.
    /// It runs twice per exchange, so it compares without allocating and removes only what it found.
    static func removeHopByHop(from headers: inout HTTPHeaders) {
        var found: [String] = []
        for (name, value) in headers where hopByHop.contains(name) {
            found.append(name)
            if name.utf8.count == 10, equalsIgnoringASCIICase(name, "connection") {
                for token in value.split(separator: ",") { found.append(token.trimmingCharacters(in: .whitespaces)) }
            }
        }
        for name in found where !name.isEmpty { headers.remove(name: name) }
    }

    /// `lowercased` is exact: header names are ASCII tokens, and `candidate` is lower-case.
    static func equalsIgnoringASCIICase(_ name: String, _ candidate: String) -> Bool {
        guard name.utf8.count == candidate.utf8.count else { return false }
        return zip(name.utf8, candidate.utf8).allSatisfy { byte, expected in
            (byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte) == expected
        }
    }

    static func isChunked(_ headers: HTTPHeaders) -> Bool {
        headers[canonicalForm: "transfer-encoding"].contains { $0.lowercased() == "chunked" }
    }

    /// The request as it goes upstream: the upstream's path and `Host`, hop-by-hop headers gone,
    /// `X-Forwarded-*` added, the body framed as the client framed it.
    static func upstreamRequest(from head: HTTPRequestHead, target: UpstreamTarget, clientIP: String?) -> HTTPRequestHead {
        var headers = head.headers
        let chunked = isChunked(headers)
        let originalHost = headers.first(name: "host")
        removeHopByHop(from: &headers)
        // The sidecar answers 100-continue itself, so the upstream gets the whole request at once.
        headers.remove(name: "expect")
        headers.replaceOrAdd(name: "host", value: target.authority)
        if let clientIP {
            let forwarded = headers[canonicalForm: "x-forwarded-for"].joined(separator: ", ")
            headers.replaceOrAdd(name: "x-forwarded-for", value: forwarded.isEmpty ? clientIP : "\(forwarded), \(clientIP)")
        }
        if !headers.contains(name: "x-forwarded-proto") { headers.add(name: "x-forwarded-proto", value: "http") }
        if let originalHost, !headers.contains(name: "x-forwarded-host") { headers.add(name: "x-forwarded-host", value: originalHost) }
        if chunked { headers.add(name: "transfer-encoding", value: "chunked") }
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: target.basePath + originForm(head.uri), headers: headers)
    }

    /// The response as it goes to the client: hop-by-hop headers gone, the exchange id added.
    static func clientResponse(from head: HTTPResponseHead, exchangeID: String, close: Bool, version: HTTPVersion) -> HTTPResponseHead {
        var headers = head.headers
        removeHopByHop(from: &headers)
        headers.add(name: "x-llmtap-exchange-id", value: exchangeID)
        if close { headers.add(name: "connection", value: "close") }
        return HTTPResponseHead(version: version, status: head.status, headers: headers)
    }

    /// The path and query of a request target, whatever form it came in.
    static func originForm(_ uri: String) -> String {
        if uri.hasPrefix("/") { return uri }
        if let scheme = uri.range(of: "://") {
            let afterAuthority = uri[scheme.upperBound...]
            if let slash = afterAuthority.firstIndex(where: { $0 == "/" || $0 == "?" }) {
                let rest = String(afterAuthority[slash...])
                return rest.hasPrefix("?") ? "/" + rest : rest
            }
            return "/"
        }
        return "/" + uri
    }

    /// The credential a request carries: a bearer token, an API key header, or Gemini's `key` query parameter.
    static func credential(in headers: HTTPHeaders, uri: String) -> String? {
        for name in credential {
            guard var value = headers.first(name: name), !value.isEmpty else { continue }
            if name == "authorization", value.lowercased().hasPrefix("bearer ") { value = String(value.dropFirst(7)) }
            return value.trimmingWhitespace()
        }
        return queryValue(named: "key", in: uri)
    }

    /// The path and query with secret query parameters (`key`) redacted, for the wire.
    static func redactedPath(_ path: String) -> String {
        guard let question = path.firstIndex(of: "?") else { return path }
        let query = path[path.index(after: question)...].split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            let name = pair.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
            return name.lowercased() == "key" ? "\(name)=\(redactedValue)" : String(pair)
        }
        return path[...question] + query.joined(separator: "&")
    }

    private static func queryValue(named wanted: String, in uri: String) -> String? {
        guard let question = uri.firstIndex(of: "?") else { return nil }
        for pair in uri[uri.index(after: question)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == wanted, !parts[1].isEmpty { return String(parts[1]) }
        }
        return nil
    }
}

/// A set of header names matched without regard to ASCII case, and without allocating: the proxy
/// asks it about every header of every request and response.
struct HeaderNameSet: Sendable {
    private let names: [String]
    private let lengths: Set<Int>

    /// - Parameter names: lower-case header names.
    init(_ names: [String]) {
        precondition(names.allSatisfy { $0 == $0.lowercased() }, "header names in a HeaderNameSet are given in lower case")
        self.names = names
        self.lengths = Set(names.map(\.utf8.count))
    }

    func contains(_ name: String) -> Bool {
        // Most names are ruled out by their length alone.
        guard lengths.contains(name.utf8.count) else { return false }
        return names.contains { HeaderRules.equalsIgnoringASCIICase(name, $0) }
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var view = Substring(self)
        while view.first?.isWhitespace == true { view.removeFirst() }
        while view.last?.isWhitespace == true { view.removeLast() }
        return String(view)
    }
}
