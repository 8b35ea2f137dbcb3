import Foundation
import NIOCore
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

    /// The header names a `Connection` header lists: hop-by-hop for this message only (RFC 9110, section 7.6.1).
    /// Empty, with no allocation, in the usual case of no such header or only `keep-alive`/`close`.
    static func connectionNamed(in headers: HTTPHeaders) -> [Substring] {
        var named: [Substring] = []
        for (name, value) in headers where name.utf8.count == 10 && equalsIgnoringASCIICase(name, "connection") {
            // The common values name nothing beyond the hop-by-hop set: answered without splitting.
            if value.utf8.count <= 10, equalsIgnoringASCIICase(value, "keep-alive") || equalsIgnoringASCIICase(value, "close") { continue }
            for token in value.split(separator: ",") {
                let token = token.trimmingASCIIWhitespace()
                if !token.isEmpty && !hopByHop.contains(String(token)) { named.append(token) }
            }
        }
        return named
    }

    /// Whether a header stays off the next hop: hop-by-hop, or named by this message's `Connection`.
    static func isHopByHop(_ name: String, connectionNamed: [Substring]) -> Bool {
        hopByHop.contains(name) || (!connectionNamed.isEmpty && connectionNamed.contains { equalsIgnoringASCIICase(name, $0.lowercased()) })
    }

    /// `lowercased` is exact: header names are ASCII tokens, and `candidate` is lower-case.
    static func equalsIgnoringASCIICase(_ name: String, _ candidate: String) -> Bool {
        guard name.utf8.count == candidate.utf8.count else { return false }
        // Native strings compare over their bytes in place; others (bridged) through their views.
        let fast = name.utf8.withContiguousStorageIfAvailable { left in
            candidate.utf8.withContiguousStorageIfAvailable { right in
                for index in 0..<left.count where Self.lowered(left[index]) != right[index] { return false }
                return true
            }
        }
        if let fast, let result = fast { return result }
        return zip(name.utf8, candidate.utf8).allSatisfy { byte, expected in lowered(byte) == expected }
    }

    @inline(__always)
    private static func lowered(_ byte: UInt8) -> UInt8 {
        byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
    }

    static func isChunked(_ headers: HTTPHeaders) -> Bool {
        headers[canonicalForm: "transfer-encoding"].contains { $0.lowercased() == "chunked" }
    }

    /// Writes the request head as it goes upstream: the upstream's path and `Host`, hop-by-hop
    /// headers gone, `X-Forwarded-*` added, the body framed as the client framed it. Straight into
    /// the bytes sent: no second set of headers is built.
    static func writeUpstreamRequestHead(
        _ head: HTTPRequestHead, uri: String, target: UpstreamTarget, clientIP: String?, chunked: Bool, into out: inout ByteBuffer
    ) {
        let named = connectionNamed(in: head.headers)
        out.writeString(head.method.rawValue)
        out.writeStaticString(" ")
        out.writeString(uri)
        out.writeStaticString(" HTTP/1.1\r\nhost: ")
        out.writeString(target.authority)
        out.writeStaticString("\r\n")
        var originalHost: String?
        var forwardedFor: [String] = []
        var hasForwardedProto = false
        var hasForwardedHost = false
        for (name, value) in head.headers {
            if isHopByHop(name, connectionNamed: named) { continue }
            switch name.utf8.count {
            case 4 where equalsIgnoringASCIICase(name, "host"):
                if originalHost == nil { originalHost = value }
                continue
            case 6 where equalsIgnoringASCIICase(name, "expect"):
                // The sidecar answers 100-continue itself, so the upstream gets the whole request at once.
                continue
            case 15 where equalsIgnoringASCIICase(name, "x-forwarded-for"):
                forwardedFor.append(value)
                continue
            case 16 where equalsIgnoringASCIICase(name, "x-forwarded-host"):
                hasForwardedHost = true
            case 17 where equalsIgnoringASCIICase(name, "x-forwarded-proto"):
                hasForwardedProto = true
            default:
                break
            }
            writeField(name, value, into: &out)
        }
        if let clientIP { forwardedFor.append(clientIP) }
        if !forwardedFor.isEmpty { writeField("x-forwarded-for", forwardedFor.joined(separator: ", "), into: &out) }
        if !hasForwardedProto { out.writeStaticString("x-forwarded-proto: http\r\n") }
        if let originalHost, !hasForwardedHost { writeField("x-forwarded-host", originalHost, into: &out) }
        if chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
        out.writeStaticString("\r\n")
    }

    /// How the response body reaches the client.
    enum ClientFraming {
        /// As the upstream framed it: by its `Content-Length`, or no body at all.
        case asIs
        /// Re-chunked: the upstream chunked it or ran it until close, and the client speaks HTTP/1.1.
        case chunked
        /// Until the connection closes: an HTTP/1.0 client and a body of unknown length.
        case untilClose
    }

    static func clientFraming(for upstream: UpstreamResponseHead.Framing, clientVersion: HTTPVersion) -> ClientFraming {
        switch upstream {
        case .contentLength, .none: .asIs
        case .chunked, .untilClose: clientVersion.minor >= 1 ? .chunked : .untilClose
        }
    }

    /// Writes the response head as it goes to the client: hop-by-hop headers gone, the framing the
    /// proxy chose, the exchange id added.
    static func writeClientResponseHead(
        _ head: UpstreamResponseHead, exchangeID: String, framing: ClientFraming, close: Bool, version: HTTPVersion, into out: inout ByteBuffer
    ) {
        writeStatusLine(version: version, code: head.status.code, reason: head.reason, into: &out)
        let named = connectionNamed(in: head.headers)
        for (name, value) in head.headers where !isHopByHop(name, connectionNamed: named) {
            if framing != .asIs, name.utf8.count == 14, equalsIgnoringASCIICase(name, "content-length") { continue }
            writeField(name, value, into: &out)
        }
        if framing == .chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
        writeEnding(exchangeID: exchangeID, close: close, version: version, into: &out)
    }

    /// A whole response of the sidecar's own, with a body of `contentType`.
    static func writeLocalResponse(
        status: HTTPResponseStatus, contentType: String, body: ByteBuffer, exchangeID: String?, close: Bool, version: HTTPVersion, into out: inout ByteBuffer
    ) {
        writeStatusLine(version: version, code: status.code, reason: status.reasonPhrase, into: &out)
        writeField("content-type", contentType, into: &out)
        out.writeStaticString("content-length: ")
        out.writeString(String(body.readableBytes))
        out.writeStaticString("\r\n")
        writeEnding(exchangeID: exchangeID, close: close, version: version, into: &out)
        out.writeImmutableBuffer(body)
    }

    private static func writeStatusLine(version: HTTPVersion, code: UInt, reason: String, into out: inout ByteBuffer) {
        out.writeStaticString(version.minor >= 1 ? "HTTP/1.1 " : "HTTP/1.0 ")
        out.writeString(String(code))
        out.writeStaticString(" ")
        out.writeString(reason)
        out.writeStaticString("\r\n")
    }

    private static func writeEnding(exchangeID: String?, close: Bool, version: HTTPVersion, into out: inout ByteBuffer) {
        if let exchangeID { writeField("x-llmtap-exchange-id", exchangeID, into: &out) }
        if close {
            out.writeStaticString("connection: close\r\n")
        } else if version.minor == 0 {
            out.writeStaticString("connection: keep-alive\r\n")
        }
        out.writeStaticString("\r\n")
    }

    private static func writeField(_ name: String, _ value: String, into out: inout ByteBuffer) {
        out.writeString(name)
        out.writeStaticString(": ")
        out.writeString(value)
        out.writeStaticString("\r\n")
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
        guard path.utf8.contains(UInt8(ascii: "?")), let question = path.firstIndex(of: "?") else { return path }
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
    /// Bit n is set when some name is n bytes long (names are under 64 bytes).
    private let lengths: UInt64

    /// - Parameter names: lower-case header names.
    init(_ names: [String]) {
        precondition(names.allSatisfy { $0 == $0.lowercased() }, "header names in a HeaderNameSet are given in lower case")
        precondition(names.allSatisfy { $0.utf8.count < 64 }, "header names in a HeaderNameSet are under 64 bytes")
        self.names = names
        self.lengths = names.reduce(0) { $0 | 1 << UInt64($1.utf8.count) }
    }

    func contains(_ name: String) -> Bool {
        // Most names are ruled out by their length alone.
        let length = name.utf8.count
        guard length < 64, lengths & (1 << UInt64(length)) != 0 else { return false }
        return names.contains { HeaderRules.equalsIgnoringASCIICase(name, $0) }
    }
}

extension String {
    /// Without leading and trailing spaces and tabs (the whitespace HTTP allows around a value).
    func trimmingWhitespace() -> String {
        let bytes = utf8
        guard let first = bytes.firstIndex(where: { $0 != 0x20 && $0 != 0x09 }) else { return "" }
        let last = bytes.lastIndex(where: { $0 != 0x20 && $0 != 0x09 })!
        if first == bytes.startIndex && bytes.index(after: last) == bytes.endIndex { return self }
        return String(self[first...last])
    }
}
