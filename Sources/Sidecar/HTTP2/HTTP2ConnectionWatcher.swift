import Logging
import NIOCore
import NIOHTTP2
import Wire

/// After NIOHTTP2's handler on a client connection, for what concerns the connection rather than
/// a stream:
/// - what the peer did wrong is counted with the malformed requests and logged (by its kind only:
///   NIOHTTP2's descriptions quote header values, which may be credentials). A stream error has
///   reset that stream and the others go on; after a connection error NIOHTTP2 has sent GOAWAY,
///   and the connection closes.
/// - graceful shutdown: GOAWAY naming the last stream opened, so the client starts no more on it;
///   the streams under way finish, then the connection closes.
/// - with no stream open for --client-timeout, as an idle HTTP/1.1 connection, it closes (GOAWAY
///   first).
///
/// It is NIOHTTP2's stream delegate too, which tells it of each stream: NIOHTTP2 calls it on the
/// connection's event loop, the only place its state is touched (hence the unchecked `Sendable`).
final class HTTP2ConnectionWatcher: ChannelDuplexHandler, NIOHTTP2StreamDelegate, @unchecked Sendable {
    typealias InboundIn = Never
    typealias OutboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private enum Phase {
        case serving
        /// GOAWAY sent; the close comes when the last stream ends.
        case draining
        /// Half-closed: the client reads the last frames and closes, or `closeGrace` passes.
        case closing
    }

    /// How long a half-closed connection waits for its client to close before it closes outright.
    static let closeGrace = TimeAmount.seconds(5)

    private let idleTimeout: TimeAmount
    private let counters: SidecarCounters
    private let logger: Logger
    private var context: ChannelHandlerContext?
    private var phase = Phase.serving
    private var openStreams = 0
    private var lastStream = HTTP2StreamID(0)
    private var timer = ConnectionTimer()

    init(idleTimeout: TimeAmount, counters: SidecarCounters, logger: Logger) {
        self.idleTimeout = idleTimeout
        self.counters = counters
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        armIdleTimer()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer.cancel()
        self.context = nil
    }

    // MARK: Streams

    func streamCreated(_ id: HTTP2StreamID, channel: any Channel) {
        openStreams += 1
        lastStream = max(lastStream, id)
        if case .serving = phase { timer.cancel() }
    }

    func streamClosed(_ id: HTTP2StreamID, channel: any Channel) {
        openStreams -= 1
        guard openStreams == 0, let context else { return }
        switch phase {
        case .serving:
            armIdleTimer()
        case .draining:
            // The stream closed as its last frame went out, inside its handler's write: the close
            // waits until that handler has settled its exchange.
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { loopBound.value.halfClose() }
        case .closing:
            break
        }
    }

    private func armIdleTimer() {
        guard let context else { return }
        timer.set(at: .now() + idleTimeout, on: context.eventLoop) { [self] in
            timer.fired()
            guard case .serving = phase, openStreams == 0 else { return }
            goAway()
        }
    }

    // MARK: Closing

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else { return context.fireUserInboundEventTriggered(event) }
        if case .serving = phase { goAway() }
    }

    /// GOAWAY(NO_ERROR), then the close once no stream is open.
    private func goAway() {
        guard let context else { return }
        timer.cancel()
        phase = .draining
        let frame = HTTP2Frame(
            streamID: .rootStream, payload: .goAway(lastStreamID: lastStream, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        if openStreams == 0 { halfClose() }
    }

    /// Closes its side once the last frames are out; the client, which has read them all by the
    /// FIN, closes its own. Closing outright with the client's last frames (WINDOW_UPDATEs, a PING)
    /// unread would send a TCP reset, which can destroy the end of a response before it is read.
    private func halfClose() {
        guard let context, case .draining = phase else { return }
        phase = .closing
        context.flush()
        context.close(mode: .output, promise: nil)
        timer.set(at: .now() + Self.closeGrace, on: context.eventLoop) { [self] in
            timer.fired()
            self.context?.close(promise: nil)
        }
    }

    // MARK: Errors

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is any NIOHTTP2Error || error is NIOHTTP2Errors.StreamError else {
            logger.debug("client connection error", metadata: ["error": "\(error)"])
            return context.close(promise: nil)
        }
        // Once the connection is closing, what more its peer sends is the same failure.
        if case .closing = phase { return }
        let streamLevel = Self.isStreamError(error)
        let count = counters.malformedRequests.add(1, ordering: .relaxed).newValue
        if LogSampling.isWorthLogging(occurrence: count) {
            logger.warning(
                streamLevel
                    ? "HTTP/2 stream error; reset the stream" : "HTTP/2 connection error; sent GOAWAY and closing",
                metadata: ["error": "\(Self.kind(of: error))", "count": "\(count)"])
        }
        if !streamLevel {
            // NIOHTTP2 has sent GOAWAY with the error: the client reads it before the FIN.
            timer.cancel()
            phase = .draining
            halfClose()
        }
    }

    /// The error's type, as the log names it: never its description, which may quote a header's value.
    static func kind(of error: any Error) -> String {
        if let wrapped = error as? NIOHTTP2Errors.StreamError { return kind(of: wrapped.baseError) }
        return String(describing: type(of: error))
    }

    /// Whether NIOHTTP2 treats `error` as one stream's (RST_STREAM) rather than the connection's
    /// (GOAWAY): its checks of a header block and of a body's length, and a stream refused past
    /// SETTINGS_MAX_CONCURRENT_STREAMS. NIOHTTP2 reports both kinds on the connection as the same
    /// error types, so they are told apart by type; anything else closes the connection.
    static func isStreamError(_ error: any Error) -> Bool {
        switch error {
        case is NIOHTTP2Errors.StreamError,
            is NIOHTTP2Errors.InvalidHTTP2HeaderFieldName, is NIOHTTP2Errors.InvalidHTTP2HeaderFieldValue,
            is NIOHTTP2Errors.ForbiddenHeaderField, is NIOHTTP2Errors.MissingPseudoHeader,
            is NIOHTTP2Errors.DuplicatePseudoHeader, is NIOHTTP2Errors.PseudoHeaderAfterRegularHeader,
            is NIOHTTP2Errors.UnknownPseudoHeader, is NIOHTTP2Errors.UnsupportedPseudoHeader,
            is NIOHTTP2Errors.InvalidPseudoHeaders, is NIOHTTP2Errors.InvalidPseudoHeaderValue,
            is NIOHTTP2Errors.MissingHostHeader, is NIOHTTP2Errors.DuplicateHostHeader,
            is NIOHTTP2Errors.EmptyPathHeader, is NIOHTTP2Errors.TrailersWithoutEndStream,
            is NIOHTTP2Errors.ContentLengthViolated, is NIOHTTP2Errors.ContentLengthHeadersMismatch,
            is NIOHTTP2Errors.ContentLengthHeaderNegative, is NIOHTTP2Errors.ContentLengthHeaderMalformedValue,
            is NIOHTTP2Errors.MaxStreamsViolation:
            true
        default:
            false
        }
    }
}
