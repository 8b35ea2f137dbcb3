import Foundation
import Wire

/// Records of one exchange, as a sidecar would publish them, for collector tests.
public enum ExchangeRecords {
    public static func request(
        _ id: String, host: String = "api.openai.com", path: String = "/v1/chat/completions", app: String = "test-app",
        body: String = #"{"model":"gpt-4o-mini","stream":true}"#
    ) -> WireRecord {
        var request = WireRequest()
        request.exchangeID = id
        request.method = "POST"
        request.scheme = "https"
        request.host = host
        request.path = path
        request.app = app
        request.tenant = "04773a73fa4db9f1"
        request.startUnixNanos = WallClock.nowUnixNanos()
        request.body = Data(body.utf8)
        request.bodySize = UInt64(body.utf8.count)
        return .request(request)
    }

    public static func chunk(_ id: String, index: UInt64, offset: UInt64, _ data: Data) -> WireRecord {
        var chunk = WireStreamChunk()
        chunk.exchangeID = id
        chunk.direction = .response
        chunk.index = index
        chunk.offset = offset
        chunk.data = data
        chunk.unixNanos = WallClock.nowUnixNanos()
        return .streamChunk(chunk)
    }

    /// `body` cut into chunks of `size`, in order.
    public static func chunks(_ id: String, _ body: [UInt8], size: Int) -> [WireRecord] {
        stride(from: 0, to: body.count, by: size).enumerated().map { index, start in
            chunk(id, index: UInt64(index), offset: UInt64(start), Data(body[start..<min(start + size, body.count)]))
        }
    }

    public static func done(
        _ id: String, chunks: Int, status: UInt32 = 200, outcome: Outcome = .completed, responseBytes: UInt64 = 0
    ) -> WireRecord {
        var done = WireResponseDone()
        done.exchangeID = id
        done.status = status
        done.outcome = outcome
        done.responseChunks = UInt64(chunks)
        done.responseBytes = responseBytes
        done.endUnixNanos = WallClock.nowUnixNanos()
        return .responseDone(done)
    }
}
