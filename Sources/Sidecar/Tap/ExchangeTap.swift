import Foundation
import NIOCore
import NIOHTTP1
import Wire

/// Where records go: the `AnalysisPublisher`, or a test's collector.
protocol RecordPublishing: Sendable {
    @discardableResult
    func publish(_ record: WireRecord) -> Bool
}

extension AnalysisPublisher: RecordPublishing {}

/// What every exchange's tap needs to know.
struct TapSettings: Sendable {
    let app: String
    let ingress: IngressMode
    /// Body bytes captured per direction and exchange. Forwarding is never capped.
    let maxCaptureBytes: Int
    /// Past the cap, this much of the response's end is still sent when it ends: streamed
    /// responses report their usage in their last events.
    let tailBytes: Int
}

/// Copies one exchange onto the wire as it happens: one `Request`, the response body as
/// `StreamChunk`s up to the capture cap (and its tail), then one `ResponseDone`.
/// Lives on the client connection's event loop; publishing never waits.
final class ExchangeTap {
    let exchangeID: String
    private let publisher: any RecordPublishing
    private let settings: TapSettings
    private var request: WireRequest
    private var requestCapture = Data()
    private(set) var requestBytes: UInt64 = 0
    private var requestPublished = false

    private var responseBytes: UInt64 = 0
    private var responseCaptured = 0
    private var chunkIndex: UInt64 = 0
    private var responseTruncated = false
    /// The response's last bytes once past the cap, with the offset of the first of them.
    private var tail: [UInt8] = []
    private var tailOffset: UInt64 = 0
    private var status: UInt32 = 0
    private var responseHeaders: [WireHeader] = []
    private var firstByteNanos: Int64 = 0
    private var finished = false

    init(
        exchangeID: String, head: HTTPRequestHead, upstream: UpstreamTarget, path: String,
        clientAddress: String, tenant: String, settings: TapSettings, publisher: any RecordPublishing
    ) {
        self.exchangeID = exchangeID
        self.publisher = publisher
        self.settings = settings
        var request = WireRequest()
        request.exchangeID = exchangeID
        request.ingress = settings.ingress
        request.method = head.method.rawValue
        request.scheme = upstream.scheme
        request.host = upstream.authority
        request.path = HeaderRules.redactedPath(path)
        request.clientAddress = clientAddress
        request.app = settings.app
        request.tenant = tenant
        request.startUnixNanos = WallClock.nowUnixNanos()
        request.headers = HeaderRules.wireHeaders(head.headers)
        request.httpVersion = "HTTP/\(head.version.major).\(head.version.minor)"
        self.request = request
    }

    func requestBody(_ buffer: ByteBuffer) {
        requestBytes += UInt64(buffer.readableBytes)
        let room = settings.maxCaptureBytes - requestCapture.count
        if room > 0 {
            buffer.withUnsafeReadableBytes { bytes in
                requestCapture.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes.prefix(room)))
            }
        }
    }

    /// The request body has ended: the `Request` record goes out.
    func requestEnded() {
        publishRequest()
    }

    func responseHead(_ head: HTTPResponseHead) {
        // An upstream may answer before the body has ended; the request record still comes first.
        publishRequest()
        status = UInt32(head.status.code)
        responseHeaders = HeaderRules.wireHeaders(head.headers)
        firstByteNanos = WallClock.nowUnixNanos()
    }

    func responseBody(_ buffer: ByteBuffer) {
        let offset = responseBytes
        responseBytes += UInt64(buffer.readableBytes)
        let room = settings.maxCaptureBytes - responseCaptured
        if room >= buffer.readableBytes {
            publishChunk(Self.data(buffer, upTo: buffer.readableBytes), offset: offset)
            responseCaptured += buffer.readableBytes
            return
        }
        if room > 0 {
            publishChunk(Self.data(buffer, upTo: room), offset: offset)
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

    /// The exchange is over, one way or another: the tail (if any) and `ResponseDone` go out.
    func finish(outcome: Outcome, status overrideStatus: UInt32? = nil, error: String = "") {
        guard !finished else { return }
        finished = true
        publishRequest()
        if !tail.isEmpty {
            let keep = min(tail.count, settings.tailBytes)
            publishChunk(Data(tail.suffix(keep)), offset: tailOffset + UInt64(tail.count - keep))
            tail = []
        }
        var done = WireResponseDone()
        done.exchangeID = exchangeID
        done.status = overrideStatus ?? status
        done.headers = responseHeaders
        done.upstreamFirstByteUnixNanos = firstByteNanos
        done.endUnixNanos = WallClock.nowUnixNanos()
        done.requestBytes = requestBytes
        done.responseBytes = responseBytes
        done.outcome = outcome
        done.error = error
        done.responseChunks = chunkIndex
        done.responseTruncated = responseTruncated
        publisher.publish(.responseDone(done))
    }

    /// The first `count` readable bytes, copied in one go (the generic sequence path copies byte by byte).
    private static func data(_ buffer: ByteBuffer, upTo count: Int) -> Data {
        buffer.withUnsafeReadableBytes { Data(UnsafeRawBufferPointer(rebasing: $0.prefix(count))) }
    }

    private func publishRequest() {
        guard !requestPublished else { return }
        requestPublished = true
        request.body = requestCapture
        request.bodySize = requestBytes
        request.bodyTruncated = requestBytes > UInt64(requestCapture.count)
        requestCapture = Data()
        publisher.publish(.request(request))
    }

    private func publishChunk(_ data: Data, offset: UInt64) {
        var chunk = WireStreamChunk()
        chunk.exchangeID = exchangeID
        chunk.direction = .response
        chunk.index = chunkIndex
        chunk.data = data
        chunk.unixNanos = WallClock.nowUnixNanos()
        chunk.offset = offset
        chunkIndex += 1
        publisher.publish(.streamChunk(chunk))
    }
}
