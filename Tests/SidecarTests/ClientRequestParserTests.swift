import NIOCore
import NIOHTTP1
import XCTest

@testable import Sidecar

final class ClientRequestParserTests: XCTestCase {
    private enum Seen: Equatable {
        case head(String, String, chunked: Bool, keepAlive: Bool)
        case body(String)
        case end
    }

    private func parse(_ input: String, cuts: [Int] = [], maxHead: Int = 4096) throws(HTTPFramingError)
        -> [Seen]
    {
        var parser = ClientRequestParser(maxHeadBytes: maxHead)
        var seen: [Seen] = []
        let bytes = Array(input.utf8)
        var start = 0
        for cut in cuts + [bytes.count] where cut >= start {
            parser.receive(ByteBuffer(bytes: bytes[start..<cut]))
            while let event = try parser.next() {
                switch event {
                case .head(let head):
                    seen.append(.head(head.method.rawValue, head.uri, chunked: head.chunked, keepAlive: head.keepAlive))
                case .body(let buffer):
                    if case .body(let before) = seen.last {
                        seen[seen.count - 1] = .body(before + String(buffer: buffer))
                    } else {
                        seen.append(.body(String(buffer: buffer)))
                    }
                case .end: seen.append(.end)
                }
            }
            start = cut
        }
        return seen
    }

    func testPipelinedRequestsOfEveryFramingAtEveryCut() throws {
        let input =
            "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
            + "POST /v1/x?y=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            + "\r\nGET /v1/models HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            + "GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            + "GET /after-close HTTP/1.1\r\nHost: a\r\n\r\n"
        let expected: [Seen] = [
            .head("POST", "/v1/chat/completions", chunked: false, keepAlive: true), .body("{}"), .end,
            .head("POST", "/v1/x?y=1", chunked: true, keepAlive: true), .body("abcde"), .end,
            .head("GET", "/v1/models", chunked: false, keepAlive: true), .end,
            .head("GET", "http://api.openai.com/v1/models", chunked: false, keepAlive: false), .end,
            // Nothing after a request that closes the connection.
        ]
        for cut in 0...input.utf8.count {
            XCTAssertEqual(try parse(input, cuts: [cut]), expected, "cut at \(cut)")
        }
        XCTAssertEqual(try parse(input, cuts: Array(0...input.utf8.count)), expected, "byte by byte")
    }

    func testEveryWayARequestCanLieAboutItsFramingIsRefused() {
        let bad: [(String, String)] = [
            ("a bad request line", "GARBAGE\r\n\r\n"),
            ("a space in the target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("HTTP/2 on an HTTP/1 connection", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            ("a method that is not a token", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ("an invalid header name", "POST / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n"),
            ("whitespace before the colon", "POST / HTTP/1.1\r\nHost: a\r\nX-A : x\r\n\r\n"),
            ("a folded header", "POST / HTTP/1.1\r\nHost: a\r\nX-A: x\r\n  y\r\n\r\n"),
            ("a control character in a value", "POST / HTTP/1.1\r\nHost: a\r\nX-A: x\u{01}y\r\n\r\n"),
            (
                "duplicate Content-Length",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"
            ),
            ("a Content-Length that is not a number", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n{}"),
            (
                "Content-Length with Transfer-Encoding",
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            ("a coding other than chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            (
                "a bad chunk size",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n"
            ),
            (
                "a chunk longer than its size",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n"
            ),
            ("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n"),
            ("a bare LF ending a head line", "GET / HTTP/1.1\nHost: a\r\n\r\n"),
            (
                "a bare LF ending a chunk line",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n"
            ),
            (
                "whitespace before a chunk extension",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2 ;a=b\r\nok\r\n0\r\n\r\n"
            ),
            (
                "a trailer field",
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nContent-Length: 5\r\n\r\n"
            ),
            ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ]
        for (what, input) in bad {
            do {
                let seen = try parse(input)
                XCTFail("\(what) was accepted: \(seen)")
            } catch {
                XCTAssertEqual(error.status, .badRequest, what)
            }
        }
    }

    func testAnOversizeHeadIs431WhetherOrNotItHasEnded() {
        let big = "POST / HTTP/1.1\r\nHost: a\r\nX-Big: " + String(repeating: "a", count: 5000)
        for input in [big, big + "\r\n\r\n"] {
            XCTAssertThrowsError(try parse(input)) { error in
                XCTAssertEqual((error as? HTTPFramingError)?.status, .requestHeaderFieldsTooLarge)
            }
        }
    }
}
