import Foundation
import NIOCore
import NIOHTTP1

/// An answer the sidecar gives itself, in OpenAI's error shape:
/// `{"error":{"message":…,"type":…,"code":…}}`.
struct ProxyErrorResponse {
    let status: HTTPResponseStatus
    let type: String
    let code: String
    let message: String

    static func badRequest(_ detail: String) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .badRequest, type: "invalid_request_error", code: "malformed_request",
                           message: "llmtap-sidecar could not parse the request: \(detail)")
    }

    static func requestTimeout(_ timeout: TimeAmount) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .requestTimeout, type: "invalid_request_error", code: "request_timeout",
                           message: "the request head did not arrive within \(timeout.nanoseconds / 1_000_000_000) s")
    }

    static func forbidden(_ detail: String) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .forbidden, type: "llmtap_proxy_error", code: "forbidden", message: detail)
    }

    static func misdirected(_ detail: String) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .misdirectedRequest, type: "llmtap_proxy_error", code: "misdirected_request", message: detail)
    }

    static func headersTooLarge(limit: Int) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .requestHeaderFieldsTooLarge, type: "invalid_request_error", code: "request_headers_too_large",
                           message: "the request headers are larger than the sidecar accepts (\(limit) bytes)")
    }

    static func upstreamUnreachable(_ upstream: UpstreamTarget, _ error: any Error) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .badGateway, type: "llmtap_upstream_error", code: "upstream_unreachable",
                           message: "llmtap-sidecar could not reach the upstream \(upstream): \(error)")
    }

    static func tunnelUnreachable(host: String, port: Int, _ error: any Error) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .badGateway, type: "llmtap_upstream_error", code: "upstream_unreachable",
                           message: "llmtap-sidecar could not open a tunnel to \(host):\(port): \(error)")
    }

    static func upstreamTimeout(_ upstream: UpstreamTarget, _ timeout: TimeAmount) -> ProxyErrorResponse {
        ProxyErrorResponse(status: .gatewayTimeout, type: "llmtap_upstream_error", code: "upstream_timeout",
                           message: "the upstream \(upstream) sent nothing for \(timeout.nanoseconds / 1_000_000_000) s")
    }

    var body: ByteBuffer {
        ByteBuffer(string: #"{"error":{"message":\#(jsonString(message)),"type":\#(jsonString(type)),"code":\#(jsonString(code))}}"#)
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
