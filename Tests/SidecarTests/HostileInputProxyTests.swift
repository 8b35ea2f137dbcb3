import Foundation
import NIOCore
import TestSupport
import Wire
import XCTest

@testable import Sidecar

/// Hostile input against the real sidecar: raw sockets and curl in front, the mock or a scripted
/// upstream behind, the wire read by a raw collector.
final class HostileInputProxyTests: XCTestCase {
    private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    private func responseDones(_ harness: ProxyHarness) -> [WireResponseDone] {
        harness.collector.responseDones
    }

    // MARK: Class 2: Connection may not remove framing headers

    func testARequestNamingAFramingHeaderInConnectionIs400AndReachesNoUpstream() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // The body is a second request: forwarded without its Content-Length, it would be smuggled.
        let smuggled = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
        for name in ["content-length", "Content-Length", "host", "authorization", "x-api-key", "transfer-encoding"] {
            var request = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-test\r\n"
            request += "Connection: keep-alive, \(name)\r\nContent-Length: \(smuggled.utf8.count)\r\n\r\n\(smuggled)"
            let (response, closed) = try rawHTTP(port: harness.sidecarPort, Array(request.utf8))
            XCTAssertTrue(response.hasPrefix("HTTP/1.1 400"), "\(name): \(response)")
            XCTAssertTrue(response.contains("Connection names a header"), response)
            XCTAssertTrue(closed)
        }
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertEqual(harness.mockRequests().count, 0, "nothing may reach the upstream")
        // The sidecar carries on.
        XCTAssertEqual(try curlWithStatus([harness.baseURL + "/v1/models"]).status, 200)
    }

    func testAResponseNamingContentLengthInConnectionKeepsItsLength() throws {
        // The upstream keeps its connection open: a client that lost the length would wait forever.
        let upstream = try ScriptedUpstream(
            response: bytes("HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"))
        defer { upstream.stop() }
        let harness = try ProxyHarness(upstream: "http://127.0.0.1:\(upstream.port)")
        defer { harness.stop() }
        let response = try curlWithStatus(["--max-time", "5", harness.baseURL + "/v1/models"])
        XCTAssertEqual(response.exitCode, 0, response.headers)
        XCTAssertEqual(String(decoding: response.body, as: UTF8.self), "hello")
        XCTAssertTrue(response.headers.lowercased().contains("content-length: 5"), response.headers)
        XCTAssertTrue(eventually { self.responseDones(harness).first?.outcome == .completed })
    }

    // MARK: Class 3: a head over the limit in one write

    func testAResponseHeadOverTheLimitIs502EvenInOneWrite() throws {
        let head =
            "HTTP/1.1 200 OK\r\nx-big: " + String(repeating: "a", count: 300 << 10) + "\r\nContent-Length: 2\r\n\r\nok"
        let upstream = try ScriptedUpstream(response: bytes(head))
        defer { upstream.stop() }
        let harness = try ProxyHarness(upstream: "http://127.0.0.1:\(upstream.port)")
        defer { harness.stop() }
        let response = try curlWithStatus(["--max-time", "10", harness.baseURL + "/v1/models"])
        XCTAssertEqual(response.status, 502, response.headers)
        XCTAssertTrue(String(decoding: response.body, as: UTF8.self).contains("over 262144 bytes"))
        XCTAssertTrue(eventually { self.responseDones(harness).first?.outcome == .upstreamError })
    }

    // MARK: Class 4: bytes that are not UTF-8

    func testHeadersThatAreNotUTF8TravelWholeBothWaysAndOnTheWire() throws {
        let latin1 = bytes("Jos") + [0xE9]
        let response =
            bytes("HTTP/1.1 200 Tr") + [0xE8] + bytes("s bien\r\nX-Server: ") + latin1
            + bytes("\r\nContent-Length: 2\r\n\r\nok")
        let upstream = try ScriptedUpstream(response: response)
        defer { upstream.stop() }
        let harness = try ProxyHarness(upstream: "http://127.0.0.1:\(upstream.port)")
        defer { harness.stop() }
        let request =
            bytes("GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-User: ") + latin1
            + bytes("\r\nConnection: close\r\n\r\n")
        let answer = try rawHTTPBytes(port: harness.sidecarPort, request).response
        XCTAssertTrue(
            answer.starts(with: bytes("HTTP/1.1 200 Tr") + [0xE8] + bytes("s bien\r\n")),
            String(decoding: answer, as: UTF8.self))
        XCTAssertNotNil(Data(answer).range(of: Data(bytes("X-Server: ") + latin1 + bytes("\r\n"))))
        // The upstream got the request header's exact bytes.
        XCTAssertNotNil(
            upstream.requests.first.flatMap { Data($0).range(of: Data(bytes("X-User: ") + latin1 + bytes("\r\n"))) })
        // Both records decode, with the exact bytes beside a readable value.
        XCTAssertTrue(eventually { self.responseDones(harness).count == 1 })
        let done = try XCTUnwrap(responseDones(harness).first)
        XCTAssertEqual(done.status, 200)
        XCTAssertEqual(done.outcome, .completed)
        let server = try XCTUnwrap(done.headers.first { $0.name.lowercased() == "x-server" })
        XCTAssertEqual(server.value, "Jos\u{FFFD}")
        XCTAssertEqual(server.rawValue, Data(latin1))
        let wireRequest = try XCTUnwrap(
            harness.collector.envelopes.compactMap { if case .request(let r) = $0.record { r } else { nil } }.first)
        let user = try XCTUnwrap(wireRequest.headers.first { $0.name.lowercased() == "x-user" })
        XCTAssertEqual(user.rawValue, Data(latin1))
        // A request target with a raw byte in it is still refused: paths travel as ASCII.
        let (refused, _) = try rawHTTP(
            port: harness.sidecarPort, bytes("GET /v1/mod") + [0xE9] + bytes("ls HTTP/1.1\r\nHost: x\r\n\r\n"))
        XCTAssertTrue(refused.hasPrefix("HTTP/1.1 400"), refused)
    }

    func testCredentialsThatDifferOnlyInBytesThatAreNotUTF8AreDifferentTenants() throws {
        func tenant(_ value: [UInt8]) throws -> String {
            let head = try ClientRequestParser.parseHead(
                ByteBuffer(
                    bytes: bytes("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer ") + value + bytes("\r\n\r\n")))
            let credential = try XCTUnwrap(Credentials.presented(in: head.headers)?.value)
            return TenantHasher(key: "k").tenant(for: credential)
        }
        XCTAssertNotEqual(try tenant(bytes("sk-") + [0xE9]), try tenant(bytes("sk-") + [0xE8]))
        XCTAssertEqual(try tenant(bytes("sk-abc")), TenantHasher(key: "k").tenant(for: "sk-abc"))
    }

    // MARK: Clients that stall

    func testAStalledRequestBodyGets408BlamingTheClient() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--client-timeout", "1"])
        defer { harness.stop() }
        let started = ContinuousClock.now
        let (response, closed) = try rawHTTP(
            port: harness.sidecarPort,
            bytes("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\""))
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 408"), response)
        XCTAssertTrue(response.contains("the client stopped sending"), response)
        XCTAssertTrue(closed)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(5))
        XCTAssertTrue(
            eventually { self.responseDones(harness).first.map { $0.status == 408 && $0.outcome == .rejected } == true }
        )
    }

    func testAClientThatStopsReadingItsStreamIsClosedAndCounted() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--client-timeout", "1", "--heartbeat-interval", "0.5"])
        defer { harness.stop() }
        let fd = try connectTCP(port: harness.sidecarPort)
        defer { close(fd) }
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        let request = bytes(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-mock-events: 256\r\nx-mock-event-bytes: 65536\r\nx-mock-event-delay-ms: 0\r\nContent-Length: 15\r\n\r\n{\"stream\":true}"
        )
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        // Never read: the sidecar's buffers fill, then it gives the client --client-timeout.
        XCTAssertTrue(
            eventually(timeout: .seconds(15)) { self.responseDones(harness).first?.outcome == .clientAborted },
            harness.sidecar.stderr)
        XCTAssertTrue(responseDones(harness).first?.error.contains("stopped reading") == true)
        XCTAssertTrue(
            eventually {
                harness.collector.envelopes.contains {
                    if case .heartbeat(let beat) = $0.record { beat.stalledClients == 1 } else { false }
                }
            })
        XCTAssertEqual(try curlWithStatus([harness.baseURL + "/v1/models"]).status, 200, "others are served")
    }

    func testConnectionsPastTheLimitGet503AndTheRestAreServed() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--max-connections", "3", "--heartbeat-interval", "0.5"])
        defer { harness.stop() }
        let held = try (0..<3).map { _ in try connectTCP(port: harness.sidecarPort) }
        Thread.sleep(forTimeInterval: 0.3)
        let (refused, closed) = try rawHTTP(
            port: harness.sidecarPort, bytes("GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"))
        XCTAssertTrue(refused.hasPrefix("HTTP/1.1 503"), refused)
        XCTAssertTrue(refused.contains("too_many_connections"), refused)
        XCTAssertTrue(closed)
        for fd in held { close(fd) }
        XCTAssertTrue(eventually { (try? curlWithStatus([harness.baseURL + "/v1/models"]).status) == 200 })
        XCTAssertTrue(
            eventually {
                harness.collector.envelopes.contains {
                    if case .heartbeat(let beat) = $0.record { beat.refusedConnections >= 1 } else { false }
                }
            })
        XCTAssertTrue(harness.sidecar.stderr.contains("--max-connections are open"))
    }

    // MARK: Configuration

    func testSettingsThatCantBeReadStopTheStartByName() throws {
        for (arguments, environment, expected) in [
            ([String](), ["LLMTAP_UPSTREAM_TIMEOUT": "inf"], "LLMTAP_UPSTREAM_TIMEOUT"),
            ([], ["LLMTAP_CLIENT_TIMEOUT": "1e400"], "LLMTAP_CLIENT_TIMEOUT"),
            ([], ["LLMTAP_MAX_CAPTURE_BYTES": "lots"], "LLMTAP_MAX_CAPTURE_BYTES"),
            ([], ["LLMTAP_MODE": "sideways"], "LLMTAP_MODE"),
            ([], ["LLMTAP_REQUIRE_VIRTUAL_KEY": "maybe"], "LLMTAP_REQUIRE_VIRTUAL_KEY"),
            (["--upstream-timeout", "1e300"], [:], "--upstream-timeout"),
            (["--drain-timeout", "nan"], [:], "--drain-timeout"),
            (["--heartbeat-interval", "-1"], [:], "--heartbeat-interval"),
            (["--max-capture-bytes", "9223372036854775807"], [:], "--max-capture-bytes"),
            (["--max-connections", "0"], [:], "--max-connections"),
        ] as [([String], [String: String], String)] {
            let process = try RunningProcess(
                product: "llmtap-sidecar", arguments: arguments + ["--listen", "127.0.0.1:0"], environment: environment)
            XCTAssertEqual(process.waitForExit(), 64, "\(arguments) \(environment): \(process.stderr)")
            XCTAssertTrue(process.stderr.contains(expected), "\(expected): \(process.stderr)")
        }
    }
}
