import NIOCore
import NIOHTTP1
import XCTest

@testable import Sidecar

final class UpstreamResponseParserTests: XCTestCase {
    private enum Seen: Equatable {
        case head(UInt, UpstreamResponseHead.Framing, keepAlive: Bool)
        case body(String)
        case end
    }

    /// Feeds `input` cut into pieces at `cuts`, and merges adjacent body events (their boundaries
    /// follow the cuts, which is the point).
    private func parse(
        _ input: String, cuts: [Int] = [], toHEAD: Bool = false, upgrade: Bool = false, close: Bool = false
    ) throws -> [Seen] {
        var parser = UpstreamResponseParser(maxHeadBytes: 4096)
        parser.expectResponse(toHEAD: toHEAD, upgrade: upgrade)
        var seen: [Seen] = []
        let record: (UpstreamResponseParser.Event) -> Void = { event in
            switch event {
            case .head(let head): seen.append(.head(head.status.code, head.framing, keepAlive: head.keepAlive))
            case .body(let buffer):
                if case .body(let before) = seen.last {
                    seen[seen.count - 1] = .body(before + String(buffer: buffer))
                } else {
                    seen.append(.body(String(buffer: buffer)))
                }
            case .end: seen.append(.end)
            }
        }
        let bytes = Array(input.utf8)
        var start = 0
        for cut in cuts + [bytes.count] where cut >= start {
            parser.receive(ByteBuffer(bytes: bytes[start..<cut]))
            while let event = try parser.next() { record(event) }
            start = cut
        }
        if close, let event = try parser.endOfInput() { record(event) }
        return seen
    }

    func testContentLengthChunkedAndUntilCloseBodiesAtEveryCut() throws {
        let cases: [(String, [Seen], Bool)] = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                [.head(200, .contentLength(5), keepAlive: true), .body("hello"), .end], false
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n",
                [.head(200, .chunked, keepAlive: true), .body("helloabcdefghijklmnopqrstuvwxyz"), .end], false
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close",
                [.head(200, .untilClose, keepAlive: false), .body("until close"), .end], true
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                [.head(204, .none, keepAlive: true), .end], false
            ),
            (
                "HTTP/1.1 200 OK\nContent-Length: 2\nConnection: close\n\nok",
                [.head(200, .contentLength(2), keepAlive: false), .body("ok"), .end], false
            ),
        ]
        for (input, expected, close) in cases {
            for cut in 0...input.utf8.count {
                XCTAssertEqual(
                    try parse(input, cuts: [cut], close: close), expected, "cut at \(cut) of \(input.debugDescription)")
            }
            XCTAssertEqual(
                try parse(input, cuts: Array(0...input.utf8.count), close: close), expected,
                "byte by byte: \(input.debugDescription)")
        }
    }

    func testAHeadResponseHasNoBodyWhateverItsLength() throws {
        XCTAssertEqual(
            try parse("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", toHEAD: true),
            [.head(200, .none, keepAlive: true), .end])
    }

    func testTransferEncodingOverridesContentLength() throws {
        let input = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        XCTAssertEqual(try parse(input), [.head(200, .chunked, keepAlive: true), .body("ok"), .end])
    }

    func testWhatCantBeTrustedIsAnError() {
        let bad = [
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2x0 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
            // A chunk's data must end in CRLF: a bare LF there means its size was wrong (llhttp agrees).
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ]
        for input in bad {
            XCTAssertThrowsError(try parse(input), input.debugDescription)
        }
        XCTAssertThrowsError(
            try parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", close: true), "cut short by a close")
        var parser = UpstreamResponseParser(maxHeadBytes: 64)
        parser.expectResponse(toHEAD: false)
        parser.receive(ByteBuffer(string: "HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: 100)))
        XCTAssertThrowsError(try parser.next())
    }

    func testA101AnswersOnlyAnUpgradeAndHandsOnEveryByteAfterIt() throws {
        let input =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\u{81}\u{05}hello"
        for cut in [10, 90, 101, 104] {
            XCTAssertEqual(
                try parse(input, cuts: [cut], upgrade: true, close: true),
                [.head(101, .none, keepAlive: true), .body("\u{81}\u{05}hello"), .end], "cut at \(cut)")
        }
        // Interim answers before it still pass unseen.
        XCTAssertEqual(
            try parse("HTTP/1.1 100 Continue\r\n\r\n" + input, upgrade: true).first, .head(101, .none, keepAlive: true))
        // Refused (401) with a body: an ordinary response, and the connection stays HTTP.
        XCTAssertEqual(
            try parse("HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}", upgrade: true),
            [.head(401, .contentLength(2), keepAlive: true), .body("{}"), .end])
        XCTAssertThrowsError(try parse(input), "a 101 to a request that did not ask for it")
    }
}

final class SidecarCountersTests: XCTestCase {
    func testExchangeIDsAreTheBootPrefixAndTwelveHexDigitsOrMore() {
        let counters = SidecarCounters(bootID: "3f2a9c0d-5b1e-4c3a-9d7e-000000000000")
        XCTAssertEqual(counters.makeExchangeID(), "3f2a9c0d-000000000001")
        for _ in 2..<27 { _ = counters.makeExchangeID() }
        XCTAssertEqual(counters.makeExchangeID(), "3f2a9c0d-00000000001b")
        XCTAssertEqual(SidecarCounters(bootID: "ab").makeExchangeID(), "ab-000000000001")
    }

}
