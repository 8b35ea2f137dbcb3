import Logging
import NIOCore
import NIOTLS

/// Logs why a MITM client's TLS handshake failed, with the usual reason spelled out.
final class TLSFailureLogger: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let host: String
    private let logger: Logger

    init(host: String, logger: Logger) {
        self.host = host
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            // Only the handshake is of interest here.
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.warning(
            "a MITM client's TLS handshake failed: it may not trust the LLMTap CA (llmtap-sidecar ca export), or not speak TLS",
            metadata: [
                "host": "\(host)", "client": "\(context.channel.remoteAddress.map { "\($0)" } ?? "")",
                "error": "\(error)",
            ])
        context.fireErrorCaught(error)
    }
}
