import Foundation
import TestSupport
import Wire
import XCTest

/// HTTP/2 with prior knowledge (h2c) on the reverse listener, beside HTTP/1.1 on the same port:
/// curl and httpx as the clients, the mock upstream behind, the records on a raw collector socket.
final class HTTP2ClientTests: XCTestCase {
    private let apiKey = "sk-test-FAKE-h2-0123456789abcdefghij"

    private func chat(_ body: String) -> [String] { curlChatArguments(body, key: apiKey) }

    func testCurlWithPriorKnowledgeGetsWhatHTTP1Gets() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "2"])
        defer { harness.stop() }
        let padding = String(repeating: "x", count: 3_000)
        let cases: [(String, [String])] = [
            ("/v1/chat/completions", chat(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)),
            (
                "/v1/chat/completions",
                chat(
                    #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"\#(padding)"}]}"#
                )
            ),
            (
                "/v1/messages",
                [
                    "-H", "x-api-key: \(apiKey)", "--data-binary",
                    #"{"model":"claude-sonnet-4-20250514","stream":true,"max_tokens":64}"#,
                ]
            ),
            ("/v1/models", []),
        ]
        for (path, arguments) in cases {
            let direct = try curl([harness.mockURL + path] + arguments)
            let h2 = try curl(["--http2-prior-knowledge", harness.baseURL + path] + arguments)
            XCTAssertEqual(h2.exitCode, 0, path)
            XCTAssertTrue(h2.headers.hasPrefix("HTTP/2 200"), "\(path): \(h2.headers)")
            XCTAssertGreaterThan(h2.body.count, 0, path)
            XCTAssertEqual(h2.body, direct.body, "\(path): the body changed on its way through the sidecar over h2")
            XCTAssertNotNil(headerValue("x-llmtap-exchange-id", in: h2.headers), h2.headers)
            for field in ["connection:", "transfer-encoding:", "keep-alive:"] {
                XCTAssertFalse(h2.headers.lowercased().contains(field), "\(path): HTTP/2 has no \(field) \(h2.headers)")
            }
        }
        // HTTP/1.1 on the same port, as before.
        let http1 = try curl([harness.baseURL + "/v1/models"])
        XCTAssertTrue(http1.headers.hasPrefix("HTTP/1.1 200"), http1.headers)
    }

    func testTheHTTPSListenerOffersH2AndHTTP1ByALPN() throws {
        let mock = try MockProvider()
        let folder = try makeFolder()
        let (sidecar, httpsPort, _, cert) = try startHTTPSGateway(to: mock.port, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            mock.process.signal(SIGTERM)
        }
        XCTAssertTrue(eventually { sidecar.stderr.contains("https listener ready") }, sidecar.stderr)
        let tls = ["--cacert", cert, "--resolve", "localhost:\(httpsPort):127.0.0.1"]
        let url = "https://localhost:\(httpsPort)/v1/chat/completions"
        for stream in [false, true] {
            let body = #"{"model":"gpt-4o-mini","stream":\#(stream)}"#
            let direct = try curl(["http://127.0.0.1:\(mock.port)/v1/chat/completions", "--data-binary", body])
            let h2 = try curl(tls + ["--http2", url, "--data-binary", body])
            XCTAssertTrue(h2.headers.hasPrefix("HTTP/2 200"), h2.headers)
            XCTAssertEqual(h2.body, direct.body, "stream \(stream): the body changed over h2 and TLS")
            let http1 = try curl(tls + ["--http1.1", url, "--data-binary", body])
            XCTAssertTrue(http1.headers.hasPrefix("HTTP/1.1 200"), http1.headers)
            XCTAssertEqual(http1.body, direct.body)
        }
        let handshake = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/openssl"),
            arguments: [
                "s_client", "-connect", "127.0.0.1:\(httpsPort)", "-servername", "localhost", "-alpn", "h2,http/1.1",
                "-CAfile", cert,
            ], stdinText: "")
        XCTAssertEqual(handshake.waitForExit(), 0, handshake.stderr)
        XCTAssertTrue(handshake.stdout.contains("ALPN protocol: h2"), handshake.stdout)
    }

    func testTheOpenAIPackageOverH2WithPriorKnowledge() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "2"])
        defer { harness.stop() }
        let script = openAIChatScript(
            apiKey: "sk-openai-python-h2c",
            httpClient: """
                import httpx
                http = httpx.Client(http1=False, http2=True,
                                    event_hooks={"response": [lambda r: versions.append(r.http_version)]})
                """)
        let run = try runPython(script, arguments: [harness.baseURL])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("plain: Hello"), run.stdout)
        XCTAssertTrue(run.stdout.contains("stream: Hello"), run.stdout)
        XCTAssertTrue(run.stdout.contains("versions: HTTP/2,HTTP/2"), run.stdout)
        XCTAssertTrue(eventually { harness.collector.responseDones.count == 2 })
        XCTAssertEqual(harness.collector.responseDones.map(\.outcome), [.completed, .completed])
    }

    func testAHundredConcurrentStreamsOnOneConnectionAreAHundredExchanges() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "2"])
        // httpx over one HTTP/2 connection (prior knowledge on http://), 100 requests at once,
        // half of them streamed; then the same requests straight to the mock.
        let script = """
            import asyncio, json, sys
            import httpx

            base, mock, key = sys.argv[1], sys.argv[2], sys.argv[3]

            def body(i):
                return {"model": "gpt-4o-mini", "stream": i % 2 == 1,
                        "messages": [{"role": "user", "content": "request %d" % i}]}

            async def run(url, http2):
                limits = httpx.Limits(max_connections=1)
                async with httpx.AsyncClient(http1=not http2, http2=http2, limits=limits, timeout=30) as client:
                    async def one(i):
                        r = await client.post(url + "/v1/chat/completions", json=body(i),
                                              headers={"authorization": "Bearer " + key})
                        return {"status": r.status_code, "version": r.http_version, "body": r.text,
                                "exchange": r.headers.get("x-llmtap-exchange-id")}
                    return await asyncio.gather(*[one(i) for i in range(100)])

            proxied = asyncio.run(run(base, True))
            direct = asyncio.run(run(mock, False))
            print(json.dumps({"proxied": proxied, "direct": direct}))
            """
        let result = try runPython(
            script, arguments: [harness.baseURL, harness.mockURL, apiKey], timeout: .seconds(90))
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: [[String: Any]]])
        let proxied = try XCTUnwrap(json["proxied"])
        let direct = try XCTUnwrap(json["direct"])
        XCTAssertEqual(proxied.count, 100)
        for (index, (through, straight)) in zip(proxied, direct).enumerated() {
            XCTAssertEqual(through["status"] as? Int, 200, "request \(index)")
            XCTAssertEqual(through["version"] as? String, "HTTP/2", "request \(index)")
            XCTAssertEqual(
                through["body"] as? String, straight["body"] as? String, "request \(index): the body changed")
        }
        let ids = proxied.compactMap { $0["exchange"] as? String }
        XCTAssertEqual(Set(ids).count, 100, "one exchange per stream")
        XCTAssertTrue(
            eventually(timeout: .seconds(20)) {
                ids.allSatisfy { id in
                    if case .responseDone = harness.collector.records(exchange: id).last { true } else { false }
                }
            })
        XCTAssertEqual(harness.stop(), 0)
        for id in ids {
            let records = harness.collector.records(exchange: id)
            guard case .request(let request) = records.first, case .responseDone(let done) = records.last else {
                return XCTFail("\(id): not Request ... ResponseDone: \(records.map(\.kindName))")
            }
            XCTAssertEqual(request.method, "POST", id)
            XCTAssertEqual(request.httpVersion, "HTTP/2", id)
            XCTAssertEqual(request.path, "/v1/chat/completions", id)
            XCTAssertEqual(done.status, 200, id)
            XCTAssertEqual(done.outcome, .completed, id)
            XCTAssertTrue(
                request.headers.contains { $0.name.lowercased() == "authorization" && $0.value == "[redacted]" }, id)
        }
        let frames = harness.collector.rawFrames
        XCTAssertFalse(frames.contains { containsBytes($0, Array(apiKey.utf8)) }, "the key reached the wire")
    }

    func testGarbageAfterThePrefaceGetsGoAwayAndOnlyThatConnectionCloses() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // A SETTINGS frame whose length is not a multiple of 6: FRAME_SIZE_ERROR, a connection error.
        let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
        let badSettings: [UInt8] = [0, 0, 5, 0x4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
        // Bytes that are no frame at all after a good SETTINGS: a DATA frame on stream 0.
        let dataOnRoot: [UInt8] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0] + [0, 0, 3, 0x0, 0, 0, 0, 0, 0, 1, 2, 3]
        for (name, garbage, code) in [("bad SETTINGS", badSettings, UInt32(6)), ("DATA on stream 0", dataOnRoot, 1)] {
            let (reply, closed) = try rawHTTPBytes(port: harness.sidecarPort, preface + garbage)
            XCTAssertTrue(closed, "\(name): the connection stays open")
            let goAway = try XCTUnwrap(Self.frames(reply).first { $0.type == 0x7 }, "\(name): no GOAWAY in \(reply)")
            XCTAssertEqual(goAway.payload.count, 8, name)
            let error = goAway.payload[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            XCTAssertEqual(error, code, "\(name): GOAWAY's error code")
        }
        // The sidecar goes on serving both protocols.
        let h2 = try curl(["--http2-prior-knowledge", harness.baseURL + "/v1/models"])
        XCTAssertTrue(h2.headers.hasPrefix("HTTP/2 200"), h2.headers)
        let http1 = try curl([harness.baseURL + "/v1/models"])
        XCTAssertTrue(http1.headers.hasPrefix("HTTP/1.1 200"), http1.headers)
        XCTAssertEqual(harness.stop(), 0)
        XCTAssertTrue(harness.sidecar.stderr.contains("HTTP/2 connection error"), harness.sidecar.stderr)
    }

    /// A raw HTTP/2 client (the `h2` package over a socket), for what httpx never does: resetting
    /// streams, watching for GOAWAY. `prelude` is Python run with `conn`, `sock`, `send()`,
    /// `events()` and `request(stream_id, headers)` defined; it prints what the test reads.
    private func h2Client(
        port: Int, _ prelude: String, arguments: [String] = [], checksItsOwnHeaders: Bool = true,
        timeout: Duration = .seconds(60)
    ) throws -> [String: Any] {
        let checks = checksItsOwnHeaders ? "True" : "False"
        let script = """
            import json, socket, sys, time
            import h2.config, h2.connection, h2.events, h2.exceptions

            sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
            conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
                client_side=True, validate_outbound_headers=\(checks), normalize_outbound_headers=\(checks)))
            conn.initiate_connection()
            out = {}

            def send():
                data = conn.data_to_send()
                if data:
                    sock.sendall(data)

            def events():
                data = sock.recv(65536)
                if not data:
                    return None
                try:
                    return conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    return []

            def request(stream_id, headers, body=None):
                base = [(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1"),
                        (":path", "/v1/chat/completions"), ("content-type", "application/json")]
                conn.send_headers(stream_id, base + headers, end_stream=body is None)
                if body is not None:
                    conn.send_data(stream_id, body, end_stream=True)
                send()

            send()
            \(prelude)
            print(json.dumps(out))
            """
        let run = try runPython(script, arguments: ["\(port)"] + arguments, timeout: timeout)
        guard run.status == 0 else { throw TestFailure("the h2 client failed: \(run.stderr)") }
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
    }

    func testAResetStreamIsAClientAbortAndClosesItsUpstreamRequest() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // Two streams at once, 20 events 100 ms apart each: the first is reset after its first event,
        // the second is read to its end.
        let out = try h2Client(
            port: harness.sidecarPort,
            """
            body = json.dumps({"model": "gpt-4o-mini", "stream": True}).encode()
            slow = [("x-mock-events", "20"), ("x-mock-event-delay-ms", "100")]
            request(1, slow, body)
            request(3, [("x-mock-events", "5"), ("x-mock-event-delay-ms", "50")], body)
            reset, ended, received = False, False, {1: b"", 3: b""}
            while not ended:
                batch = events()
                if batch is None:
                    break
                for event in batch:
                    if isinstance(event, h2.events.DataReceived):
                        received[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.stream_id == 1 and not reset and b"data: " in received[1]:
                            conn.reset_stream(1)
                            reset = True
                    if isinstance(event, h2.events.StreamEnded) and event.stream_id == 3:
                        ended = True
                send()
            out["reset"] = reset
            out["other"] = received[3].decode()
            """)
        XCTAssertEqual(out["reset"] as? Bool, true)
        XCTAssertTrue((out["other"] as? String)?.contains("data: [DONE]") == true, "\(out)")
        XCTAssertTrue(
            eventually { harness.collector.responseDones.count == 2 })
        let outcomes = harness.collector.responseDones.map(\.outcome)
        XCTAssertTrue(outcomes.contains(.clientAborted), "\(outcomes)")
        XCTAssertTrue(outcomes.contains(.completed), "\(outcomes)")
        // The reset stream's upstream connection was closed, well before its 2 s of events.
        XCTAssertTrue(
            eventually(timeout: .seconds(1)) {
                harness.mockLog().contains { $0["event"] as? String == "connection_closed" }
            })
    }

    func testAStreamWhoseClientDoesNotReadStallsNoOtherStream() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        let idleRSS = try Self.rssKiB(harness.sidecar.process.processIdentifier)
        // Stream 1 asks for 256 events of 64 KiB and its window is never opened again (the
        // connection's is, for its bytes, so only the stream is held); stream 3, sent after it on
        // the same connection, must still get its whole answer.
        let out = try h2Client(
            port: harness.sidecarPort,
            """
            body = json.dumps({"model": "gpt-4o-mini", "stream": True}).encode()
            request(1, [("x-mock-events", "256"), ("x-mock-event-bytes", "65536"), ("x-mock-event-delay-ms", "0")], body)
            time.sleep(0.5)
            request(3, [("x-mock-events", "5"), ("x-mock-event-delay-ms", "10")], body)
            received, ended = {1: 0, 3: b""}, False
            deadline = time.time() + 20
            while not ended and time.time() < deadline:
                batch = events()
                if batch is None:
                    break
                for event in batch:
                    if isinstance(event, h2.events.DataReceived):
                        if event.stream_id == 1:
                            received[1] += len(event.data)
                            conn.increment_flow_control_window(event.flow_controlled_length)
                        else:
                            received[3] += event.data
                            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if isinstance(event, h2.events.StreamEnded) and event.stream_id == 3:
                        ended = True
                send()
            time.sleep(1)
            rss = [line for line in open("/proc/%s/status" % sys.argv[2]) if line.startswith("VmRSS")]
            out["stalled"], out["other"], out["ended"] = received[1], received[3].decode(), ended
            out["rss_kb"] = int(rss[0].split()[1])
            """, arguments: ["\(harness.sidecar.process.processIdentifier)"])
        XCTAssertEqual(out["ended"] as? Bool, true, "stream 3 never ended: \(out["stalled"] ?? "")")
        XCTAssertTrue((out["other"] as? String)?.contains("data: [DONE]") == true)
        let stalled = try XCTUnwrap(out["stalled"] as? Int)
        XCTAssertLessThanOrEqual(stalled, 65_535, "stream 1 got past its window")
        // Held back: stream 1's 16 MiB wait upstream, not in the sidecar's memory (the mock writes
        // them all into its own buffers, so its log can't tell).
        let rss = try XCTUnwrap(out["rss_kb"] as? Int)
        XCTAssertLessThan(
            rss - idleRSS, 8 << 10, "the sidecar grew by \(rss - idleRSS) KiB: it buffered the stalled stream")
    }

    func testARapidResetFloodGetsGoAwayAndTheSidecarServesOthers() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // Open and reset 400 streams as fast as the socket takes them (CVE-2023-44487).
        let out = try h2Client(
            port: harness.sidecarPort,
            """
            goaway = None
            try:
                for i in range(400):
                    stream_id = 1 + 2 * i
                    conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                                                  (":path", "/v1/models")])
                    conn.reset_stream(stream_id)
                    send()
            except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
                pass
            deadline = time.time() + 10
            while goaway is None and time.time() < deadline:
                try:
                    batch = events()
                except (ConnectionResetError, socket.timeout):
                    break
                if batch is None:
                    break
                for event in batch:
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = int(event.error_code)
            out["goaway"] = goaway
            """)
        XCTAssertEqual(out["goaway"] as? Int, 0xB, "ENHANCE_YOUR_CALM: \(out)")
        let h2 = try curl(["--http2-prior-knowledge", harness.baseURL + "/v1/models"])
        XCTAssertTrue(h2.headers.hasPrefix("HTTP/2 200"), h2.headers)
        XCTAssertEqual(harness.stop(), 0)
        XCTAssertTrue(harness.sidecar.stderr.contains("HTTP/2 connection error"), harness.sidecar.stderr)
    }

    func testHeadersOverTheLimitAreRefusedAndNeverForwarded() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--max-header-bytes", "4096"])
        defer { harness.stop() }
        // 8,000 bytes, sent before the client has read the sidecar's SETTINGS: NIOHTTP2 applies its
        // SETTINGS_MAX_HEADER_LIST_SIZE (4096) once they are acknowledged, so the exchange handler's
        // own bound answers 431. 40,000 bytes pass even NIOHTTP2's default bound (16 KiB): GOAWAY.
        for (size, expected) in [(8_000, "431"), (40_000, "GOAWAY")] {
            let out = try h2Client(
                port: harness.sidecarPort,
                """
                request(1, [("x-big", "a" * \(size))])
                result = None
                deadline = time.time() + 10
                while result is None and time.time() < deadline:
                    try:
                        batch = events()
                    except ConnectionResetError:
                        break
                    if batch is None:
                        break
                    for event in batch:
                        if isinstance(event, h2.events.ResponseReceived):
                            result = dict(event.headers).get(b":status", b"").decode()
                        if isinstance(event, h2.events.ConnectionTerminated):
                            result = "GOAWAY"
                    send()
                out["result"] = result
                """)
            XCTAssertEqual(out["result"] as? String, expected, "\(size) bytes of headers: \(out)")
        }
        XCTAssertTrue(harness.mockRequests().isEmpty, "nothing was forwarded")
        let h2 = try curl(["--http2-prior-knowledge", harness.baseURL + "/v1/models"])
        XCTAssertTrue(h2.headers.hasPrefix("HTTP/2 200"), h2.headers)
    }

    func testWhatHTTP1CouldNotCarryIsResetAndNeverForwarded() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // Each on a stream of its own, on one connection; the last stream is a good one.
        let out = try h2Client(
            port: harness.sidecarPort,
            """
            cases = {
                1: ([("authorization", "Bearer sk-leak-0123456789\\r\\nx-b: 2")], None),
                3: ([("connection", "keep-alive")], None),
                5: ([("content-length", "10")], b"abc"),
                7: ([("x-a", "nul\\x00byte")], None),
            }
            for stream_id, (headers, body) in cases.items():
                request(stream_id, headers, body)
            request(9, [("content-length", "2")], b"{}")
            resets, status = {}, None
            deadline = time.time() + 10
            while status is None and time.time() < deadline:
                batch = events()
                if batch is None:
                    break
                for event in batch:
                    if isinstance(event, h2.events.StreamReset):
                        resets[str(event.stream_id)] = int(event.error_code)
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 9:
                        status = dict(event.headers).get(b":status", b"").decode()
                send()
            out["resets"], out["status"] = resets, status
            """, checksItsOwnHeaders: false)
        XCTAssertEqual(out["resets"] as? [String: Int], ["1": 1, "3": 1, "5": 1, "7": 1], "PROTOCOL_ERROR: \(out)")
        XCTAssertEqual(out["status"] as? String, "200", "the connection's good stream is served: \(out)")
        XCTAssertEqual(harness.mockRequests().count, 1, "only the good stream was forwarded")
        XCTAssertEqual(harness.stop(), 0)
        XCTAssertTrue(harness.sidecar.stderr.contains("HTTP/2 stream error"), harness.sidecar.stderr)
        XCTAssertFalse(harness.sidecar.stderr.contains("sk-leak"), "a refused header's value reached the log")
    }

    func testAnIdleConnectionGetsGoAwayAfterTheClientTimeout() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--client-timeout", "1"])
        defer { harness.stop() }
        let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
        let emptySettings: [UInt8] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0]
        let started = ContinuousClock.now
        let (reply, closed) = try rawHTTPBytes(port: harness.sidecarPort, preface + emptySettings)
        XCTAssertTrue(closed)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(8), "held well past --client-timeout")
        let goAway = try XCTUnwrap(Self.frames(reply).first { $0.type == 0x7 }, "no GOAWAY in \(reply)")
        XCTAssertEqual(Array(goAway.payload[4..<8]), [0, 0, 0, 0], "NO_ERROR")
    }

    func testADrainSendsGoAwayAndLetsTheOpenStreamsFinish() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--drain-timeout", "10"])
        defer { harness.stop() }
        // Two h2 connections, a slow stream on each: curl's, read to its end, and the raw client's,
        // which watches for GOAWAY (the h2 package stops reading a connection at GOAWAY, whatever
        // stream it names, so curl is the one that shows the stream finishing). SIGTERM once
        // curl's first event has arrived.
        let out = try h2Client(
            port: harness.sidecarPort,
            """
            import os, signal, subprocess
            body = json.dumps({"model": "gpt-4o-mini", "stream": True}).encode()
            slow = [("x-mock-events", "10"), ("x-mock-event-delay-ms", "100")]
            request(1, slow, body)
            curl = subprocess.Popen(
                ["curl", "-sS", "-N", "--http2-prior-knowledge", "http://127.0.0.1:%s/v1/chat/completions" % sys.argv[1],
                 "-H", "x-mock-events: 10", "-H", "x-mock-event-delay-ms: 100", "--data-binary", body.decode()],
                stdout=subprocess.PIPE)
            first = curl.stdout.readline()
            os.kill(int(sys.argv[2]), signal.SIGTERM)
            goaway = None
            while goaway is None:
                batch = events()
                if batch is None:
                    break
                for event in batch:
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = [int(event.error_code), event.last_stream_id]
                send()
            rest = curl.stdout.read()
            out["goaway"], out["curl"], out["body"] = goaway, curl.wait(), (first + rest).decode()
            """, arguments: ["\(harness.sidecar.process.processIdentifier)"])
        XCTAssertEqual(out["goaway"] as? [Int], [0, 1], "GOAWAY(NO_ERROR, last stream 1): \(out)")
        XCTAssertEqual(out["curl"] as? Int, 0, "\(out)")
        XCTAssertTrue((out["body"] as? String)?.contains("data: [DONE]") == true, "\(out)")
        XCTAssertEqual(harness.sidecar.waitForExit(timeout: .seconds(15)), 0)
        XCTAssertTrue(
            harness.collector.responseDones.contains { $0.outcome == .completed },
            "\(harness.collector.responseDones.map(\.outcome))")
    }

    private static func rssKiB(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("VmRSS") })
        return try XCTUnwrap(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
    }

    /// The frames in bytes an HTTP/2 server sent, as far as they are whole.
    private static func frames(_ bytes: [UInt8]) -> [(type: UInt8, payload: [UInt8])] {
        var frames: [(UInt8, [UInt8])] = []
        var index = 0
        while index + 9 <= bytes.count {
            let length = Int(bytes[index]) << 16 | Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
            guard index + 9 + length <= bytes.count else { break }
            frames.append((bytes[index + 3], Array(bytes[(index + 9)..<(index + 9 + length)])))
            index += 9 + length
        }
        return frames
    }
}

/// The mock upstream as an h2 provider (`--http2`: ALPN `h2, http/1.1` over TLS, NIOHTTP2 serving):
/// what the h2-upstream tests stand on.
final class MockUpstreamHTTP2Tests: XCTestCase {
    func testTheMockServesH2OverTLSWhenAskedAndHTTP1Beside() throws {
        let pki = try TestPKI.make()
        let port = try freeTCPPort()
        let log = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-mock-\(UUID().uuidString).jsonl")
        let mock = try RunningProcess(
            product: "llmtap-mock-upstream",
            arguments: [
                "--listen", "127.0.0.1:\(port)", "--tls-cert", pki.serverCertificate, "--tls-key", pki.serverKey,
                "--http2", "--request-log", log.path, "--event-delay-ms", "1",
            ])
        defer { mock.signal(SIGTERM) }
        XCTAssertTrue(eventually { mock.stdout.contains("listening on https://") }, mock.stderr)
        let tls = ["--cacert", pki.caCertificate, "--resolve", "localhost:\(port):127.0.0.1"]
        let url = "https://localhost:\(port)/v1/chat/completions"
        for stream in [false, true] {
            let body = #"{"model":"gpt-4o-mini","stream":\#(stream),"stream_options":{"include_usage":true}}"#
            let h2 = try curl(tls + ["--http2", url, "--data-binary", body])
            let http1 = try curl(tls + ["--http1.1", url, "--data-binary", body])
            XCTAssertTrue(h2.headers.hasPrefix("HTTP/2 200"), h2.headers)
            XCTAssertTrue(http1.headers.hasPrefix("HTTP/1.1 200"), http1.headers)
            let text = String(decoding: h2.body, as: UTF8.self)
            XCTAssertTrue(text.contains(stream ? "chat.completion.chunk" : "\"chat.completion\""), text)
            XCTAssertEqual(h2.body.count > 0, http1.body.count > 0)
        }
        let opened = try String(contentsOf: log, encoding: .utf8).split(separator: "\n").filter {
            $0.contains("connection_opened")
        }
        XCTAssertEqual(opened.filter { $0.contains(#""protocol":"h2""#) }.count, 2, "\(opened)")
        XCTAssertEqual(opened.filter { $0.contains(#""protocol":"http1""#) }.count, 2, "\(opened)")
        // Without --http2 nothing changes: ALPN offers nothing, and curl speaks HTTP/1.1.
        XCTAssertEqual(
            try RunningProcess(
                product: "llmtap-mock-upstream", arguments: ["--listen", "127.0.0.1:0", "--http2"]
            ).waitForExit(), 64, "--http2 needs --tls-cert")
    }
}
