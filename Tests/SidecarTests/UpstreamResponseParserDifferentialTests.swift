import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest

@testable import Sidecar

/// The sidecar reads upstream responses with its own parser, for speed. This holds it against
/// llhttp (through NIO's `HTTPResponseDecoder`) over thousands of mangled responses, fed a byte at
/// a time: wherever ours reads a response whole, llhttp must read the same status and the same
/// body, so the two never disagree on where a response ends (a proxy that did would hand the next
/// client the rest of this one's body). Ours may refuse more.
final class UpstreamResponseParserDifferentialTests: XCTestCase {
    struct Message: Equatable, CustomStringConvertible {
        var status: UInt
        var body: [UInt8]
        var description: String { "\(status) body \(body.count) bytes" }
    }

    static let bases: [String] = [
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"id\":\"a\"}\n",
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ndata: 1\r\n8;x=y\r\ndata: 22\r\n0\r\n\r\n",
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\nX-Trailer: t\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the connection closes",
    ]
    static let insertions: [String] = [
        " ", "\t", "\r", "\n", "\r\n", ":", ",", "0", "9", "a", "\0", "-", ";", "Content-Length: 5\r\n",
        "Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked, gzip\r\n", " folded\r\n", "X-A: b\rc\r\n", "Content-Length : 5\r\n",
        "Content-Length: 1, 1\r\n", "Content-Length: +3\r\n", "\r\n\r\n", "0\r\n\r\n", "ffffffffffffffffff\r\n",
        "HTTP/1.0", "HTTP/1.1 100 Continue\r\n\r\n", "Connection: close\r\n",
    ]

    /// What ours reads whole before it stops: an error, or the input's end (which ends a body that
    /// runs until close).
    static func ours(_ input: [UInt8]) -> (messages: [Message], failed: Bool) {
        var parser = UpstreamResponseParser(maxHeadBytes: 64 << 10)
        parser.expectResponse(toHEAD: false)
        var messages: [Message] = []
        var current: Message?
        var bytesSinceEnd = 0
        func take(_ event: UpstreamResponseParser.Event) {
            switch event {
            case .head(let head): current = Message(status: head.status.code, body: [])
            case .body(let buffer): current?.body += Array(buffer.readableBytesView)
            case .end:
                if let done = current { messages.append(done) }
                current = nil
                bytesSinceEnd = 0
                // Each response answers a request sent before it: the next one is expected now.
                parser.expectResponse(toHEAD: false)
            }
        }
        do {
            for byte in input {
                parser.receive(ByteBuffer(bytes: [byte]))
                bytesSinceEnd += 1
                while let event = try parser.next() { take(event) }
            }
            // The connection closes: that ends a body that runs until close, and cuts short
            // anything else begun (nothing begun after the last response is nothing lost).
            if bytesSinceEnd > 0, let event = try parser.endOfInput() { take(event) }
            return (messages, false)
        } catch {
            return (messages, true)
        }
    }

    /// What llhttp reads whole, and the error it stopped on, if any. Each response is preceded by
    /// its request (a POST), as NIO's decoder expects on a client connection.
    static func llhttp(_ input: [UInt8]) -> (messages: [Message], error: (any Error)?) {
        let channel = EmbeddedChannel()
        try! channel.pipeline.syncOperations.addHTTPClientHandlers()
        var thrown: (any Error)?
        var messages: [Message] = []
        var current: Message?
        func sendRequest() {
            let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions")
            try? channel.writeOutbound(HTTPClientRequestPart.head(head))
            try? channel.writeOutbound(HTTPClientRequestPart.end(nil))
            while (try? channel.readOutbound(as: ByteBuffer.self)) != nil {}
        }
        func drain() {
            while let part = try? channel.readInbound(as: HTTPClientResponsePart.self) {
                switch part {
                case .head(let head) where head.status.code < 200:
                    // Informational: not the response, which still comes.
                    continue
                case .head(let head): current = Message(status: head.status.code, body: [])
                case .body(let buffer): current?.body += Array(buffer.readableBytesView)
                case .end:
                    if let done = current { messages.append(done) }
                    current = nil
                    sendRequest()
                }
            }
        }
        for _ in 0..<8 { sendRequest() }
        for byte in input where thrown == nil {
            do {
                try channel.writeInbound(ByteBuffer(bytes: [byte]))
            } catch {
                thrown = error
            }
            drain()
        }
        if thrown == nil {
            // The connection closes: a body that runs until close ends here.
            channel.pipeline.fireChannelInactive()
            drain()
        }
        _ = try? channel.finish(acceptAlreadyClosed: true)
        return (messages, thrown)
    }

    func testTheBasesReadTheSameWayUnmangled() {
        for base in Self.bases {
            let input = Array(base.utf8)
            let mine = Self.ours(input)
            let reference = Self.llhttp(input)
            XCTAssertFalse(mine.failed, base.debugDescription)
            XCTAssertNil(reference.error, base.debugDescription)
            XCTAssertEqual(mine.messages, reference.messages, base.debugDescription)
        }
    }

    func testOursNeverReadsAResponseLlhttpReadsDifferently() {
        var generator = SplitMix64(seed: 0x5E5B)
        var compared = 0
        var bothAccepted = 0
        var skipped: [String: Int] = [:]
        for base in Self.bases {
            let original = Array(base.utf8)
            for _ in 0..<400 {
                let input = generator.mangled(original, inserting: Self.insertions)
                let mine = Self.ours(input)
                let reference = Self.llhttp(input)
                compared += 1
                if let leniency = Self.knownDifference(input) {
                    skipped[leniency, default: 0] += 1
                    continue
                }
                // Every response ours read whole must be, in order, one llhttp read whole too.
                XCTAssertLessThanOrEqual(
                    mine.messages.count, reference.messages.count,
                    """
                    ours read \(mine.messages) where llhttp read \(reference.messages) and stopped on \(reference.error.map { "\($0)" } ?? "nothing"):
                    \(String(decoding: input, as: UTF8.self).debugDescription)
                    """)
                XCTAssertEqual(
                    mine.messages, Array(reference.messages.prefix(mine.messages.count)),
                    String(decoding: input, as: UTF8.self).debugDescription)
                if !mine.failed && reference.error == nil { bothAccepted += 1 }
            }
        }
        XCTAssertGreaterThan(
            bothAccepted, compared / 10, "only \(bothAccepted) of \(compared) inputs were accepted by both (\(skipped))"
        )
    }

    /// Where the two part by design, so the input says nothing: nil when it must read the same.
    /// - Ours takes a bare LF as a line's end in a response (RFC 9112, section 2.2 lets a recipient),
    ///   llhttp refuses it. The client never sees the upstream's framing: the sidecar writes its own.
    /// - llhttp keeps a tab around a Transfer-Encoding value ("chunked\t" is not chunked to it); a
    ///   field value's surrounding whitespace is not part of it (RFC 9110, section 5.5), so ours
    ///   de-chunks.
    static func knownDifference(_ input: [UInt8]) -> String? {
        for (index, byte) in input.enumerated() where byte == 0x0A && (index == 0 || input[index - 1] != 0x0D) {
            return "bare LF"
        }
        let text = String(decoding: input, as: UTF8.self).lowercased()
        // Trailer fields after the last chunk: ours drops them unread to the empty line, llhttp
        // checks their syntax; the section ends at the same empty line either way.
        var rest = text[...]
        while let last = rest.range(of: "\r\n0\r\n") {
            if !text[last.upperBound...].hasPrefix("\r\n") { return "trailer fields" }
            rest = text[last.upperBound...]
        }
        for line in text.components(separatedBy: "\r\n") {
            if line.hasPrefix("transfer-encoding:") {
                let value = line.dropFirst("transfer-encoding:".count)
                let elements = value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                if elements.last == "chunked", value != " chunked", value != "chunked" {
                    return "a Transfer-Encoding list ending in chunked that llhttp reads otherwise"
                }
            }
            // A chunk-size line with an extension (ours reads a response's loosely: the line ends at
            // CRLF either way, so the framing is the same).
            if let semicolon = line.firstIndex(of: ";"), line[..<semicolon].allSatisfy(\.isHexDigit),
                !line[..<semicolon].isEmpty
            {
                return "a chunk extension"
            }
        }
        return nil
    }
}
