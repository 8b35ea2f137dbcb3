import Foundation
import Wire

/// One record of each kind, with every field set to something telling, for round trips and goldens.
public enum SampleRecords {
    public static let request: WireRecord = {
        var request = WireRequest()
        request.exchangeID = "01JD7K3M2Q8X5V9T4N6B1C0R7W"
        request.ingress = .reverse
        request.method = "POST"
        request.scheme = "https"
        request.host = "api.openai.com"
        request.path = "/v1/chat/completions?trace=1"
        request.clientAddress = "10.1.2.3:53122"
        request.app = "checkout"
        request.tenant = "3f2a9c0d1e7b4a55"
        request.startUnixNanos = 1_763_900_000_123_456_789
        request.headers = [header("content-type", "application/json"), header("authorization", "[redacted]")]
        request.body = Data(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"héllo"}]}"#.utf8)
        request.bodySize = 4096
        request.bodyTruncated = true
        request.httpVersion = "HTTP/1.1"
        return .request(request)
    }()

    public static let streamChunk: WireRecord = {
        var chunk = WireStreamChunk()
        chunk.exchangeID = "01JD7K3M2Q8X5V9T4N6B1C0R7W"
        chunk.direction = .response
        chunk.index = 3
        chunk.data = Data("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n".utf8)
        chunk.unixNanos = 1_763_900_000_223_456_789
        chunk.offset = 150
        return .streamChunk(chunk)
    }()

    public static let responseDone: WireRecord = {
        var done = WireResponseDone()
        done.exchangeID = "01JD7K3M2Q8X5V9T4N6B1C0R7W"
        done.status = 200
        done.headers = [header("content-type", "text/event-stream"), header("x-request-id", "req_123")]
        done.upstreamFirstByteUnixNanos = 1_763_900_000_200_000_000
        done.endUnixNanos = 1_763_900_001_000_000_000
        done.requestBytes = 4096
        done.responseBytes = 18_230
        done.outcome = .clientAborted
        done.error = "client closed the connection after 12 events"
        done.responseChunks = 12
        done.responseTruncated = false
        return .responseDone(done)
    }()

    public static let heartbeat: WireRecord = {
        var beat = WireHeartbeat()
        beat.published = 1_000_000
        beat.dropped = 42
        beat.queueDepth = 7
        beat.queueBytes = 9_000
        beat.inFlight = 3
        beat.openConnections = 5
        beat.uptimeMs = 3_600_000
        beat.version = "0.1.0"
        beat.mode = "reverse"
        beat.app = "checkout"
        beat.intervalMs = 5_000
        return .heartbeat(beat)
    }()

    public static let all: [WireRecord] = [request, streamChunk, responseDone, heartbeat]

    public static func header(_ name: String, _ value: String) -> WireHeader {
        var header = WireHeader()
        header.name = name
        header.value = value
        return header
    }

    /// A whole envelope around `record`.
    public static func envelope(
        _ record: WireRecord, seq: UInt64 = 7, sidecarID: String = "sidecar-a",
        bootID: String = "b00710000000000000000000000000a1"
    ) -> Envelope {
        var envelope = Envelope()
        envelope.sidecarID = sidecarID
        envelope.bootID = bootID
        envelope.seq = seq
        envelope.sentUnixNanos = 1_763_900_000_300_000_000
        envelope.droppedBefore = 2
        envelope.record = record
        return envelope
    }
}
