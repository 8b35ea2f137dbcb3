import Foundation
import NIOCore
import NIOHTTP1

/// An answer the sidecar gives itself, in the provider's error shape: OpenAI's
/// `{"error":{"message":…,"type":…,"param":null,"code":…}}` by default, Anthropic's
/// `{"type":"error","error":{"type":…,"message":…}}` for `/v1/messages`.
struct ProxyErrorResponse {
    let status: HTTPResponseStatus
    let type: String
    let code: String
    let message: String
    /// Seconds, sent as `Retry-After`.
    var retryAfter: Int?
    /// For a policy refusal: the reason the wire records (ResponseDone.reject_reason).
    var rejectReason = ""
    /// A 407's challenge, sent as `Proxy-Authenticate`.
    var proxyAuthenticate: StaticString?

    init(
        status: HTTPResponseStatus, type: String, code: String, message: String, retryAfter: Int? = nil,
        rejectReason: String = ""
    ) {
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
        self.rejectReason = rejectReason
    }

    enum Shape {
        case openAI
        case anthropic

        /// Anthropic's API for `/v1/messages` (and its sub-paths), OpenAI's shape everywhere else.
        static func forPath(_ path: String) -> Shape {
            let pathOnly = path.split(separator: "?", maxSplits: 1).first ?? ""
            return pathOnly.hasSuffix("/v1/messages") || pathOnly.contains("/v1/messages/") ? .anthropic : .openAI
        }
    }

    static func badRequest(_ detail: String) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .badRequest, type: "invalid_request_error", code: "malformed_request",
            message: "llmtap-sidecar could not parse the request: \(detail)")
    }

    static func requestTimeout(_ timeout: TimeAmount, body: Bool = false) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .requestTimeout, type: "invalid_request_error", code: "request_timeout",
            message: body
                ? "the client stopped sending: the request body did not arrive within \(timeout.nanoseconds / 1_000_000_000) s"
                : "the request head did not arrive within \(timeout.nanoseconds / 1_000_000_000) s")
    }

    static func forbidden(_ detail: String) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .forbidden, type: "llmtap_proxy_error", code: "forbidden", message: detail)
    }

    static func misdirected(_ detail: String) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .misdirectedRequest, type: "llmtap_proxy_error", code: "misdirected_request", message: detail)
    }

    /// A gateway request no provider's route takes (by its `Host` and path): nothing is forwarded.
    static func noRoute(host: String?, path: String) -> ProxyErrorResponse {
        let asked = host.map { "host \($0)" } ?? "a request without a Host"
        return ProxyErrorResponse(
            status: .notFound, type: "invalid_request_error", code: "no_route",
            message: "no provider is configured for \(asked) and path \(path)", rejectReason: "no_route")
    }

    /// A gateway's CONNECT tunnel, with client keys (`auth_keys`) set, that showed none of them
    /// in `Proxy-Authorization`.
    static func proxyAuthenticationRequired() -> ProxyErrorResponse {
        var response = ProxyErrorResponse(
            status: .proxyAuthenticationRequired, type: "invalid_request_error", code: "invalid_api_key",
            message: "a CONNECT tunnel needs a client key this gateway accepts, in Proxy-Authorization")
        response.proxyAuthenticate = #"Basic realm="llmtap", charset="UTF-8""#
        return response
    }

    /// A gateway route with client keys (`auth_keys`), and a request that showed none of them.
    static func invalidClientKey() -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .unauthorized, type: "invalid_request_error", code: "invalid_api_key",
            message: "a client key this gateway accepts is required", rejectReason: "invalid_client_key")
    }

    static func headersTooLarge(limit: Int) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .requestHeaderFieldsTooLarge, type: "invalid_request_error", code: "request_headers_too_large",
            message: "the request headers are larger than the sidecar accepts (\(limit) bytes)")
    }

    static func upstreamUnreachable(_ upstream: UpstreamTarget, _ error: any Error) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .badGateway, type: "llmtap_upstream_error", code: "upstream_unreachable",
            message: "llmtap-sidecar could not reach the upstream \(upstream): \(error)")
    }

    static func tunnelUnreachable(host: String, port: Int, _ error: any Error) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .badGateway, type: "llmtap_upstream_error", code: "upstream_unreachable",
            message: "llmtap-sidecar could not open a tunnel to \(host):\(port): \(error)")
    }

    static func upstreamTimeout(_ upstream: UpstreamTarget, _ timeout: TimeAmount) -> ProxyErrorResponse {
        ProxyErrorResponse(
            status: .gatewayTimeout, type: "llmtap_upstream_error", code: "upstream_timeout",
            message: "the upstream \(upstream) sent nothing for \(timeout.nanoseconds / 1_000_000_000) s")
    }

    func body(shape: Shape) -> ByteBuffer {
        switch shape {
        case .openAI:
            ByteBuffer(
                string:
                    #"{"error":{"message":\#(jsonString(message)),"type":\#(jsonString(type)),"param":null,"code":\#(jsonString(code))}}"#
            )
        case .anthropic:
            ByteBuffer(
                string:
                    #"{"type":"error","error":{"type":\#(jsonString(anthropicType)),"message":\#(jsonString(message))}}"#
            )
        }
    }

    /// Anthropic's error type for the status (docs.anthropic.com, "Errors").
    private var anthropicType: String {
        switch status.code {
        case 400, 408, 413, 421, 431: "invalid_request_error"
        case 401: "authentication_error"
        case 403: "permission_error"
        case 404: "not_found_error"
        case 429: "rate_limit_error"
        default: "api_error"
        }
    }

    private func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let control where control.value < 0x20:
                out += String(format: "\\u%04x", control.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
