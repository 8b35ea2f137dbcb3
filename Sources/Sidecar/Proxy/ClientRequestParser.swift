import NIOCore
import NIOHTTP1

/// A request head as the client sent it, with what the proxy needs from it worked out once.
struct ClientRequestHead {
    var method: HTTPMethod
    /// The request target as sent: origin form (`/v1/x?y`), or absolute form.
    var uri: String
    var version: HTTPVersion
    var headers: RawHeaderFields
    var keepAlive: Bool
    var chunked: Bool
    var contentLength: Int?
    var expectsContinue: Bool
    /// A GET over HTTP/1.1 asking to switch to WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
    var webSocketUpgrade = false
}

/// Reads HTTP/1.1 requests from a client connection's bytes as they arrive, whatever the
/// boundaries between reads: heads whole, bodies as slices of the bytes read (never copied),
/// de-chunked. Pipelined requests simply follow each other.
///
/// It refuses, before anything is forwarded, whatever could make the proxy and the upstream
/// disagree about where a request ends (RFC 9112, section 6.3, and section 11.2 on smuggling):
/// a bad request line, a header that breaks the field syntax, two Content-Length fields,
/// Content-Length with Transfer-Encoding, a transfer coding other than chunked, a bad chunk size.
/// A head larger than the limit is refused with 431.
struct ClientRequestParser {
    typealias Event = HTTPMessagePart<ClientRequestHead>

    private enum State {
        case head
        case body(BodyReader, keepAlive: Bool)
        /// A request without keep-alive has ended: nothing after it is read, as the connection closes.
        case closed
        case failed
    }

    let maxHeadBytes: Int
    private var state = State.head
    private var pending = ByteBuffer()
    /// How far into `pending` the search for the head's end has already looked.
    private var headScanned = 0

    init(maxHeadBytes: Int) {
        self.maxHeadBytes = maxHeadBytes
    }

    /// Bytes received and not yet turned into events.
    var bufferedBytes: Int { pending.readableBytes }

    /// Everything received past the last event, handed over (after a CONNECT head, those bytes
    /// belong to the tunnel, not to HTTP).
    mutating func takeBuffered() -> ByteBuffer {
        defer {
            pending = ByteBuffer()
            headScanned = 0
        }
        return pending
    }

    mutating func receive(_ input: ByteBuffer) {
        pending.appendReceived(input)
    }

    /// The next event the bytes received so far complete, or nil when more are needed.
    mutating func next() throws(HTTPFramingError) -> Event? {
        do {
            return try step()
        } catch {
            state = .failed
            pending = ByteBuffer()
            throw error
        }
    }

    private mutating func step() throws(HTTPFramingError) -> Event? {
        switch state {
        case .failed:
            throw HTTPFramingError("the connection already failed")
        case .closed:
            return nil
        case .body(var reader, let keepAlive):
            do {
                let (part, ended): (Event?, Bool) = try reader.nextPart(from: &pending)
                state = ended ? (keepAlive ? .head : .closed) : .body(reader, keepAlive: keepAlive)
                return part
            } catch {
                throw error
            }
        case .head:
            // Empty lines before a request line are ignored (RFC 9112, section 2.2).
            if headScanned == 0 {
                while let first = pending.readableBytesView.first, first == 0x0D || first == 0x0A {
                    pending.moveReaderIndex(forwardBy: 1)
                }
            }
            guard pending.readableBytes > 0 else { return nil }
            let scanned = pending.withUnsafeReadableBytes { [headScanned] raw in
                Result { () throws(HTTPFramingError) -> Int? in
                    try HeaderLineScanner.headEnd(raw, strict: true, from: headScanned)
                }
            }
            let end: Int?
            do {
                end = try scanned.get()
            } catch {
                throw error
            }
            // The same limit whether the head came in one read or a thousand.
            guard let end else {
                guard pending.readableBytes <= maxHeadBytes else {
                    throw HTTPFramingError(
                        "the request head is over \(maxHeadBytes) bytes", reason: .overLimit)
                }
                headScanned = HeaderLineScanner.resumePoint(afterScanning: pending.readableBytes)
                return nil
            }
            guard end <= maxHeadBytes else {
                throw HTTPFramingError("the request head is over \(maxHeadBytes) bytes", reason: .overLimit)
            }
            headScanned = 0
            let head = try Self.parseHead(pending.readSlice(length: end)!)
            state = .body(
                BodyReader(head.chunked ? .chunked : .length(head.contentLength ?? 0), strictLineEndings: true),
                keepAlive: head.keepAlive)
            return .head(head)
        }
    }

    static func parseHead(_ bytes: ByteBuffer) throws(HTTPFramingError) -> ClientRequestHead {
        try bytes.withUnsafeReadableBytes { raw in
            Result { () throws(HTTPFramingError) -> ClientRequestHead in try parseHead(raw, bytes: bytes) }
        }.get()
    }

    private static func parseHead(_ raw: UnsafeRawBufferPointer, bytes: ByteBuffer) throws(HTTPFramingError)
        -> ClientRequestHead
    {
        var position = 0
        // "METHOD SP request-target SP HTTP/1.x"
        guard let line = HeaderLineScanner.nextLine(raw, &position) else { throw HTTPFramingError("no request line") }
        guard let firstSpace = raw[line].firstIndex(of: 0x20), firstSpace > line.lowerBound,
            let secondSpace = raw[(firstSpace + 1)..<line.upperBound].firstIndex(of: 0x20), secondSpace > firstSpace + 1
        else { throw HTTPFramingError("the request line is not \"METHOD target HTTP/1.1\"") }
        let methodBytes = raw[line.lowerBound..<firstSpace]
        guard HeaderLineScanner.allTokenBytes(raw, line.lowerBound..<firstSpace) else {
            throw HTTPFramingError("the method is not a token")
        }
        let target = raw[(firstSpace + 1)..<secondSpace]
        guard target.allSatisfy(HeaderLineScanner.isTargetByte) else {
            throw HTTPFramingError("the request target holds a byte it can't")
        }
        let versionBytes = raw[(secondSpace + 1)..<line.upperBound]
        guard versionBytes.count == 8, versionBytes.starts(with: "HTTP/1.".utf8) else {
            throw HTTPFramingError("the request line's version is not HTTP/1.x")
        }
        let minor = versionBytes.last!
        guard minor == UInt8(ascii: "0") || minor == UInt8(ascii: "1") else {
            throw HTTPFramingError("the request line's version is not HTTP/1.0 or HTTP/1.1")
        }
        let version = HTTPVersion(major: 1, minor: minor == UInt8(ascii: "1") ? 1 : 0)

        var contentLength: Int?
        var transferEncoded = false
        var chunked = false
        var close = false
        var keepAlive = false
        var expectsContinue = false
        var connectionUpgrade = false
        var upgradeWebSocket = false
        var hosts = 0
        let fields = try HeaderLineScanner.fields(raw, from: &position) {
            (name, value) throws(HTTPFramingError) in
            let valueBytes = UnsafeRawBufferPointer(rebasing: raw[value])
            switch name.count {
            case 4 where RawHeaderFields.equalsIgnoringCase(name, "host"):
                hosts += 1
            case 6 where RawHeaderFields.equalsIgnoringCase(name, "expect"):
                expectsContinue = RawHeaderFields.equalsIgnoringCase(valueBytes, "100-continue")
            case 10 where RawHeaderFields.equalsIgnoringCase(name, "connection"):
                var nominatesProtected = false
                HeaderLineScanner.forEachToken(raw, value) { token in
                    if RawHeaderFields.equalsIgnoringCase(token, "close") { close = true }
                    if RawHeaderFields.equalsIgnoringCase(token, "keep-alive") { keepAlive = true }
                    if RawHeaderFields.equalsIgnoringCase(token, "upgrade") { connectionUpgrade = true }
                    if HeaderRules.neverConnectionNominated.contains(token) { nominatesProtected = true }
                }
                // A proxy drops what Connection names (RFC 9110, section 7.6.1); a header that frames,
                // routes or authorises the request can't go that way: the upstream would read the
                // body as another request, or the policy would judge a credential that never arrives.
                guard !nominatesProtected else {
                    throw HTTPFramingError(
                        "Connection names a header that frames, routes or authorises the request")
                }
            case 7 where RawHeaderFields.equalsIgnoringCase(name, "upgrade"):
                HeaderLineScanner.forEachToken(raw, value) { token in
                    if RawHeaderFields.equalsIgnoringCase(token, "websocket") { upgradeWebSocket = true }
                }
            case 14 where RawHeaderFields.equalsIgnoringCase(name, "content-length"):
                guard contentLength == nil else {
                    throw HTTPFramingError("two Content-Length fields")
                }
                guard let length = HeaderLineScanner.decimal(valueBytes) else {
                    throw HTTPFramingError("Content-Length is not a number")
                }
                contentLength = length
            case 17 where RawHeaderFields.equalsIgnoringCase(name, "transfer-encoding"):
                guard !transferEncoded else {
                    throw HTTPFramingError("two Transfer-Encoding fields")
                }
                transferEncoded = true
                // A request body must end where both sides agree: only "chunked", alone, with no
                // empty list elements beside it ("chunked," is refused by llhttp, so by us too).
                chunked = RawHeaderFields.equalsIgnoringCase(valueBytes, "chunked")
                guard chunked else {
                    throw HTTPFramingError("Transfer-Encoding other than chunked")
                }
            default:
                break
            }
        }
        if transferEncoded, contentLength != nil {
            throw HTTPFramingError("Content-Length together with Transfer-Encoding")
        }
        if version.minor == 1, hosts != 1 {
            throw HTTPFramingError(hosts == 0 ? "an HTTP/1.1 request without Host" : "more than one Host field")
        }

        let method: HTTPMethod
        if methodBytes.elementsEqual("POST".utf8) {
            method = .POST
        } else if methodBytes.elementsEqual("GET".utf8) {
            method = .GET
        } else {
            method = HTTPMethod(rawValue: String(decoding: methodBytes, as: UTF8.self))
        }
        return ClientRequestHead(
            method: method, uri: String(decoding: target, as: UTF8.self), version: version,
            headers: RawHeaderFields(bytes: bytes, fields: fields),
            keepAlive: !close && (version.minor == 1 || keepAlive), chunked: chunked, contentLength: contentLength,
            expectsContinue: expectsContinue,
            webSocketUpgrade: connectionUpgrade && upgradeWebSocket && method == .GET && version.minor == 1
        )
    }
}
