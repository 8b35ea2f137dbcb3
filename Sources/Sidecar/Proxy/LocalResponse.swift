import NIOCore
import NIOHTTP1

/// The one writer of the sidecar's own answers: an error in the provider's shape
/// (`ProxyErrorResponse`), and the two interim answers a proxy gives (`100 Continue`, and
/// `200 Connection Established` to a CONNECT).
enum LocalResponse {
    /// A whole answer: status line, `retry-after` when it has one, a JSON body in `shape`.
    static func write(
        _ response: ProxyErrorResponse, shape: ProxyErrorResponse.Shape = .openAI, exchangeID: String?, close: Bool,
        version: HTTPVersion, into out: inout ByteBuffer
    ) {
        let body = response.body(shape: shape)
        HeaderRules.writeStatusLineStart(version: version, code: response.status.code, into: &out)
        out.writeString(response.status.reasonPhrase)
        out.writeStaticString("\r\n")
        if let retryAfter = response.retryAfter {
            out.writeStaticString("retry-after: ")
            out.writeString(String(retryAfter))
            out.writeStaticString("\r\n")
        }
        if let challenge = response.proxyAuthenticate {
            out.writeStaticString("proxy-authenticate: ")
            out.writeStaticString(challenge)
            out.writeStaticString("\r\n")
        }
        out.writeStaticString("content-type: application/json\r\ncontent-length: ")
        out.writeString(String(body.readableBytes))
        out.writeStaticString("\r\n")
        HeaderRules.writeEnding(exchangeID: exchangeID, close: close, version: version, into: &out)
        out.writeImmutableBuffer(body)
    }

    /// `100 Continue`, for a client that waits before sending its body.
    static func writeContinue(version: HTTPVersion, into out: inout ByteBuffer) {
        out.writeStaticString(version.minor >= 1 ? "HTTP/1.1 100 Continue\r\n\r\n" : "HTTP/1.0 100 Continue\r\n\r\n")
    }

    /// The answer to a CONNECT the proxy serves: the tunnel's bytes follow.
    static func writeConnectionEstablished(into out: inout ByteBuffer) {
        out.writeStaticString("HTTP/1.1 200 Connection Established\r\n\r\n")
    }
}
