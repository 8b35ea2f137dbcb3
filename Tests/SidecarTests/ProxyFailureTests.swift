import Foundation
import TestSupport
import Wire
import XCTest

/// What the sidecar does when the client, the request or the upstream goes wrong.
final class ProxyFailureTests: XCTestCase {
    func testEachMalformedRequestGetsItsStatusReachesNoUpstreamAndSparesOtherConnections() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // A keep-alive connection that stays open across the bad ones.
        let keepAlive = try KeepAliveConnection(port: harness.sidecarPort)
        XCTAssertEqual(try keepAlive.get("/v1/models").status, 200)

        let cases: [(String, [UInt8], Int)] = [
            ("a bad request line", Array("GARBAGE\r\n\r\n".utf8), 400),
            (
                "an invalid header",
                Array(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nBad Header: x\r\nContent-Length: 2\r\n\r\n{}".utf8
                ), 400
            ),
            (
                "duplicate Content-Length",
                Array(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
                        .utf8), 400
            ),
            (
                "Content-Length with Transfer-Encoding",
                Array(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
                        .utf8), 400
            ),
            (
                "a bad chunk size",
                Array(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n"
                        .utf8), 400
            ),
            (
                "oversize headers",
                Array(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nX-Big: \(String(repeating: "a", count: 70_000))\r\nContent-Length: 2\r\n\r\n{}"
                        .utf8), 431
            ),
        ]
        for (name, request, status) in cases {
            let (response, closed) = try rawHTTP(port: harness.sidecarPort, request)
            XCTAssertTrue(response.hasPrefix("HTTP/1.1 \(status) "), "\(name): \(response.prefix(80))")
            XCTAssertTrue(response.contains(#""error":{"message":"#), "\(name): not in the provider's error shape")
            XCTAssertTrue(closed, "\(name): the connection must be closed")
            XCTAssertEqual(
                try keepAlive.get("/v1/models").status, 200, "after \(name), the other connection still works")
        }
        // Only the keep-alive connection's requests reached the upstream.
        usleep(200_000)
        XCTAssertEqual(
            harness.mockRequests().map { $0["path"] as? String }, Array(repeating: "/v1/models", count: cases.count + 1)
        )
        // And the sidecar counted them, in its heartbeat.
        let malformed = harness.collector.envelopes.compactMap {
            if case .heartbeat(let beat) = $0.record { beat.malformedRequests } else { nil }
        }
        XCTAssertEqual(harness.stop(), 0)
        let final = harness.collector.envelopes.compactMap {
            if case .heartbeat(let beat) = $0.record { beat.malformedRequests } else { nil }
        }.last
        XCTAssertEqual(final, UInt64(cases.count), "\(malformed)")
    }

    func testAnUnreachableUpstreamIs502AndASilentOneIs504() throws {
        let closedPort = try freeTCPPort()
        let unreachable = try ProxyHarness(upstream: "http://127.0.0.1:\(closedPort)")
        let response = try curl([unreachable.baseURL + "/v1/chat/completions", "-d", "{}"])
        XCTAssertTrue(response.headers.hasPrefix("HTTP/1.1 502"), response.headers)
        let error = try JSONSerialization.jsonObject(with: response.body) as? [String: [String: Any]]
        XCTAssertEqual(error?["error"]?["type"] as? String, "llmtap_upstream_error")
        XCTAssertEqual(error?["error"]?["code"] as? String, "upstream_unreachable")
        XCTAssertTrue(eventually { self.done(in: unreachable)?.outcome == .upstreamError })
        XCTAssertEqual(done(in: unreachable)?.status, 502)
        unreachable.stop()

        let silent = try ProxyHarness(sidecarArguments: ["--upstream-timeout", "1"])
        let timedOut = try curl([silent.baseURL + "/v1/chat/completions", "-H", "x-mock-fail: hang", "-d", "{}"])
        XCTAssertTrue(timedOut.headers.hasPrefix("HTTP/1.1 504"), timedOut.headers)
        let timeoutError = try JSONSerialization.jsonObject(with: timedOut.body) as? [String: [String: Any]]
        XCTAssertEqual(timeoutError?["error"]?["code"] as? String, "upstream_timeout")
        XCTAssertTrue(eventually { self.done(in: silent)?.outcome == .timeout })
        // Silent mid-stream: the stream is cut, never completed.
        let stalled = try curl([
            silent.baseURL + "/v1/chat/completions", "-H", "x-mock-fail: hang-after:2", "-d", #"{"stream":true}"#,
        ])
        XCTAssertNotEqual(stalled.exitCode, 0, "curl must see an incomplete response")
        XCTAssertFalse(String(decoding: stalled.body, as: UTF8.self).contains("[DONE]"))
        XCTAssertTrue(eventually { self.outcomes(in: silent).filter { $0 == .timeout }.count == 2 })
        silent.stop()
    }

    func testAClientThatLeavesMidStreamClosesTheUpstreamAndIsRecorded() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        let script = """
            import http.client, json, sys
            connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
            connection.request("POST", "/v1/chat/completions", body=json.dumps({"model": "gpt-4o-mini", "stream": True}),
                               headers={"x-mock-events": "20", "x-mock-event-delay-ms": "100"})
            response = connection.getresponse()
            while not response.readline().startswith(b"data: "):
                pass
            connection.sock.close()
            print("left")
            """
        let run = try runPython(script, arguments: ["\(harness.sidecarPort)"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(eventually { self.done(in: harness)?.outcome == .clientAborted })
        // The upstream connection was closed, not kept for reuse, well before the stream's 2 s.
        XCTAssertTrue(
            eventually(timeout: .seconds(1)) {
                harness.mockLog().contains { $0["event"] as? String == "connection_closed" }
            })
        let sent = harness.mockLog().filter { $0["event"] as? String == "sent" }.count
        XCTAssertLessThan(sent, 20)
    }

    func testAnUpstreamThatResetsMidStreamClosesTheClientNeverAFakeSuccess() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "5"])
        defer { harness.stop() }
        let response = try curl([
            harness.baseURL + "/v1/chat/completions", "-H", "x-mock-fail: reset-after:3", "-d", #"{"stream":true}"#,
        ])
        XCTAssertEqual(response.exitCode, 18, "curl: transfer closed with outstanding read data remaining")
        XCTAssertTrue(response.headers.hasPrefix("HTTP/1.1 200"))
        XCTAssertTrue(eventually { self.done(in: harness)?.outcome == .upstreamError })
        XCTAssertEqual(try curl([harness.baseURL + "/v1/models"]).exitCode, 0, "the sidecar carries on")
    }

    func testHeadersAreRewrittenForTheUpstreamAndCredentialsPassUntouched() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        let response = try curl([
            harness.baseURL + "/v1/echo?x=1", "-H", "authorization: Bearer sk-test-pass-through",
            "-H", "Connection: keep-alive, X-Drop-Me", "-H", "X-Drop-Me: 1", "-H", "Keep-Alive: timeout=5",
            "-H", "TE: trailers", "-H", "Upgrade: h2c", "-H", "Proxy-Authorization: Basic abc", "-H",
            "X-Forwarded-For: 10.9.8.7",
            "-d", "hello",
        ])
        let echo = try XCTUnwrap(try JSONSerialization.jsonObject(with: response.body) as? [String: Any])
        let headers = Dictionary(
            (echo["headers"] as? [[String]] ?? []).map { ($0[0].lowercased(), $0[1]) },
            uniquingKeysWith: { "\($0), \($1)" })
        XCTAssertEqual(echo["uri"] as? String, "/v1/echo?x=1")
        XCTAssertEqual(headers["host"], "127.0.0.1:\(harness.mockPort)")
        XCTAssertEqual(headers["authorization"], "Bearer sk-test-pass-through")
        XCTAssertEqual(headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1")
        XCTAssertEqual(headers["x-forwarded-proto"], "http")
        XCTAssertEqual(headers["x-forwarded-host"], "127.0.0.1:\(harness.sidecarPort)")
        for hopByHop in ["connection", "x-drop-me", "keep-alive", "te", "upgrade", "proxy-authorization"] {
            XCTAssertNil(headers[hopByHop], "\(hopByHop) must not be forwarded")
        }
        XCTAssertEqual(echo["body"] as? String, "hello")
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "5"])
        defer { harness.stop() }
        // Three requests in one write: a stream, a plain one, and one that asks to close.
        let body = #"{"model":"gpt-4o-mini","stream":true}"#
        let pipelined =
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-mock-events: 2\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
            + "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
            + "GET /v1/echo?third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        let (response, closed) = try rawHTTP(port: harness.sidecarPort, Array(pipelined.utf8))
        XCTAssertTrue(closed, "the third request asked to close")
        let statuses = response.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
        XCTAssertEqual(statuses, ["200", "200", "200"], response)
        let stream = try XCTUnwrap(response.range(of: "data: [DONE]"))
        let models = try XCTUnwrap(response.range(of: "text-embedding-3-small"))
        let echo = try XCTUnwrap(response.range(of: "echo?third"))
        XCTAssertTrue(
            stream.lowerBound < models.lowerBound && models.lowerBound < echo.lowerBound, "answers in request order")
        XCTAssertEqual(
            harness.mockRequests().compactMap { $0["path"] as? String },
            ["/v1/chat/completions", "/v1/models", "/v1/echo?third"])
    }

    // MARK: helpers

    private func outcomes(in harness: ProxyHarness) -> [Outcome] {
        harness.collector.envelopes.compactMap {
            if case .responseDone(let done) = $0.record { done.outcome } else { nil }
        }
    }

    private func done(in harness: ProxyHarness) -> WireResponseDone? {
        harness.collector.responseDones.last
    }
}

/// One keep-alive HTTP/1.1 connection, for requests in turn on the same socket.
final class KeepAliveConnection {
    private let fd: Int32

    init(port: Int) throws {
        fd = try connectTCP(port: port)
    }

    deinit { close(fd) }

    /// A GET with a Content-Length response (the mock answers JSON that way).
    func get(_ path: String) throws -> (status: Int, body: String) {
        let request = Array("GET \(path) HTTP/1.1\r\nHost: test\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let text = String(decoding: received, as: UTF8.self)
            if let end = text.range(of: "\r\n\r\n") {
                let head = text[..<end.lowerBound]
                let length =
                    head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                let body = text[end.upperBound...]
                if body.utf8.count >= length {
                    let status = Int(head.split(separator: " ")[1]) ?? 0
                    return (status, String(body))
                }
            }
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { throw TestFailure("the keep-alive connection closed or timed out: \(text)") }
            received += buffer[0..<count]
        }
    }
}

final class ClientTimeoutTests: XCTestCase {
    /// Reads until the peer closes (or the receive timeout passes); returns what came.
    private func readAll(_ fd: Int32) -> String {
        var received = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            received += buffer[0..<count]
        }
        return String(decoding: received, as: UTF8.self)
    }

    func testASlowHeadGets408AndAnIdleConnectionIsClosed() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--client-timeout", "1"])
        defer { harness.stop() }
        // Slow loris: a head that never ends.
        let slow = try connectTCP(port: harness.sidecarPort, receiveTimeout: .seconds(10))
        defer { close(slow) }
        _ = "GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Slow: ".withCString { send(slow, $0, strlen($0), 0) }
        let started = ContinuousClock.now
        let answer = readAll(slow)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 408"), answer)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(8))
        // A keep-alive connection left idle after its request is closed without a word.
        let idle = try connectTCP(port: harness.sidecarPort, receiveTimeout: .seconds(10))
        defer { close(idle) }
        _ = "GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n".withCString { send(idle, $0, strlen($0), 0) }
        let response = readAll(idle)
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 200"), response)
        XCTAssertTrue(harness.sidecar.stderr.contains("took too long to send a request head"))
        XCTAssertTrue(
            harness.mockRequests().map { $0["path"] as? String } == ["/v1/models"],
            "the slow request never reached the upstream")
    }
}
