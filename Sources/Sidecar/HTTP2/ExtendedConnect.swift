import Foundation
import NIOCore
import NIOHPACK
import NIOHTTP2

/// WebSocket over HTTP/2 (RFC 8441): a stream whose HEADERS say `:method CONNECT` and
/// `:protocol websocket` is turned, before NIOHTTP2's HTTP/1 codec reads it, into the HTTP/1.1
/// upgrade the rest of the sidecar knows (`GET`, `Connection: upgrade`, `Upgrade: websocket`, a
/// fresh `Sec-WebSocket-Key`, as RFC 8441 section 5 maps the two), and `HTTP2StreamBridge` is told
/// to carry the stream as a tunnel: the upstream's 101 goes back as `:status 200`, and DATA frames
/// carry the WebSocket frames both ways. NIOHTTP2 accepts `:protocol` because the sidecar's
/// SETTINGS say `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`, and has checked the block already.
final class ExtendedConnectDetector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = HTTP2Frame.FramePayload

    private let bridge: HTTP2StreamBridge

    init(bridge: HTTP2StreamBridge) {
        self.bridge = bridge
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let payload = unwrapInboundIn(data)
        // Only the request's first HEADERS can ask; the handler's work is done after it.
        defer { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
        guard case .headers(var headers) = payload, let upgrade = Self.upgradeHeaders(headers.headers) else {
            return context.fireChannelRead(data)
        }
        headers.headers = upgrade
        bridge.carriesWebSocket()
        context.fireChannelRead(wrapInboundOut(.headers(headers)))
    }

    /// The block as an HTTP/1.1 upgrade's, or nil when it is no extended CONNECT for WebSocket.
    static func upgradeHeaders(_ block: HPACKHeaders) -> HPACKHeaders? {
        guard block.first(name: ":method") == "CONNECT",
            block.first(name: ":protocol")?.lowercased() == "websocket"
        else { return nil }
        var upgrade = HPACKHeaders()
        upgrade.reserveCapacity(block.count + 3)
        for (name, value, indexing) in block {
            switch name {
            case ":method": upgrade.add(name: name, value: "GET", indexing: indexing)
            case ":protocol", "sec-websocket-key", "connection", "upgrade": continue
            default: upgrade.add(name: name, value: value, indexing: indexing)
            }
        }
        let key = (0..<16).map { _ in UInt8.random(in: 0...255) }
        upgrade.add(name: "connection", value: "upgrade")
        upgrade.add(name: "upgrade", value: "websocket")
        upgrade.add(name: "sec-websocket-key", value: Data(key).base64EncodedString())
        return upgrade
    }
}
