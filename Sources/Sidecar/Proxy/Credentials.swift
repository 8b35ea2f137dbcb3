import NIOCore
import Wire

/// Where a request carries its API credential, and how it reads as text: the one place the
/// sidecar finds credentials (for the tenant, the policy and the upstream swap) and keeps them
/// out of the wire (`redactedPath`).
enum Credentials {
    /// The credential a request carries: a bearer token, an API key header (in that order of
    /// preference), or Gemini's `key` query parameter. Only the credential becomes a string.
    static func credential(in headers: RawHeaderFields, uri: String) -> String? {
        presented(in: headers)?.value ?? inQuery(uri)
    }

    /// Gemini's `key` query parameter.
    static func inQuery(_ uri: String) -> String? {
        queryValue(named: "key", in: uri)
    }

    /// The credential a request carries in a header, and which header: `Authorization` (its
    /// Bearer token), `x-api-key`, `api-key`, then `x-goog-api-key`.
    static func presented(in headers: RawHeaderFields) -> (header: CredentialHeader, value: String)? {
        var best: (header: CredentialHeader, value: String)?
        headers.forEachField { name, value in
            guard let header = CredentialHeader(name) else { return }
            guard best.map({ header.rawValue < $0.header.rawValue }) ?? true else { return }
            guard let token = token(value, in: header) else { return }
            best = (header, text(token))
        }
        return best
    }

    /// Every credential the request carries in a header, as its bytes, in the order the headers came.
    static func forEachPresented(in headers: RawHeaderFields, _ body: (UnsafeRawBufferPointer) -> Void) {
        headers.forEachField { name, value in
            guard let header = CredentialHeader(name), let token = token(value, in: header) else { return }
            body(token)
        }
    }

    /// The credential in a credential header's value: a Bearer token's, or the whole value.
    private static func token(_ value: UnsafeRawBufferPointer, in header: CredentialHeader) -> UnsafeRawBufferPointer? {
        var token = value
        if header == .authorization, token.count > 7,
            RawHeaderFields.equalsIgnoringCase(UnsafeRawBufferPointer(rebasing: token[0..<7]), "bearer ")
        {
            token = UnsafeRawBufferPointer(rebasing: token[7...])
        }
        while let first = token.first, first == 0x20 || first == 0x09 {
            token = UnsafeRawBufferPointer(rebasing: token.dropFirst())
        }
        return token.isEmpty ? nil : token
    }

    /// A credential's bytes as text: UTF-8 when they are, else each byte as the Latin-1 character
    /// it is. Unlike U+FFFD replacement this keeps two credentials that differ only in such bytes
    /// apart, so they never share a tenant (nor could one be taken for the other).
    static func text(_ bytes: UnsafeRawBufferPointer) -> String {
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
            return name.lowercased() == "key" ? "\(name)=\(EncodedRecord.redactedValue)" : String(pair)
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
