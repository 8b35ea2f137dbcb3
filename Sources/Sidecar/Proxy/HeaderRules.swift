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
        credential: (header: CredentialHeader, value: String)? = nil,
        extraLines: StaticString? = nil, webSocket: Bool = false, into out: inout ByteBuffer
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
        head.headers.bytes.withUnsafeReadableBytes { raw in
            var lines = HeaderLineWriter(raw)
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
                case 24 where webSocket && RawHeaderFields.equalsIgnoringCase(name, "sec-websocket-extensions"):
                    // No extension (permessage-deflate) is negotiated: the tap reads the messages.
                    return
                default:
                    break
                }
                lines.write(name, value, into: &out)
            }
            lines.finish(into: &out)
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
        if let extraLines { out.writeStaticString(extraLines) }
        if head.chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
        if webSocket { out.writeStaticString("connection: upgrade\r\nupgrade: websocket\r\n") }
        out.writeStaticString("\r\n")
    }

    /// Writes the upstream's 101 as it goes to the client: its end-to-end fields (the accept key,
    /// the subprotocol), the upgrade named again, the exchange id added. An extension the upstream
    /// accepted anyway is left out: none was offered.
    static func writeSwitchingProtocolsHead(
        _ head: UpstreamResponseHead, exchangeID: String, into out: inout ByteBuffer
    ) {
        writeStatusLineStart(version: .http1_1, code: 101, into: &out)
        out.writeImmutableBuffer(head.reasonBytes)
        out.writeStaticString("\r\n")
        head.headers.bytes.withUnsafeReadableBytes { raw in
            var lines = HeaderLineWriter(raw)
            forEachEndToEndField(head.headers) { name, value in
                if RawHeaderFields.equalsIgnoringCase(name, "sec-websocket-extensions") { return }
                lines.write(name, value, into: &out)
            }
            lines.finish(into: &out)
        }
        out.writeStaticString("connection: upgrade\r\nupgrade: websocket\r\n")
        writeEnding(exchangeID: exchangeID, close: false, version: .http1_1, into: &out)
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
        head.headers.bytes.withUnsafeReadableBytes { raw in
            var lines = HeaderLineWriter(raw)
            forEachEndToEndField(head.headers) { name, value in
                if framing != .asIs, RawHeaderFields.equalsIgnoringCase(name, "content-length") { return }
                lines.write(name, value, into: &out)
            }
            lines.finish(into: &out)
        }
        if framing == .chunked { out.writeStaticString("transfer-encoding: chunked\r\n") }
        writeEnding(exchangeID: exchangeID, close: close, version: version, into: &out)
    }

    /// "HTTP/1.1 200 ": the reason and the line's end follow, as the upstream's bytes or our own
    /// phrase (no buffer made for a local answer's reason).
    static func writeStatusLineStart(version: HTTPVersion, code: UInt, into out: inout ByteBuffer) {
        out.writeStaticString(version.minor >= 1 ? "HTTP/1.1 " : "HTTP/1.0 ")
        out.writeString(String(code))
        out.writeStaticString(" ")
    }

    static func writeEnding(exchangeID: String?, close: Bool, version: HTTPVersion, into out: inout ByteBuffer) {
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

    fileprivate static func writeField(
        _ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer, into out: inout ByteBuffer
    ) {
        out.writeBytes(name)
        out.writeStaticString(": ")
        out.writeBytes(value)
        out.writeStaticString("\r\n")
    }

    /// The request's `Host` (the parser allows one at most), if it has one.
    static func host(of headers: RawHeaderFields) -> String? {
        var host: String?
        headers.forEachField { name, value in
            if RawHeaderFields.equalsIgnoringCase(name, "host") { host = String(decoding: value, as: UTF8.self) }
        }
        return host
    }

    /// Whether the head has a field of this (lower-case) name.
    static func has(_ name: StaticString, in headers: RawHeaderFields) -> Bool {
        var found = false
        headers.forEachField { field, _ in
            if !found, RawHeaderFields.equalsIgnoringCase(field, name) { found = true }
        }
        return found
    }

    /// The path and query of a request target, whatever form it came in.
    static func originForm(_ uri: String) -> String {
        AbsoluteURL.originForm(uri)
    }
}

/// Writes header fields onward as `name: value` lines, from the bytes of the head they came in.
/// Consecutive lines that arrived in exactly that form (`": "` between name and value, CRLF at
/// the end: nearly every line any client or provider sends) are copied as one piece, so a head
/// costs a few buffer writes, not four per field; any other line is written field by field. The
/// bytes written are the same either way.
struct HeaderLineWriter {
    /// The head's bytes, which every name and value given points into.
    private let raw: UnsafeRawBufferPointer
    /// Lines already accepted and not yet written: `raw[runStart..<runEnd]` (empty: -1 both).
    private var runStart = -1
    private var runEnd = -1

    init(_ raw: UnsafeRawBufferPointer) {
        self.raw = raw
    }

    mutating func write(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        guard let line = lineAsWritten(name, value) else {
            finish(into: &out)
            return HeaderRules.writeField(name, value, into: &out)
        }
        if line.lowerBound != runEnd {
            finish(into: &out)
            runStart = line.lowerBound
        }
        runEnd = line.upperBound
    }

    /// Writes the lines still held: call it after the last field.
    mutating func finish(into out: inout ByteBuffer) {
        if runStart >= 0 { out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[runStart..<runEnd])) }
        runStart = -1
        runEnd = -1
    }

    /// The field's whole line, CRLF included, if it reads exactly `name: value` CRLF.
    private func lineAsWritten(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Range<Int>? {
        guard let base = raw.baseAddress, let nameAt = name.baseAddress, let valueAt = value.baseAddress else {
            return nil
        }
        let start = nameAt - base
        let nameEnd = start + name.count
        let valueEnd = valueAt - base + value.count
        guard start >= 0, valueAt - base == nameEnd + 2, valueEnd + 2 <= raw.count,
            raw[nameEnd] == UInt8(ascii: ":"), raw[nameEnd + 1] == UInt8(ascii: " "),
            raw[valueEnd] == 0x0D, raw[valueEnd + 1] == 0x0A
        else { return nil }
        return start..<(valueEnd + 2)
    }
}
