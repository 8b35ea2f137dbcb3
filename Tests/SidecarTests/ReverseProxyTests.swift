import Foundation
import TestSupport
import Wire
import XCTest

/// llmtap-sidecar between real clients (curl, raw sockets, the openai Python package) and the mock
/// upstream, with a raw collector socket behind it. Real processes, real sockets.
final class ReverseProxyTests: XCTestCase {
    private let apiKey = "sk-test-FAKE-0123456789abcdefghijklmnop"

    private func chat(_ body: String) -> [String] { curlChatArguments(body, key: apiKey) }

    func testBodiesThroughTheSidecarAreByteIdenticalToDirectCalls() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "2"])
        defer { harness.stop() }
        // Bodies above 1 KiB make curl send `Expect: 100-continue`, which the sidecar answers itself.
        let padding = String(repeating: "x", count: 2_000)
        let cases: [(String, [String])] = [
            ("/v1/chat/completions", chat(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)),
            (
                "/v1/chat/completions",
                chat(
                    #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"\#(padding)"}]}"#
                )
            ),
            ("/v1/chat/completions", chat(#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#)),
            (
                "/v1/messages",
                [
                    "-H", "x-api-key: \(apiKey)", "--data-binary",
                    #"{"model":"claude-sonnet-4-20250514","stream":true,"max_tokens":64}"#,
                ]
            ),
            (
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
                ["-H", "x-goog-api-key: \(apiKey)", "--data-binary", #"{"contents":[]}"#]
            ),
            ("/v1/models", []),
        ]
        for (path, arguments) in cases {
            let direct = try curl([harness.mockURL + path] + arguments)
            let proxied = try curl([harness.baseURL + path] + arguments)
            XCTAssertEqual(direct.exitCode, 0, path)
            XCTAssertEqual(proxied.exitCode, 0, path)
            XCTAssertGreaterThan(proxied.body.count, 0, path)
            XCTAssertEqual(proxied.body, direct.body, "\(path): the body changed on its way through the sidecar")
            XCTAssertTrue(proxied.headers.lowercased().contains("x-llmtap-exchange-id: "), proxied.headers)
        }
    }

    func testEachExchangeIsPublishedInOrderAndTheKeyNeverTravels() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "2"])
        var exchanges: [(id: String, streamed: Bool)] = []
        for stream in [false, true, true] {
            let response = try curl(
                [harness.baseURL + "/v1/chat/completions"] + chat(#"{"model":"gpt-4o-mini","stream":\#(stream)}"#))
            XCTAssertEqual(response.exitCode, 0)
            let id = try XCTUnwrap(headerValue("x-llmtap-exchange-id", in: response.headers))
            exchanges.append((id, stream))
        }
        XCTAssertEqual(Set(exchanges.map(\.id)).count, 3, "exchange ids are unique")
        XCTAssertTrue(
            eventually {
                exchanges.allSatisfy { id, _ in
                    harness.collector.records(exchange: id).last.map {
                        if case .responseDone = $0 { true } else { false }
                    } ?? false
                }
            })
        XCTAssertEqual(harness.stop(), 0)

        for (id, streamed) in exchanges {
            let records = harness.collector.records(exchange: id)
            guard case .request(let request) = records.first, case .responseDone(let done) = records.last else {
                return XCTFail("\(id): not Request ... ResponseDone: \(records.map(\.kindName))")
            }
            let chunks = records.dropFirst().dropLast()
            XCTAssertGreaterThanOrEqual(chunks.count, 1, id)
            XCTAssertTrue(chunks.allSatisfy { if case .streamChunk = $0 { true } else { false } })
            XCTAssertEqual(
                chunks.compactMap { if case .streamChunk(let c) = $0 { c.index } else { nil } },
                Array(0..<UInt64(chunks.count)))
            XCTAssertEqual(request.method, "POST")
            XCTAssertEqual(request.httpVersion, "HTTP/1.1")
            XCTAssertEqual(request.path, "/v1/chat/completions")
            XCTAssertEqual(request.host, "127.0.0.1:\(harness.mockPort)")
            XCTAssertEqual(request.ingress, .reverse)
            XCTAssertEqual(request.app, "test-app")
            XCTAssertEqual(request.tenant.count, 16, "a 16-hex-character tenant")
            XCTAssertTrue(
                request.headers.contains { $0.name.lowercased() == "authorization" && $0.value == "[redacted]" })
            XCTAssertEqual(done.status, 200)
            XCTAssertEqual(done.outcome, .completed)
            XCTAssertEqual(done.responseChunks, UInt64(chunks.count))
            XCTAssertGreaterThan(done.upstreamFirstByteUnixNanos, request.startUnixNanos)
            XCTAssertGreaterThanOrEqual(done.endUnixNanos, done.upstreamFirstByteUnixNanos)
            let captured = chunks.compactMap { if case .streamChunk(let c) = $0 { c.data } else { nil } }.reduce(
                Data(), +)
            XCTAssertEqual(UInt64(captured.count), done.responseBytes)
            XCTAssertEqual(String(decoding: captured, as: UTF8.self).contains("data: [DONE]"), streamed)
        }
        // Every frame, as bytes: the key is nowhere, in any form.
        let frames = harness.collector.rawFrames
        XCTAssertGreaterThan(frames.count, 9)
        for needle in [apiKey, "Bearer \(apiKey)", "FAKE-0123456789"] {
            XCTAssertFalse(frames.contains { containsBytes($0, Array(needle.utf8)) }, "\(needle) reached the wire")
        }
        // The tenant is the same for the same key, and not the key.
        let tenants = Set(
            harness.collector.envelopes.compactMap { if case .request(let r) = $0.record { r.tenant } else { nil } })
        XCTAssertEqual(tenants.count, 1)
    }

    func testEveryStreamedEventReachesTheClientBeforeTheUpstreamSendsTheNext() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // A real streaming client records when each event arrives; the mock records when it sent each.
        let script = """
            import http.client, json, sys, time
            connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
            connection.request("POST", "/v1/chat/completions", body=json.dumps({"model": "gpt-4o-mini", "stream": True}),
                               headers={"x-mock-events": "3", "x-mock-event-delay-ms": "300", "authorization": "Bearer sk-test",
                                        "content-type": "application/json"})
            response = connection.getresponse()
            received = []
            while True:
                line = response.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    received.append(time.time_ns())
            print(json.dumps(received))
            """
        let run = try runPython(script, arguments: ["\(harness.sidecarPort)"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let received = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [Int64])
        let sent = harness.mockLog().filter { $0["event"] as? String == "sent" }.compactMap {
            ($0["time_unix_nanos"] as? NSNumber)?.int64Value
        }
        // role chunk, 3 content chunks, finish chunk, [DONE]: 6 events, 300 ms apart
        XCTAssertEqual(sent.count, 6)
        XCTAssertEqual(received.count, 6)
        for index in 0..<(sent.count - 1) {
            XCTAssertLessThan(
                received[index], sent[index + 1], "event \(index) was held until the upstream sent event \(index + 1)")
        }
    }
}
