import Foundation
import NIOCore
import NIOHTTP1
import Wire

/// What the proxy does to headers, both ways. Pure. Heads are read as raw fields
/// (`RawHeaderFields`) and written straight into the outgoing bytes: no header becomes a string.
enum HeaderRules {
    /// Hop-by-hop headers (RFC 9110, section 7.6.1): they describe one connection, so they are not forwarded.
    static let hopByHop = HeaderNameSet([
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-authorization", "proxy-authenticate",
    ])

    /// Headers a `Connection` header may not remove (RFC 9110, section 7.6.1 lets a proxy drop
    /// the ones it names): they frame the message, route it, or carry the credential the policy reads.
    /// A request naming one is refused; on a response the nomination is ignored and the header kept.
    static let neverConnectionNominated = HeaderNameSet([
        "content-length", "transfer-encoding", "host", "authorization", "x-api-key", "api-key", "x-goog-api-key",
    ])

    /// Headers whose values never reach the wire.
    static let secret = HeaderNameSet([
        "authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie", "set-cookie", "proxy-authorization",
    ])

    static let redactedValue = EncodedRecord.redactedValue

    /// Visits the fields that go to the next hop: not hop-by-hop, and not named by the message's own
    /// `Connection` header (RFC 9110, section 7.6.1).
    static func forEachEndToEndField(
        _ headers: RawHeaderFields, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void
    ) {
        // The header names a Connection header lists beyond the usual keep-alive and close: rare.
        var named: [[UInt8]] = []
        headers.forEachField { name, value in
            guard RawHeaderFields.equalsIgnoringCase(name, "connection") else { return }
            HeaderLineScanner.forEachToken(value, 0..<value.count) { token in
                if !hopByHop.contains(token) && !neverConnectionNominated.contains(token) {
                    named.append(token.map(RawHeaderFields.lowered))
                }
            }
        }
        headers.forEachField { name, value in
            if hopByHop.contains(name) { return }
            if !named.isEmpty,
                named.contains(where: {
                    $0.count == name.count && zip($0, name).allSatisfy { $0 == RawHeaderFields.lowered($1) }
                })
            {
                return
            }
            body(name, value)
        }
    }

    /// Writes the request head as it goes upstream: the upstream's path and `Host`, hop-by-hop
    /// headers gone, `X-Forwarded-*` added, the body framed as the client framed it.
    ///
    /// With `credential`, every credential header the client sent is left out and the given one is
    /// written instead: a virtual key never goes upstream, whichever header carried it.
    static func writeUpstreamRequestHead(
        _ head: ClientRequestHead, uri: String, target: UpstreamTarget, clientIP: String?,
        credential: (header: CredentialHeader, value: String)? = nil, into out: inout ByteBuffer
    ) {
        out.writeString(head.method.rawValue)
        out.writeStaticString(" ")
        out.writeString(uri)
        out.writeStaticString(" HTTP/1.1\r\nhost: ")
        out.writeString(target.authority)
        out.writeStaticString("\r\n")
        var originalHost: UnsafeRawBufferPointer?
        var forwardedFor: [UnsafeRawBufferPointer] = []
        var hasForwardedProto = false
        var hasForwardedHost = false
        // The pointers stay valid: the head's bytes are held by `head` for the whole call.
        forEachEndToEndField(head.headers) { name, value in
            if credential != nil, CredentialHeader(name) != nil { return }
            switch name.count {
            case 4 where RawHeaderFields.equalsIgnoringCase(name, "host"):
                if originalHost == nil { originalHost = value }
                return
            case 6 where RawHeaderFields.equalsIgnoringCase(name, "expect"):
                // The sidecar answers 100-continue itself, so the upstream gets the whole request at once.
                return
            case 15 where RawHeaderFields.equalsIgnoringCase(name, "x-forwarded-for"):
                forwardedFor.append(value)
                return
            case 16 where RawHeaderFields.equalsIgnoringCase(name, "x-forwarded-host"):
                hasForwardedHost = true
            case 17 where RawHeaderFields.equalsIgnoringCase(name, "x-forwarded-proto"):
                hasForwardedProto = true
            default:
                break
            }
            writeField(name, value, into: &out)
        }
        if !forwardedFor.isEmpty || clientIP != nil {
            out.writeStaticString("x-forwarded-for: ")
            for (index, value) in forwardedFor.enumerated() {
                if index > 0 { out.writeStaticString(", ") }
                out.writeBytes(value)
            }
            if let clientIP {
                if !forwardedFor.isEmpty { out.writeStaticString(", ") }
                out.writeString(clientIP)
            }
            out.writeStaticString("\r\n")
        }
        if !hasForwardedProto { out.writeStaticString("x-forwarded-proto: http\r\n") }
        if let originalHost, !hasForwardedHost {
            out.writeStaticString("x-forwarded-host: ")
            out.writeBytes(originalHost)
            out.writeStaticString("\r\n")
        }
        if let credential { credential.header.writeField(credential.value, into: &out) }
        if head.chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
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
        _ head: UpstreamResponseHead, exchangeID: String, framing: ClientFraming, close: Bool, version: HTTPVersion,
        into out: inout ByteBuffer
    ) {
        writeStatusLineStart(version: version, code: head.status.code, into: &out)
        out.writeImmutableBuffer(head.reasonBytes)
        out.writeStaticString("\r\n")
        forEachEndToEndField(head.headers) { name, value in
            if framing != .asIs, RawHeaderFields.equalsIgnoringCase(name, "content-length") { return }
            writeField(name, value, into: &out)
        }
        if framing == .chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
        writeEnding(exchangeID: exchangeID, close: close, version: version, into: &out)
    }

    /// A whole response of the sidecar's own, with a body of `contentType`.
    static func writeLocalResponse(
        status: HTTPResponseStatus, contentType: String, body: ByteBuffer, exchangeID: String?, close: Bool,
        version: HTTPVersion,
        retryAfter: Int? = nil, into out: inout ByteBuffer
    ) {
        writeStatusLineStart(version: version, code: status.code, into: &out)
        out.writeString(status.reasonPhrase)
        out.writeStaticString("\r\n")
        if let retryAfter {
            out.writeStaticString("retry-after: ")
            out.writeString(String(retryAfter))
            out.writeStaticString("\r\n")
        }
        out.writeStaticString("content-type: ")
        out.writeString(contentType)
        out.writeStaticString("\r\ncontent-length: ")
        out.writeString(String(body.readableBytes))
        out.writeStaticString("\r\n")
        writeEnding(exchangeID: exchangeID, close: close, version: version, into: &out)
        out.writeImmutableBuffer(body)
    }

    /// "HTTP/1.1 200 ": the reason and the line's end follow, as the upstream's bytes or our own
    /// phrase (no buffer made for a local answer's reason).
    private static func writeStatusLineStart(version: HTTPVersion, code: UInt, into out: inout ByteBuffer) {
        out.writeStaticString(version.minor >= 1 ? "HTTP/1.1 " : "HTTP/1.0 ")
        out.writeString(String(code))
        out.writeStaticString(" ")
    }

    private static func writeEnding(exchangeID: String?, close: Bool, version: HTTPVersion, into out: inout ByteBuffer)
    {
        if let exchangeID {
            out.writeStaticString("x-llmtap-exchange-id: ")
            out.writeString(exchangeID)
            out.writeStaticString("\r\n")
        }
        if close {
            out.writeStaticString("connection: close\r\n")
        } else if version.minor == 0 {
            out.writeStaticString("connection: keep-alive\r\n")
        }
        out.writeStaticString("\r\n")
    }

    private static func writeField(
        _ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer, into out: inout ByteBuffer
    ) {
        out.writeBytes(name)
        out.writeStaticString(": ")
        out.writeBytes(value)
        out.writeStaticString("\r\n")
    }

    /// The path and query of a request target, whatever form it came in.
    static func originForm(_ uri: String) -> String {
        AbsoluteURL.originForm(uri)
    }

    /// The credential a request carries: a bearer token, an API key header (in that order of
    /// preference), or Gemini's `key` query parameter. Only the credential becomes a string.
    static func credential(in headers: RawHeaderFields, uri: String) -> String? {
        presentedCredential(in: headers)?.value ?? queryCredential(uri)
    }

    /// Gemini's `key` query parameter.
    static func queryCredential(_ uri: String) -> String? {
        queryValue(named: "key", in: uri)
    }

    /// The credential a request carries in a header, and which header: `Authorization` (its
    /// Bearer token), `x-api-key`, `api-key`, then `x-goog-api-key`.
    static func presentedCredential(in headers: RawHeaderFields) -> (header: CredentialHeader, value: String)? {
        var best: (header: CredentialHeader, value: String)?
        headers.forEachField { name, value in
            guard let header = CredentialHeader(name) else { return }
            guard best.map({ header.rawValue < $0.header.rawValue }) ?? true else { return }
            var token = value
            if header == .authorization, token.count > 7,
                RawHeaderFields.equalsIgnoringCase(UnsafeRawBufferPointer(rebasing: token[0..<7]), "bearer ")
            {
                token = UnsafeRawBufferPointer(rebasing: token[7...])
            }
            while let first = token.first, first == 0x20 || first == 0x09 {
                token = UnsafeRawBufferPointer(rebasing: token.dropFirst())
            }
            guard !token.isEmpty else { return }
            best = (header, credentialText(token))
        }
        return best
    }

    /// A credential's bytes as text: UTF-8 when they are, else each byte as the Latin-1 character
    /// it is. Unlike U+FFFD replacement this keeps two credentials that differ only in such bytes
    /// apart, so they never share a tenant (nor could one be taken for the other).
    static func credentialText(_ bytes: UnsafeRawBufferPointer) -> String {
        if WireText.isValidUTF8(bytes) { return String(decoding: bytes, as: UTF8.self) }
        var text = ""
        text.unicodeScalars.append(contentsOf: bytes.map { Unicode.Scalar($0) })
        return text
    }

    /// The path and query with secret query parameters (`key`) redacted, for the wire.
    static func redactedPath(_ path: String) -> String {
        guard path.utf8.contains(UInt8(ascii: "?")), let question = path.firstIndex(of: "?") else { return path }
        let query = path[path.index(after: question)...].split(separator: "&", omittingEmptySubsequences: false).map {
            pair -> String in
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

/// A header that carries an API credential, in order of preference.
enum CredentialHeader: Int, Sendable {
    case authorization
    case xAPIKey
    case apiKey
    case xGoogAPIKey

    init?(_ name: UnsafeRawBufferPointer) {
        switch name.count {
        case 13 where RawHeaderFields.equalsIgnoringCase(name, "authorization"): self = .authorization
        case 9 where RawHeaderFields.equalsIgnoringCase(name, "x-api-key"): self = .xAPIKey
        case 7 where RawHeaderFields.equalsIgnoringCase(name, "api-key"): self = .apiKey
        case 14 where RawHeaderFields.equalsIgnoringCase(name, "x-goog-api-key"): self = .xGoogAPIKey
        default: return nil
        }
    }

    /// The header line carrying `credential` the way this header carries one.
    func writeField(_ credential: String, into out: inout ByteBuffer) {
        switch self {
        case .authorization: out.writeStaticString("authorization: Bearer ")
        case .xAPIKey: out.writeStaticString("x-api-key: ")
        case .apiKey: out.writeStaticString("api-key: ")
        case .xGoogAPIKey: out.writeStaticString("x-goog-api-key: ")
        }
        out.writeString(credential)
        out.writeStaticString("\r\n")
    }
}

/// A set of header names matched without regard to ASCII case, and without allocating: the proxy
/// asks it about every header of every request and response.
struct HeaderNameSet: Sendable {
    private let names: [[UInt8]]
    /// Bit n is set when some name is n bytes long (names are under 64 bytes).
    private let lengths: UInt64

    /// - Parameter names: lower-case header names.
    init(_ names: [String]) {
        precondition(
            names.allSatisfy { $0 == $0.lowercased() }, "header names in a HeaderNameSet are given in lower case")
        precondition(names.allSatisfy { $0.utf8.count < 64 }, "header names in a HeaderNameSet are under 64 bytes")
        self.names = names.map { Array($0.utf8) }
        self.lengths = names.reduce(0) { $0 | 1 << UInt64($1.utf8.count) }
    }

    func contains(_ name: UnsafeRawBufferPointer) -> Bool {
        // Most names are ruled out by their length alone.
        let length = name.count
        guard length < 64, lengths & (1 << UInt64(length)) != 0 else { return false }
        return names.contains { candidate in
            candidate.count == length
                && candidate.withUnsafeBufferPointer { expected in
                    for index in 0..<length where RawHeaderFields.lowered(name[index]) != expected[index] {
                        return false
                    }
                    return true
                }
        }
    }

    func contains(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { contains(UnsafeRawBufferPointer($0)) }
    }
}
