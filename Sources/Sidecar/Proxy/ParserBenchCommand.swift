import ArgumentParser
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// `llmtap-sidecar bench-parsers` (hidden; `benchmarks/parsers.sh` runs it on a release build): the
/// hand-written upstream response parser against NIO's `HTTPResponseDecoder` (llhttp), on the same
/// responses, in one run. The figure behind the parser's existence, in its file's first comment.
struct ParserBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-parsers", abstract: "Times the upstream response parser against llhttp.",
        shouldDisplay: false)

    @Option(help: "Responses parsed per round.")
    var responses = 100_000

    @Option(help: "Rounds, alternating the two parsers; the median is reported.")
    var rounds = 5

    func run() throws {
        let body = String(repeating: "x", count: 480)
        let response = ByteBuffer(
            string:
                "HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\nconnection: keep-alive\r\nopenai-organization: org-x\r\nopenai-processing-ms: 312\r\nx-request-id: req_0123456789abcdef\r\nx-ratelimit-remaining-requests: 9999\r\nx-ratelimit-remaining-tokens: 199000\r\n\r\n\(body)"
        )
        var ours: [Double] = []
        var llhttp: [Double] = []
        for _ in 0..<rounds {
            ours.append(try Self.time(responses) { try Self.ours(response, count: responses) })
            llhttp.append(try Self.llhttp(response, count: responses))
        }
        let median = { (values: [Double]) in values.sorted()[values.count / 2] }
        print("upstream response parser, \(responses) responses of \(response.readableBytes) bytes, \(rounds) rounds:")
        print("  ours (UpstreamResponseParser):      \(String(format: "%.0f", median(ours))) ns per response")
        print("  llhttp (NIO HTTPResponseDecoder):   \(String(format: "%.0f", median(llhttp))) ns per response")
        print("  llhttp / ours: \(String(format: "%.2f", median(llhttp) / median(ours)))x")
    }

    private static func time(_ count: Int, _ body: () throws -> Void) throws -> Double {
        let start = ContinuousClock.now
        try body()
        let elapsed = ContinuousClock.now - start
        let nanos = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
        return nanos / Double(count)
    }

    /// As `UpstreamHandler` does: one read per response, each event taken.
    private static func ours(_ response: ByteBuffer, count: Int) throws {
        var parser = UpstreamResponseParser(maxHeadBytes: 64 << 10)
        var seen = 0
        for _ in 0..<count {
            parser.expectResponse(toHEAD: false)
            parser.receive(response)
            while let event = try parser.next() {
                if case .end = event { seen += 1 }
            }
        }
        precondition(seen == count)
    }

    /// As a NIO client pipeline does: the decoder in a ByteToMessageHandler, parts read out. The
    /// decoder pairs each response with a request written before it: those go out before the clock
    /// starts, so only the decoding is timed.
    private static func llhttp(_ response: ByteBuffer, count: Int) throws -> Double {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(HTTPResponseDecoder()))
        let request = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions")
        var seen = 0
        var nanos = 0.0
        // In batches: a long queue of requests waiting for responses slows the decoder's bookkeeping.
        let batch = 1_000
        for start in stride(from: 0, to: count, by: batch) {
            let size = min(batch, count - start)
            for _ in 0..<size { try channel.writeOutbound(HTTPClientRequestPart.head(request)) }
            while try channel.readOutbound(as: HTTPClientRequestPart.self) != nil {}
            nanos +=
                try time(size) {
                    for _ in 0..<size {
                        try channel.writeInbound(response)
                        while let part = try channel.readInbound(as: HTTPClientResponsePart.self) {
                            if case .end = part { seen += 1 }
                        }
                    }
                } * Double(size)
        }
        precondition(seen == count)
        _ = try channel.finish()
        return nanos / Double(count)
    }
}
