import NIOCore
import NIOHTTP1
import TestSupport
import Wire
import XCTest

@testable import Sidecar

final class HeaderRulesTests: XCTestCase {
    func testUpstreamURLs() throws {
        let openai = try UpstreamTarget(url: "https://api.openai.com")
        XCTAssertEqual([openai.scheme, openai.host, "\(openai.port)", openai.basePath, openai.authority], ["https", "api.openai.com", "443", "", "api.openai.com"])
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

    func testTheUpstreamRequestDropsHopByHopHeadersAndSaysWhoAsked() {
        var headers = HTTPHeaders([
            ("Host", "localhost:3000"), ("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"), ("Expect", "100-continue"), ("Authorization", "Bearer sk-x"), ("X-Forwarded-For", "10.0.0.1"),
        ])
        headers.add(name: "TE", value: "trailers")
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions?x=1", headers: headers)
        let upstream = HeaderRules.upstreamRequest(from: head, target: try! UpstreamTarget(url: "https://api.openai.com/base"), clientIP: "127.0.0.1")
        XCTAssertEqual(upstream.uri, "/base/v1/chat/completions?x=1")
        XCTAssertEqual(upstream.headers["host"], ["api.openai.com"])
        XCTAssertEqual(upstream.headers["x-forwarded-for"], ["10.0.0.1, 127.0.0.1"])
        XCTAssertEqual(upstream.headers["x-forwarded-host"], ["localhost:3000"])
        XCTAssertEqual(upstream.headers["authorization"], ["Bearer sk-x"], "credentials pass untouched")
        XCTAssertEqual(upstream.headers["transfer-encoding"], ["chunked"], "the body keeps its framing")
        for gone in ["connection", "x-private", "keep-alive", "te", "expect"] {
            XCTAssertFalse(upstream.headers.contains(name: gone), gone)
        }
        XCTAssertEqual(HeaderRules.originForm("http://api.openai.com/v1/models?x"), "/v1/models?x")
        XCTAssertEqual(HeaderRules.originForm("http://api.openai.com"), "/")
    }

    func testTheClientResponseGetsTheExchangeIDAndLosesHopByHopHeaders() {
        let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: HTTPHeaders([("Transfer-Encoding", "chunked"), ("Connection", "keep-alive"), ("content-type", "text/event-stream")]))
        let client = HeaderRules.clientResponse(from: head, exchangeID: "abc-1", close: true, version: .http1_0)
        XCTAssertEqual(client.headers["x-llmtap-exchange-id"], ["abc-1"])
        XCTAssertEqual(client.headers["connection"], ["close"])
        XCTAssertFalse(client.headers.contains(name: "transfer-encoding"))
        XCTAssertEqual(client.version, HTTPVersion.http1_0)
    }

    func testCredentialsAreFoundAndNeverReachTheWire() throws {
        XCTAssertEqual(HeaderRules.credential(in: ["Authorization": "Bearer  sk-abc "], uri: "/"), "sk-abc")
        XCTAssertEqual(HeaderRules.credential(in: ["x-api-key": "sk-ant-1"], uri: "/"), "sk-ant-1")
        XCTAssertEqual(HeaderRules.credential(in: ["api-key": "azure-1"], uri: "/"), "azure-1")
        XCTAssertEqual(HeaderRules.credential(in: [:], uri: "/v1beta/models/g:generateContent?key=AIzaFAKE&alt=sse"), "AIzaFAKE")
        XCTAssertNil(HeaderRules.credential(in: [:], uri: "/v1/models"))
        XCTAssertEqual(HeaderRules.redactedPath("/v1beta/x?alt=sse&key=AIzaFAKE"), "/v1beta/x?alt=sse&key=[redacted]")
        let headers: HTTPHeaders = ["Authorization": "Bearer sk", "Cookie": "s=1", "x-goog-api-key": "g", "content-type": "a"]
        guard case .responseDone(let wire) = try EncodedRecord.responseDone(ResponseDoneFields(), headers: headers, isSecret: HeaderRules.secret.contains).decoded() else {
            return XCTFail("not a ResponseDone")
        }
        XCTAssertEqual(wire.headers.map(\.name), ["Authorization", "Cookie", "x-goog-api-key", "content-type"])
        XCTAssertEqual(wire.headers.map(\.value), ["[redacted]", "[redacted]", "[redacted]", "a"])
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
            exchangeID: "ex-1", head: HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/x?key=AIzaSECRET", headers: ["authorization": "Bearer s"]),
            upstream: try! UpstreamTarget(url: "https://api.openai.com"), path: "/v1/x?key=AIzaSECRET", clientAddress: "1.2.3.4:5",
            tenant: "t", settings: TapSettings(app: "a", ingress: .reverse, maxCaptureBytes: cap, tailBytes: tail), publisher: collector
        )
    }

    func testTheCapCutsTheCaptureButKeepsTheTailAndEveryCount() {
        let collector = Collector()
        let tap = tap(cap: 10, tail: 4, into: collector)
        tap.requestBody(ByteBuffer(string: "0123456789abcdef"))
        tap.requestEnded()
        tap.responseHead(HTTPResponseHead(version: .http1_1, status: .ok))
        for piece in ["aaaaaa", "bbbbbb", "cccccc", "dddddd"] { tap.responseBody(ByteBuffer(string: piece)) }
        tap.finish(outcome: .completed)

        guard case .request(let request) = collector.records.first, case .responseDone(let done) = collector.records.last else {
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
        tap.responseHead(HTTPResponseHead(version: .http1_1, status: .payloadTooLarge))
        tap.requestEnded()
        tap.finish(outcome: .completed)
        tap.finish(outcome: .clientAborted)
        XCTAssertEqual(collector.records.map(\.kindName), ["request", "response_done"])
    }
}
