import Foundation
import NIOCore
import NIOHTTP1
import Wire

/// Where records go: the `AnalysisPublisher`, or a test's collector.
protocol RecordPublishing: Sendable {
    @discardableResult
    func publish(_ record: EncodedRecord) -> Bool
}

extension AnalysisPublisher: RecordPublishing {}

/// What every exchange's tap needs to know.
struct TapSettings: Sendable {
    let app: String
    /// Body bytes captured per direction and exchange. Forwarding is never capped.
    let maxCaptureBytes: Int
    /// Past the cap, this much of the response's end is still sent when it ends: streamed
    /// responses report their usage in their last events.
    let tailBytes: Int
}

/// Copies one exchange onto the wire as it happens: one `Request`, the response body as
/// `StreamChunk`s up to the capture cap (and its tail), then one `ResponseDone`.
///
/// Lives on the client connection's event loop; publishing never waits. Records are encoded here,
/// straight from the exchange's own headers and buffers (`EncodedRecord`), so nothing is copied
/// into intermediate messages and the publisher's thread only frames and sends.
final class ExchangeTap {
    /// The gateway provider the exchange went to, if a configuration routed it: told how it went.
    var provider: GatewayRoutes.Provider?
    /// Which of the provider's keys went upstream (a keyed hash), if one of its own did.
    var providerKeyID = ""
    /// Upstreams tried: each connect counts, whether or not it succeeded.
    var attempts: UInt32 = 0
    let exchangeID: String
    private let publisher: any RecordPublishing
    private let settings: TapSettings
    private var request: RequestFields
    private var requestHeaders: RawHeaderFields
    /// The captured request body: the first buffer as it came (no copy), later ones appended.
    private var requestCapture: ByteBuffer?
    private(set) var requestBytes: UInt64 = 0
    private var requestPublished = false

    private var responseBytes: UInt64 = 0
    private var responseCaptured = 0
    private var chunkIndex: UInt64 = 0
    private var responseTruncated = false
    /// The response's last bytes once past the cap, with the offset of the first of them.
    private var tail: [UInt8] = []
    private var tailOffset: UInt64 = 0
    private(set) var status: UInt32 = 0
    private var responseHeaders = RawHeaderFields()
    private var firstByteNanos: Int64 = 0
    private var finished = false

    init(
        exchangeID: String, head: ClientRequestHead, upstream: UpstreamTarget, path: String,
        clientAddress: String, tenant: String, settings: TapSettings, ingress: IngressMode = .reverse,
        publisher: any RecordPublishing
    ) {
        self.exchangeID = exchangeID
        self.publisher = publisher
        self.settings = settings
        var request = RequestFields()
        request.exchangeID = exchangeID
        request.ingress = ingress
        request.method = head.method.rawValue
        request.scheme = upstream.scheme
        request.host = upstream.authority
        request.path = Credentials.redactedPath(path)
        request.clientAddress = clientAddress
        request.app = settings.app
        request.tenant = tenant
        request.startUnixNanos = WallClock.nowUnixNanos()
        request.httpVersion =
            switch (head.version.major, head.version.minor) {
            case (1, 1): "HTTP/1.1"
            case (let major, 0) where major >= 2: "HTTP/\(major)"
            case (let major, let minor): "HTTP/\(major).\(minor)"
            }
        self.request = request
        self.requestHeaders = head.headers
    }

    /// The virtual key the request was made with, and its project: never the key itself.
    func policy(keyID: String, projectID: String) {
        request.keyID = keyID
        request.projectID = projectID
    }

    func requestBody(_ buffer: ByteBuffer) {
        requestBytes += UInt64(buffer.readableBytes)
        let captured = requestCapture?.readableBytes ?? 0
        let room = settings.maxCaptureBytes - captured
        guard room > 0 else { return }
        let take = min(room, buffer.readableBytes)
        if requestCapture == nil {
            requestCapture = buffer.getSlice(at: buffer.readerIndex, length: take)
        } else {
            requestCapture!.writeImmutableBuffer(buffer.getSlice(at: buffer.readerIndex, length: take)!)
        }
    }

    /// The request body has ended: the `Request` record goes out.
    func requestEnded() {
        publishRequest()
    }

    func responseHead(status: HTTPResponseStatus, headers: RawHeaderFields) {
        // An upstream may answer before the body has ended; the request record still comes first.
        publishRequest()
        self.status = UInt32(status.code)
        responseHeaders = headers
        firstByteNanos = WallClock.nowUnixNanos()
    }

    func responseBody(_ buffer: ByteBuffer) {
        let offset = responseBytes
        responseBytes += UInt64(buffer.readableBytes)
        let room = settings.maxCaptureBytes - responseCaptured
        if room >= buffer.readableBytes {
            buffer.withUnsafeReadableBytes { publishChunk($0, offset: offset) }
            responseCaptured += buffer.readableBytes
            return
        }
        if room > 0 {
            buffer.withUnsafeReadableBytes {
                publishChunk(UnsafeRawBufferPointer(rebasing: $0.prefix(room)), offset: offset)
            }
            responseCaptured += room
        }
        responseTruncated = true
        // Keep the end: amortised, trimmed when it has grown to twice the window.
        let skipped = max(0, room)
        if tail.isEmpty { tailOffset = offset + UInt64(skipped) }
        tail.append(contentsOf: buffer.readableBytesView.dropFirst(skipped))
        if tail.count > 2 * settings.tailBytes {
            let drop = tail.count - settings.tailBytes
            tail.removeFirst(drop)
            tailOffset += UInt64(drop)
        }
    }

    // MARK: A WebSocket session

    /// Message bytes each way of a WebSocket session, counted apart from the HTTP bodies.
    private var requestMessageBytes: UInt64 = 0
    private var responseMessageBytes: UInt64 = 0
    /// Set once the exchange switched to WebSocket: its end record says how the session went.
    var webSocket: WebSocketSessionFields?

    /// A data message of the session: one `StreamChunk`, both directions sharing one index.
    func webSocketMessage(direction: Direction, opcode: UInt8, data: [UInt8], size: UInt64) {
        let offset: UInt64
        if direction == .request {
            offset = requestMessageBytes
            requestMessageBytes += size
        } else {
            offset = responseMessageBytes
            responseMessageBytes += size
        }
        if data.count < size { responseTruncated = true }
        let record = data.withUnsafeBytes {
            EncodedRecord.streamChunk(
                exchangeID: exchangeID, direction: direction, index: chunkIndex, unixNanos: WallClock.nowUnixNanos(),
                offset: offset, data: $0, webSocketOpcode: UInt32(opcode), messageSize: size)
        }
        chunkIndex += 1
        publisher.publish(record)
    }

    /// The exchange is over, one way or another: the tail (if any) and `ResponseDone` go out.
    func finish(outcome: Outcome, status overrideStatus: UInt32? = nil, error: String = "", rejectReason: String = "") {
        guard !finished else { return }
        finished = true
        publishRequest()
        if !tail.isEmpty {
            let keep = min(tail.count, settings.tailBytes)
            tail.withUnsafeBytes {
                publishChunk(
                    UnsafeRawBufferPointer(rebasing: $0.suffix(keep)), offset: tailOffset + UInt64(tail.count - keep))
            }
            tail = []
        }
        var done = ResponseDoneFields()
        done.exchangeID = exchangeID
        done.status = overrideStatus ?? status
        done.upstreamFirstByteUnixNanos = firstByteNanos
        done.endUnixNanos = WallClock.nowUnixNanos()
        done.requestBytes = requestBytes
        done.responseBytes = responseBytes
        done.outcome = outcome
        done.error = error
        done.rejectReason = rejectReason
        done.responseChunks = chunkIndex
        done.responseTruncated = responseTruncated
        done.attempts = attempts
        done.provider = provider?.name ?? ""
        done.providerKeyID = providerKeyID
        if let webSocket {
            done.webSocket = webSocket
            done.requestBytes = requestMessageBytes
            done.responseBytes = responseMessageBytes
        }
        publisher.publish(EncodedRecord.responseDone(done, headers: responseHeaders, isSecret: Self.isSecret))
    }

    private func publishRequest() {
        guard !requestPublished else { return }
        requestPublished = true
        let captured = requestCapture?.readableBytes ?? 0
        request.bodySize = requestBytes
        request.bodyTruncated = requestBytes > UInt64(captured)
        let record = Self.withBytes(of: requestCapture) { body in
            EncodedRecord.request(request, headers: requestHeaders, isSecret: Self.isSecret, body: body)
        }
        requestCapture = nil
        publisher.publish(record)
    }

    private func publishChunk(_ data: UnsafeRawBufferPointer, offset: UInt64) {
        let record = EncodedRecord.streamChunk(
            exchangeID: exchangeID, direction: .response, index: chunkIndex, unixNanos: WallClock.nowUnixNanos(),
            offset: offset, data: data
        )
        chunkIndex += 1
        publisher.publish(record)
    }

    private static func isSecret(_ name: UnsafeRawBufferPointer) -> Bool {
        HeaderRules.secret.contains(name)
    }

    private static func withBytes<R>(of buffer: ByteBuffer?, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        guard let buffer else { return body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        return buffer.withUnsafeReadableBytes(body)
    }
}
