import NIOCore
import NIOHTTP1
import TestSupport
import Wire
import XCTest

@testable import Sidecar

final class HeaderRulesTests: XCTestCase {
    func testUpstreamURLs() throws {
        let openai = try UpstreamTarget(url: "https://api.openai.com")
        XCTAssertEqual(
            [openai.scheme, openai.host, "\(openai.port)", openai.basePath, openai.authority],
            ["https", "api.openai.com", "443", "", "api.openai.com"])
        XCTAssertEqual(openai.serverName, "api.openai.com")
        let local = try UpstreamTarget(url: "http://127.0.0.1:8081/azure/")
        XCTAssertEqual([local.authority, local.basePath], ["127.0.0.1:8081", "/azure"])
        XCTAssertNil(local.serverName, "no SNI for an IP address")
        XCTAssertEqual(try UpstreamTarget(url: "https://[::1]:8443").authority, "[::1]:8443")
        for bad in ["api.openai.com", "ftp://x", "http://:80", "http://x:99999", "https://x/v1?key=1"] {
            XCTAssertThrowsError(try UpstreamTarget(url: bad), bad)
        }
        XCTAssertEqual(try ListenAddress("0.0.0.0:3000").port, 3000)
        XCTAssertThrowsError(try ListenAddress("3000"))
    }

    func testTheUpstreamRequestDropsHopByHopHeadersAndSaysWhoAsked() throws {
        let head = try requestHead(
            "POST /v1/chat/completions?x=1 HTTP/1.1", "Host: localhost:3000", "Connection: keep-alive, X-Private",
            "X-Private: 1",
            "Keep-Alive: timeout=5", "Transfer-Encoding: chunked", "Expect: 100-continue", "Authorization: Bearer sk-x",
            "X-Forwarded-For: 10.0.0.1", "TE: trailers"
        )
        XCTAssertTrue(head.chunked)
        XCTAssertTrue(head.expectsContinue)
        var bytes = ByteBuffer()
        HeaderRules.writeUpstreamRequestHead(
            head, uri: "/base/v1/chat/completions?x=1", target: try UpstreamTarget(url: "https://api.openai.com/base"),
            clientIP: "127.0.0.1", into: &bytes
        )
        let text = String(buffer: bytes)
        XCTAssertTrue(text.hasSuffix("\r\n\r\n"))
        var lines = text.components(separatedBy: "\r\n").dropLast(2)
        XCTAssertEqual(lines.removeFirst(), "POST /base/v1/chat/completions?x=1 HTTP/1.1")
        let upstream = HTTPHeaders(
            lines.map { line in
                let colon = line.firstIndex(of: ":")!
                return (String(line[..<colon]), String(line[line.index(colon, offsetBy: 2)...]))
            })
        XCTAssertEqual(upstream["host"], ["api.openai.com"])
        XCTAssertEqual(upstream["x-forwarded-for"], ["10.0.0.1, 127.0.0.1"])
        XCTAssertEqual(upstream["x-forwarded-host"], ["localhost:3000"])
        XCTAssertEqual(upstream["x-forwarded-proto"], ["http"])
        XCTAssertEqual(upstream["authorization"], ["Bearer sk-x"], "credentials pass untouched")
        XCTAssertEqual(upstream["transfer-encoding"], ["chunked"], "the body keeps its framing")
        for gone in ["connection", "x-private", "keep-alive", "te", "expect"] {
            XCTAssertFalse(upstream.contains(name: gone), gone)
        }
        XCTAssertEqual(HeaderRules.originForm("http://api.openai.com/v1/models?x"), "/v1/models?x")
        XCTAssertEqual(HeaderRules.originForm("http://api.openai.com"), "/")
    }

    func testTheClientResponseGetsTheExchangeIDAndLosesHopByHopHeaders() throws {
        let raw =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\ncontent-type: text/event-stream\r\n\r\n"
        let head = try UpstreamResponseParser.parseHead(ByteBuffer(string: raw), toHEAD: false)
        XCTAssertEqual(head.framing, .chunked)
        for (version, framing, expected) in [
            (
                HTTPVersion.http1_0, HeaderRules.ClientFraming.untilClose,
                "HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\nx-llmtap-exchange-id: abc-1\r\nconnection: close\r\n\r\n"
            ),
            (
                .http1_1, .chunked,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nx-llmtap-exchange-id: abc-1\r\n\r\n"
            ),
        ] {
            XCTAssertEqual(HeaderRules.clientFraming(for: head.framing, clientVersion: version), framing)
            var bytes = ByteBuffer()
            HeaderRules.writeClientResponseHead(
                head, exchangeID: "abc-1", framing: framing, close: version == .http1_0, version: version, into: &bytes)
            XCTAssertEqual(String(buffer: bytes), expected)
        }
    }

    /// Lines that arrived as `name: value` CRLF are copied in runs; every other line is written
    /// field by field. Either way the bytes are `name: value` CRLF, in order.
    func testHeaderLinesAreCopiedInRunsAndReadTheSameAsFieldByField() throws {
        let raw =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\nConnection: close\r\nX-B: 2\r\n"
            + "X-Tight:3\r\nX-Wide:  4\r\nX-Trailing: 5 \t\r\nX-Bare: 6\nX-Empty: \r\nX-Empty-Tight:\r\n"
            + "Keep-Alive: timeout=5\r\nX-Last: 7\r\nContent-Length: 2\r\n\r\n"
        let head = try UpstreamResponseParser.parseHead(ByteBuffer(string: raw), toHEAD: false)
        var bytes = ByteBuffer()
        HeaderRules.writeClientResponseHead(
            head, exchangeID: "abc-1", framing: .asIs, close: false, version: .http1_1, into: &bytes)
        XCTAssertEqual(
            String(buffer: bytes),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\nX-B: 2\r\nX-Tight: 3\r\nX-Wide: 4\r\n"
                + "X-Trailing: 5\r\nX-Bare: 6\r\nX-Empty: \r\nX-Empty-Tight: \r\nX-Last: 7\r\nContent-Length: 2\r\n"
                + "x-llmtap-exchange-id: abc-1\r\n\r\n")
        var chunked = ByteBuffer()
        HeaderRules.writeClientResponseHead(
            head, exchangeID: "abc-1", framing: .chunked, close: false, version: .http1_1, into: &chunked)
        XCTAssertTrue(
            String(buffer: chunked).hasSuffix(
                "X-Last: 7\r\ntransfer-encoding: chunked\r\nx-llmtap-exchange-id: abc-1\r\n\r\n"),
            "the run ends where a field is left out")
    }

    func testCredentialsAreFoundAndNeverReachTheWire() throws {
        func credential(_ lines: String..., uri: String = "/") throws -> String? {
            Credentials.credential(in: try requestHead(["GET \(uri) HTTP/1.1", "Host: a"] + lines).headers, uri: uri)
        }
        XCTAssertEqual(try credential("Authorization: Bearer  sk-abc "), "sk-abc")
        XCTAssertEqual(try credential("authorization: bearer sk-lower"), "sk-lower")
        XCTAssertEqual(try credential("x-api-key: sk-ant-1"), "sk-ant-1")
        XCTAssertEqual(try credential("api-key: azure-1"), "azure-1")
        XCTAssertEqual(
            try credential("x-goog-api-key: g-1", "Authorization: Bearer sk-first"), "sk-first",
            "Authorization is preferred")
        XCTAssertEqual(try credential(uri: "/v1beta/models/g:generateContent?key=AIzaFAKE&alt=sse"), "AIzaFAKE")
        XCTAssertNil(try credential(uri: "/v1/models"))
        XCTAssertEqual(Credentials.redactedPath("/v1beta/x?alt=sse&key=AIzaFAKE"), "/v1beta/x?alt=sse&key=[redacted]")
        let headers = try requestHead(
            "GET / HTTP/1.1", "Host: a", "Authorization: Bearer sk", "Cookie: s=1", "x-goog-api-key: g",
            "content-type: a"
        ).headers
        guard
            case .responseDone(let wire) = try EncodedRecord.responseDone(
                ResponseDoneFields(), headers: headers, isSecret: { HeaderRules.secret.contains($0) }
            ).decoded()
        else {
            return XCTFail("not a ResponseDone")
        }
        XCTAssertEqual(wire.headers.map(\.name), ["Host", "Authorization", "Cookie", "x-goog-api-key", "content-type"])
        XCTAssertEqual(wire.headers.map(\.value), ["a", "[redacted]", "[redacted]", "[redacted]", "a"])
        let hasher = TenantHasher(key: "k")
        XCTAssertEqual(hasher.tenant(for: "sk-abc").count, 16)
        XCTAssertEqual(hasher.tenant(for: "sk-abc"), hasher.tenant(for: "sk-abc"))
        XCTAssertNotEqual(hasher.tenant(for: "sk-abc"), TenantHasher(key: "other").tenant(for: "sk-abc"))
        // HMAC-SHA256("k", "sk-abc"), first 8 bytes: checked against openssl dgst -sha256 -hmac k.
        XCTAssertEqual(hasher.tenant(for: "sk-abc"), TestHMAC.expected)
    }
}

enum TestHMAC {
    /// printf 'sk-abc' | openssl dgst -sha256 -hmac k | cut -c1-16 (computed when the test was written)
    static let expected = "04773a73fa4db9f1"
}

final class ExchangeTapTests: XCTestCase {
    private final class Collector: RecordPublishing, @unchecked Sendable {
        var records: [WireRecord] = []
        func publish(_ record: EncodedRecord) -> Bool {
            records.append(try! record.decoded())
            return true
        }
    }

    private func tap(cap: Int, tail: Int, into collector: Collector) -> ExchangeTap {
        ExchangeTap(
            exchangeID: "ex-1",
            head: try! requestHead("POST /v1/x?key=AIzaSECRET HTTP/1.1", "Host: a", "authorization: Bearer s"),
            upstream: try! UpstreamTarget(url: "https://api.openai.com"), path: "/v1/x?key=AIzaSECRET",
            clientAddress: "1.2.3.4:5",
            tenant: "t", settings: TapSettings(app: "a", maxCaptureBytes: cap, tailBytes: tail), publisher: collector
        )
    }

    func testTheCapCutsTheCaptureButKeepsTheTailAndEveryCount() {
        let collector = Collector()
        let tap = tap(cap: 10, tail: 4, into: collector)
        tap.requestBody(ByteBuffer(string: "0123456789abcdef"))
        tap.requestEnded()
        tap.responseHead(status: .ok, headers: RawHeaderFields())
        for piece in ["aaaaaa", "bbbbbb", "cccccc", "dddddd"] { tap.responseBody(ByteBuffer(string: piece)) }
        tap.finish(outcome: .completed)

        guard case .request(let request) = collector.records.first,
            case .responseDone(let done) = collector.records.last
        else {
            return XCTFail("\(collector.records.map(\.kindName))")
        }
        XCTAssertEqual(String(decoding: request.body, as: UTF8.self), "0123456789")
        XCTAssertEqual(request.bodySize, 16)
        XCTAssertTrue(request.bodyTruncated)
        XCTAssertEqual(request.path, "/v1/x?key=[redacted]")
        let chunks = collector.records.compactMap { if case .streamChunk(let c) = $0 { c } else { nil } }
        XCTAssertEqual(chunks.map { String(decoding: $0.data, as: UTF8.self) }, ["aaaaaa", "bbbb", "dddd"])
        XCTAssertEqual(chunks.map(\.offset), [0, 6, 20], "the tail sits at its true place, after a visible hole")
        XCTAssertEqual(chunks.map(\.index), [0, 1, 2])
        XCTAssertEqual(done.responseBytes, 24)
        XCTAssertEqual(done.requestBytes, 16)
        XCTAssertEqual(done.responseChunks, 3)
        XCTAssertTrue(done.responseTruncated)
        XCTAssertEqual(done.status, 200)
    }

    func testAResponseBeforeTheRequestEndsStillPublishesTheRequestFirstAndOnlyOnce() {
        let collector = Collector()
        let tap = tap(cap: 100, tail: 4, into: collector)
        tap.requestBody(ByteBuffer(string: "part"))
        tap.responseHead(status: .payloadTooLarge, headers: RawHeaderFields())
        tap.requestEnded()
        tap.finish(outcome: .completed)
        tap.finish(outcome: .clientAborted)
        XCTAssertEqual(collector.records.map(\.kindName), ["request", "response_done"])
    }
}

/// A request head as the proxy reads it, from its lines.
func requestHead(_ lines: String...) throws -> ClientRequestHead {
    try requestHead(lines)
}

func requestHead(_ lines: [String]) throws -> ClientRequestHead {
    try ClientRequestParser.parseHead(ByteBuffer(string: lines.joined(separator: "\r\n") + "\r\n\r\n"))
}
