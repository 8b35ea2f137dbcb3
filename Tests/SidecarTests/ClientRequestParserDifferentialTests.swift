import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest

@testable import Sidecar

/// The sidecar reads requests with its own parser, for speed. This holds it against llhttp (through
/// NIO's `HTTPRequestDecoder`) over thousands of mangled requests: wherever ours accepts a
/// request, llhttp must see the same request with the same body, so the two can never disagree on
/// where a request ends (the root of request smuggling). Ours may refuse more.
final class ClientRequestParserDifferentialTests: XCTestCase {
    private typealias Message = RequestDifferential.Message
    private func ours(_ input: [UInt8]) -> (messages: [Message], failed: Bool) { RequestDifferential.ours(input) }
    private func llhttp(_ input: [UInt8]) -> (messages: [Message], error: (any Error)?) {
        RequestDifferential.llhttp(input)
    }

    static let bases: [String] = [
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"model\":\"gpt-4\"}",
        "POST /v1/messages HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: api\r\nConnection: keep-alive\r\n\r\nGET /v1/models?x=1 HTTP/1.1\r\nHost: api\r\n\r\n",
        "POST /v1/x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nz",
    ]
    static let insertions: [String] = [
        " ", "\t", "\r", "\n", "\r\n", ":", ",", "0", "9", "a", "\0", "-", ";",
        "Content-Length: 5\r\n", "Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: gzip, chunked\r\n", "Host: other\r\n", " folded\r\n", "X-A: b\rc\r\n",
        "Content-Length : 5\r\n",
        "Content-Length: 1, 1\r\n", "\r\n\r\n", "0\r\n\r\n", "ffffffffffffffffff\r\n",
    ]

    func testOursNeverAcceptsARequestLlhttpReadsDifferently() {
        var generator = SplitMix64(seed: 0x11A7)
        var compared = 0
        var bothAccepted = 0
        for base in Self.bases {
            let original = Array(base.utf8)
            for _ in 0..<600 {
                let input = generator.mangled(original, inserting: Self.insertions)
                let mine = ours(input)
                let reference = llhttp(input)
                compared += 1
                // Every request ours read whole must be, in order, one llhttp read whole too.
                guard mine.messages.count <= reference.messages.count else {
                    // llhttp refusing what ours read is acceptable only for reasons that don't touch
                    // framing: it knows a fixed list of methods, and checks URLs by its own rules.
                    if let error = reference.error as? HTTPParserError, [.invalidMethod, .invalidURL].contains(error) {
                        continue
                    }
                    XCTFail(
                        """
                        ours read \(mine.messages) where llhttp read \(reference.messages) and stopped on \(reference.error.map { "\($0)" } ?? "nothing"):
                        \(String(decoding: input, as: UTF8.self).debugDescription)
                        """)
                    continue
                }
                XCTAssertEqual(
                    mine.messages, Array(reference.messages.prefix(mine.messages.count)),
                    String(decoding: input, as: UTF8.self).debugDescription)
                if !mine.failed && reference.error == nil { bothAccepted += 1 }
            }
        }
        // The mangling must leave plenty both accept, or the comparison says little.
        XCTAssertGreaterThan(
            bothAccepted, compared / 10, "only \(bothAccepted) of \(compared) inputs were accepted by both")
    }
}

/// A small seeded generator, so a failure can be replayed.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// `original` with one edit, or two a quarter of the time: a byte removed, a byte replaced by
    /// any ASCII one, or one of `insertions` put in, each at a place drawn from this generator.
    mutating func mangled(_ original: [UInt8], inserting insertions: [String]) -> [UInt8] {
        var input = original
        for _ in 0..<Int(next() % 4 == 0 ? 2 : 1) {
            let at = Int(next() % UInt64(input.count + 1))
            switch next() % 4 {
            case 0 where !input.isEmpty && at < input.count: input.remove(at: at)
            case 1 where at < input.count: input[at] = UInt8(truncatingIfNeeded: next() % 128)
            default: input.insert(contentsOf: Array(insertions[Int(next() % UInt64(insertions.count))].utf8), at: at)
            }
        }
        return input
    }
}

/// The sidecar's request parser and llhttp (NIO's `HTTPRequestDecoder`) over the same bytes: what
/// each read whole. The differential test and the fuzz target hold the first to the second.
enum RequestDifferential {
    struct Message: Equatable, CustomStringConvertible {
        var method: String
        var uri: String
        var body: [UInt8]
        var description: String { "\(method) \(uri) body \(body.count) bytes" }
    }

    /// The messages ours reads whole before it stops (an error, or the input ends).
    static func ours(_ input: [UInt8]) -> (messages: [Message], failed: Bool) {
        var parser = ClientRequestParser(maxHeadBytes: 64 << 10)
        parser.receive(ByteBuffer(bytes: input))
        var messages: [Message] = []
        var current: Message?
        do {
            while let event = try parser.next() {
                switch event {
                case .head(let head): current = Message(method: head.method.rawValue, uri: head.uri, body: [])
                case .body(let buffer): current?.body += Array(buffer.readableBytesView)
                case .end:
                    if let done = current { messages.append(done) }
                    current = nil
                }
            }
            return (messages, false)
        } catch {
            return (messages, true)
        }
    }

    /// The messages llhttp reads whole, and the error it stopped on, if any.
    static func llhttp(_ input: [UInt8]) -> (messages: [Message], error: (any Error)?) {
        let channel = EmbeddedChannel(
            handler: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
        var thrown: (any Error)?
        var messages: [Message] = []
        var current: Message?
        // A byte at a time: NIO hands on what one read completed only if the whole read parsed, so
        // this is how to see exactly which messages llhttp finished before it stopped.
        for byte in input {
            do {
                try channel.writeInbound(ByteBuffer(bytes: [byte]))
            } catch {
                thrown = error
            }
            while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
                switch part {
                case .head(let head): current = Message(method: head.method.rawValue, uri: head.uri, body: [])
                case .body(let buffer): current?.body += Array(buffer.readableBytesView)
                case .end:
                    if let done = current { messages.append(done) }
                    current = nil
                }
            }
            if thrown != nil { break }
        }
        _ = try? channel.finish()
        return (messages, thrown)
    }

    /// Whether ours read something llhttp reads differently: the root of request smuggling. llhttp
    /// refusing what ours read is acceptable only for reasons that don't touch framing: it knows a
    /// fixed list of methods, and checks URLs by its own rules.
    static func disagreement(_ input: [UInt8]) -> String? {
        let mine = ours(input)
        let reference = llhttp(input)
        guard mine.messages.count <= reference.messages.count else {
            if let error = reference.error as? HTTPParserError, [.invalidMethod, .invalidURL].contains(error) {
                return nil
            }
            return
                "ours read \(mine.messages) where llhttp read \(reference.messages) and stopped on \(reference.error.map { "\($0)" } ?? "nothing")"
        }
        guard mine.messages == Array(reference.messages.prefix(mine.messages.count)) else {
            return "ours read \(mine.messages) where llhttp read \(reference.messages)"
        }
        return nil
    }
}
