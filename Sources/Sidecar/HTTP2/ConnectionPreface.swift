import NIOCore

/// How a client on the reverse listener speaks, read from its first bytes: HTTP/2 with prior
/// knowledge (h2c) opens with the connection preface (RFC 9113, section 3.4), which no HTTP/1
/// request line can start like, since `PRI` is not a method the sidecar forwards and
/// `PRI * HTTP/2.0` is not HTTP/1.
enum ConnectionPreface {
    enum Verdict: Equatable {
        /// The bytes so far could still be the preface: wait for more.
        case undecided
        case http2
        case http1
    }

    /// The 24 bytes an HTTP/2 client sends before anything else.
    static let bytes: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// Decides as soon as the bytes received tell: at the first byte that differs from the
    /// preface (HTTP/1, usually at once: `P` begins only `POST`, `PUT` and `PATCH`, which part at
    /// the second or third byte), or when all 24 have matched.
    static func classify(_ buffer: ByteBuffer) -> Verdict {
        let view = buffer.readableBytesView
        var index = view.startIndex
        for expected in bytes {
            guard index < view.endIndex else { return .undecided }
            if view[index] != expected { return .http1 }
            index = view.index(after: index)
        }
        return .http2
    }
}
