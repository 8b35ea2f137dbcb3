import Foundation
import TestSupport
import Wire
import XCTest

/// WebSocket (OpenAI's Realtime API) through the sidecar, real processes end to end: Python's
/// `websockets` as the client, the mock upstream's `/v1/realtime` behind, the records on a raw
/// collector socket. Reverse mode to a plain and to a TLS upstream, MITM mode, broken frames, a
/// refused upgrade and a drain.
final class WebSocketProxyTests: XCTestCase {
    private let apiKey = "sk-test-FAKE-realtime-0123456789abcdef"

    /// A session that exercises what a Realtime client does, and the test events: echoes (text,
    /// binary, 70 KB), a message the mock fragments, one the client fragments, ping/pong, a
    /// response with usage, an error event, then a close with 4001. Prints what it checked.
    /// argv: URL, then optionally the CA file for wss.
    static let sessionScript = #"""
        import asyncio, json, ssl, sys, websockets
        async def main():
            kwargs = {"additional_headers": {"Authorization": "Bearer " + sys.argv[2]}, "max_size": None}
            if sys.argv[1].startswith("wss:"):
                kwargs["ssl"] = ssl.create_default_context(cafile=sys.argv[3])
            async with websockets.connect(sys.argv[1], **kwargs) as ws:
                created = json.loads(await ws.recv())
                print("created:", created["type"], created["session"]["model"])
                for text in [json.dumps({"type": "mock.echo", "x": "é" * 10}),
                             json.dumps({"type": "mock.echo", "pad": "y" * 70000})]:
                    await ws.send(text)
                    print("echo text:", (await ws.recv()) == text)
                await ws.send(bytes(range(256)) * 3)
                print("echo binary:", (await ws.recv()) == bytes(range(256)) * 3)
                frag = json.dumps({"type": "mock.fragmented", "z": "z" * 3000})
                await ws.send(frag)
                print("fragmented by the upstream:", (await ws.recv()) == frag)
                parts = [json.dumps({"type": "mock.echo", "p": "q" * 500})[:9], json.dumps({"type": "mock.echo", "p": "q" * 500})[9:]]
                await ws.send(iter(parts))
                print("fragmented by the client:", (await ws.recv()) == "".join(parts))
                latency = await ws.ping(b"are you there")
                await latency
                print("pong: True")
                await ws.send(json.dumps({"type": "response.create"}))
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "response.done":
                        print("usage:", event["response"]["usage"]["total_tokens"])
                        break
                await ws.send(json.dumps({"type": "mock.error"}))
                print("error:", json.loads(await ws.recv())["error"]["code"])
                await ws.close(code=4001, reason="done here")
                print("closed:", ws.close_code)
        asyncio.run(main())
        """#

    private func checkSession(_ run: (status: Int32, stdout: String, stderr: String)) {
        XCTAssertEqual(run.status, 0, run.stderr)
        for line in [
            "created: session.created gpt-realtime", "echo text: True\necho text: True", "echo binary: True",
            "fragmented by the upstream: True", "fragmented by the client: True", "pong: True", "usage: 270",
            "error: mock_error", "closed: 4001",
        ] {
            XCTAssertTrue(run.stdout.contains(line), "\(line) missing from:\n\(run.stdout)\n\(run.stderr)")
        }
    }

    /// The session's records: one Request, the messages as StreamChunks in one index, ResponseDone.
    private func checkRecords(
        _ harness: ProxyHarness, ingress: IngressMode, file: StaticString = #filePath, line: UInt = #line
    )
        throws
    {
        XCTAssertTrue(
            eventually { harness.collector.responseDones.contains { $0.hasWebsocket } }, file: file, line: line)
        let done = try XCTUnwrap(harness.collector.responseDones.first { $0.hasWebsocket })
        let records = harness.collector.records(exchange: done.exchangeID)
        guard case .request(let request) = records.first else {
            return XCTFail("no request first", file: file, line: line)
        }
        XCTAssertEqual(request.method, "GET", file: file, line: line)
        XCTAssertEqual(request.path, "/v1/realtime?model=gpt-realtime", file: file, line: line)
        XCTAssertEqual(request.ingress, ingress, file: file, line: line)
        XCTAssertEqual(request.headers.first { $0.name.lowercased() == "authorization" }?.value, "[redacted]")
        let chunks = records.compactMap { if case .streamChunk(let chunk) = $0 { chunk } else { nil } }
        XCTAssertEqual(
            chunks.map(\.index), (0..<UInt64(chunks.count)).map { $0 }, "one index, no gap", file: file, line: line)
        XCTAssertTrue(chunks.allSatisfy { $0.websocketOpcode == 1 || $0.websocketOpcode == 2 }, file: file, line: line)
        let client = chunks.filter { $0.direction == .request }
        let upstream = chunks.filter { $0.direction == .response }
        // Client: echo ×2, binary, mock.fragmented, the fragmented echo, response.create, mock.error.
        XCTAssertEqual(client.count, 7, file: file, line: line)
        XCTAssertEqual(client[2].websocketOpcode, 2)
        XCTAssertEqual(
            Array(client[2].data),
            Array((0...255).map { UInt8($0) }) + (0...255).map { UInt8($0) } + (0...255).map { UInt8($0) })
        XCTAssertEqual(client[1].messageSize, UInt64(client[1].data.count))
        XCTAssertTrue(
            String(decoding: client[4].data, as: UTF8.self).hasPrefix(#"{"type": "mock.echo", "p": "qqq"#),
            "reassembled from the client's fragments")
        XCTAssertEqual(
            Array(upstream[1].data), Array(client[0].data), "the echo is byte for byte what the client sent",
            file: file, line: line)
        XCTAssertTrue(
            upstream.contains { String(decoding: $0.data, as: UTF8.self).hasPrefix(#"{"type":"response.done""#) },
            file: file, line: line)
        XCTAssertEqual(done.status, 101, file: file, line: line)
        XCTAssertEqual(done.outcome, .completed, file: file, line: line)
        XCTAssertEqual(done.websocket.closeCode, 4001, file: file, line: line)
        XCTAssertEqual(done.websocket.closedBy, .request, file: file, line: line)
        XCTAssertEqual(done.websocket.closeReason, "done here", file: file, line: line)
        XCTAssertEqual(done.websocket.clientMessages, 7, file: file, line: line)
        XCTAssertEqual(done.websocket.upstreamMessages, UInt64(upstream.count), file: file, line: line)
        XCTAssertEqual(done.responseChunks, UInt64(chunks.count), file: file, line: line)
        XCTAssertEqual(done.requestBytes, client.reduce(0) { $0 + $1.messageSize }, file: file, line: line)
        XCTAssertFalse(
            harness.collector.rawFrames.contains { containsBytes($0, Array(apiKey.utf8)) },
            "the key never reaches the wire", file: file, line: line)
        // The upgrade went upstream with the client's credential, and no compression was offered.
        let upgrade = try XCTUnwrap(harness.mockRequests().first { $0["websocket"] as? Bool == true })
        let headers = try XCTUnwrap(upgrade["headers"] as? [String: String])
        XCTAssertEqual(headers["authorization"], "Bearer \(apiKey)", file: file, line: line)
        XCTAssertNil(headers["sec-websocket-extensions"], "\(headers)", file: file, line: line)
    }

    func testARealtimeSessionThroughTheReverseListenerIsRelayedByteForByteAndTapped() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        // Upstream connections idle in the pools: an upgrade must not take one (a server takes an
        // upgrade as a connection's first request only).
        for _ in 0..<4 { XCTAssertEqual(try curlWithStatus([harness.baseURL + "/v1/models"]).status, 200) }
        let url = "ws://127.0.0.1:\(harness.sidecarPort)/v1/realtime?model=gpt-realtime"
        checkSession(try runPython(Self.sessionScript, arguments: [url, apiKey]))
        try checkRecords(harness, ingress: .reverse)
        XCTAssertFalse(harness.sidecar.stderr.contains(apiKey), "the key never reaches the log")
        // The HTTP side of the same listener is untouched.
        XCTAssertEqual(try curlWithStatus([harness.baseURL + "/v1/models"]).status, 200)
    }

    func testReverseModeToATLSUpstreamAndMITMMode() throws {
        let setup = try MITMProxySetup.start()
        let harness = setup.harness
        defer { harness.stop() }
        // ws:// to the sidecar, wss:// from it to the upstream.
        checkSession(
            try runPython(
                Self.sessionScript,
                arguments: ["ws://127.0.0.1:\(harness.sidecarPort)/v1/realtime?model=gpt-realtime", apiKey]))
        try checkRecords(harness, ingress: .reverse)
        // wss:// through the sidecar as the HTTPS proxy, decrypted with its CA.
        let script = "import os\nos.environ['HTTPS_PROXY'] = '\(setup.proxy)'\n" + Self.sessionScript
        checkSession(
            try runPython(
                script,
                arguments: [
                    "wss://localhost:\(harness.mockPort)/v1/realtime?model=gpt-realtime", apiKey, setup.caCertificate,
                ]))
        XCTAssertTrue(eventually { harness.collector.responseDones.filter(\.hasWebsocket).count == 2 })
        let requests = harness.collector.envelopes.compactMap { if case .request(let r) = $0.record { r } else { nil } }
        XCTAssertEqual(requests.map(\.ingress), [.reverse, .mitm])
    }

    /// Speaks the handshake by hand, then sends `frame` (hex) and prints the Close code it gets.
    static let rawScript = #"""
        import base64, os, socket, struct, sys
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        print("status:", head.split(b"\r\n")[0].decode())
        s.sendall(bytes.fromhex(sys.argv[2]))
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        # Frames from the server: skip data frames, report the Close.
        i = 0
        while i + 2 <= len(rest):
            opcode, length = rest[i] & 0x0F, rest[i + 1] & 0x7F
            i += 2
            if length == 126: length = struct.unpack(">H", rest[i:i + 2])[0]; i += 2
            elif length == 127: length = struct.unpack(">Q", rest[i:i + 8])[0]; i += 8
            payload = rest[i:i + length]; i += length
            if opcode == 8:
                print("close:", struct.unpack(">H", payload[:2])[0], payload[2:].decode())
        print("eof")
        """#

    private static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// A masked frame header and payload (mask 0x01020304).
    private static func maskedFrame(_ first: UInt8, _ payload: [UInt8]) -> [UInt8] {
        let mask: [UInt8] = [1, 2, 3, 4]
        var header: [UInt8] = [first]
        if payload.count < 126 {
            header.append(0x80 | UInt8(payload.count))
        } else {
            header += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        }
        return header + mask + payload.enumerated().map { $1 ^ mask[$0 % 4] }
    }

    func testBrokenFramesCloseOnlyTheirSessionWithTheRightCode() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--max-websocket-message-bytes", "1024"])
        defer { harness.stop() }
        // A healthy session stays open across the others' failures.
        let steady = try RunningProcess(
            executable: URL(fileURLWithPath: try testPython()),
            arguments: [
                "-c",
                """
                import asyncio, json, sys, websockets
                async def main():
                    async with websockets.connect(sys.argv[1]) as ws:
                        await ws.recv()
                        print("ready", flush=True)
                        await asyncio.sleep(3)
                        await ws.send(json.dumps({"type": "mock.echo"}))
                        print("still echoed:", json.loads(await ws.recv())["type"], flush=True)
                asyncio.run(main())
                """,
                "ws://127.0.0.1:\(harness.sidecarPort)/v1/realtime?model=gpt-realtime",
            ])
        XCTAssertTrue(eventually { steady.stdout.contains("ready") }, steady.stderr)
        let cases: [(String, [UInt8], Int, String)] = [
            ("unmasked", [0x81, 0x02, 0x68, 0x69], 1002, "an unmasked frame from the client"),
            ("reserved opcode", Self.maskedFrame(0x83, [1, 2]), 1002, "a frame with the reserved opcode 3"),
            ("reserved bit", Self.maskedFrame(0xC1, [1, 2]), 1002, "a frame with a reserved bit set"),
            (
                "over the bound", Self.maskedFrame(0x82, Array(repeating: 7, count: 2000)), 1009,
                "a message over 1024 bytes"
            ),
        ]
        for (name, frame, code, reason) in cases {
            let run = try runPython(Self.rawScript, arguments: ["\(harness.sidecarPort)", Self.hex(frame)])
            XCTAssertEqual(run.status, 0, "\(name): \(run.stderr)")
            XCTAssertTrue(run.stdout.contains("status: HTTP/1.1 101"), "\(name): \(run.stdout)")
            XCTAssertTrue(run.stdout.contains("close: \(code) \(reason)"), "\(name): \(run.stdout)")
            XCTAssertTrue(run.stdout.contains("eof"), "\(name): the connection closes")
        }
        XCTAssertEqual(steady.waitForExit(timeout: .seconds(30)), 0, steady.stderr)
        XCTAssertTrue(steady.stdout.contains("still echoed: mock.echo"), steady.stdout)
        // Each broken session ends as the client's fault, with its code; the upstream heard 1001.
        XCTAssertTrue(eventually { harness.collector.responseDones.filter(\.hasWebsocket).count == 5 })
        let broken = harness.collector.responseDones.filter { $0.hasWebsocket && $0.outcome == .clientAborted }
        XCTAssertEqual(broken.map(\.websocket.closeCode).sorted(), [1002, 1002, 1002, 1009])
        XCTAssertTrue(broken.allSatisfy { $0.error.contains("the client broke the WebSocket protocol") }, "\(broken)")
        let upstreamCloses = harness.mockLog().filter { $0["event"] as? String == "ws_close" }.compactMap {
            $0["code"] as? Int
        }
        XCTAssertEqual(upstreamCloses.filter { $0 == 1001 }.count, 4, "\(upstreamCloses)")
        XCTAssertTrue(harness.sidecar.stderr.contains("closed a WebSocket session that broke the protocol"))
        XCTAssertFalse(harness.sidecar.stderr.contains("Bearer"), "no credential in the violation logs")
        XCTAssertTrue(harness.sidecar.process.isRunning)
    }

    func testAClientThatStopsReadingLosesItsSessionAfterTheClientTimeout() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--client-timeout", "2"])
        defer { harness.stop() }
        let flood = Self.maskedFrame(0x81, Array(#"{"type":"mock.flood","count":400,"bytes":65536}"#.utf8))
        let run = try runPython(
            """
            import base64, os, socket, sys, time
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
            s.sendall(("GET /v1/realtime?model=gpt-realtime HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\n"
                       "Connection: Upgrade\\r\\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode() +
                       "\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n").encode())
            print("head:", s.recv(200).split(b"\\r\\n")[0].decode())
            s.sendall(bytes.fromhex(sys.argv[2]))
            time.sleep(5)  # not reading; the sidecar gives up after 2 s
            s.close()
            print("gave up reading")
            """, arguments: ["\(harness.sidecarPort)", Self.hex(flood)])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("head: HTTP/1.1 101"), run.stdout)
        XCTAssertTrue(run.stdout.contains("gave up reading"), run.stdout)
        XCTAssertTrue(eventually { harness.collector.responseDones.contains { $0.hasWebsocket } })
        let done = try XCTUnwrap(harness.collector.responseDones.first { $0.hasWebsocket })
        XCTAssertEqual(done.outcome, .clientAborted)
        XCTAssertTrue(done.error.contains("stopped reading"), done.error)
        XCTAssertLessThan(done.websocket.upstreamMessages, 400, "the upstream was held back, not read to its end")
        XCTAssertTrue(harness.sidecar.stderr.contains("a client stopped reading"), harness.sidecar.stderr)
    }

    func testAnUpgradeTheUpstreamRefusesIsAnsweredAsHTTP() throws {
        let harness = try ProxyHarness(mockArguments: ["--accept-key", "sk-the-right-one"])
        defer { harness.stop() }
        let run = try runPython(
            """
            import asyncio, sys, websockets
            async def main():
                try:
                    async with websockets.connect(sys.argv[1], additional_headers={"Authorization": "Bearer sk-wrong"}):
                        print("opened")
                except websockets.exceptions.InvalidStatus as error:
                    print("refused:", error.response.status_code)
            asyncio.run(main())
            """, arguments: ["ws://127.0.0.1:\(harness.sidecarPort)/v1/realtime?model=gpt-realtime"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("refused: 401"), run.stdout)
        XCTAssertTrue(eventually { harness.collector.responseDones.contains { $0.status == 401 } })
        XCTAssertFalse(harness.collector.responseDones.contains { $0.hasWebsocket })
    }

    func testADrainAsksOpenSessionsToCloseWith1001() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--drain-timeout", "10"])
        defer { harness.stop() }
        let client = try RunningProcess(
            executable: URL(fileURLWithPath: try testPython()),
            arguments: [
                "-c",
                """
                import asyncio, sys, websockets
                async def main():
                    async with websockets.connect(sys.argv[1]) as ws:
                        await ws.recv()
                        print("ready", flush=True)
                        try:
                            while True:
                                await ws.recv()
                        except websockets.exceptions.ConnectionClosed:
                            pass
                    print("closed:", ws.close_code, ws.close_reason, flush=True)
                asyncio.run(main())
                """,
                "ws://127.0.0.1:\(harness.sidecarPort)/v1/realtime?model=gpt-realtime",
            ])
        XCTAssertTrue(eventually { client.stdout.contains("ready") }, client.stderr)
        harness.sidecar.signal(SIGTERM)
        XCTAssertEqual(client.waitForExit(timeout: .seconds(20)), 0, client.stderr)
        XCTAssertTrue(client.stdout.contains("closed: 1001 the sidecar is shutting down"), client.stdout)
        XCTAssertEqual(harness.sidecar.waitForExit(timeout: .seconds(20)), 0, harness.sidecar.stderr)
        XCTAssertTrue(eventually { harness.collector.responseDones.contains { $0.hasWebsocket } })
        let done = try XCTUnwrap(harness.collector.responseDones.first { $0.hasWebsocket })
        XCTAssertEqual(done.outcome, .completed)
        XCTAssertEqual(done.websocket.closeCode, 1001)
    }
}

/// WebSocket over HTTP/2 extended CONNECT (RFC 8441) from a client, bridged to the upstream's
/// HTTP/1.1 upgrade: the `h2` package speaks the frames by hand, masking its WebSocket frames.
final class WebSocketOverHTTP2Tests: XCTestCase {
    static let script = #"""
        import os, socket, struct, sys, json
        import h2.config, h2.connection, h2.events
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        inbox = b""
        status = None
        ended = []
        def pump():
            global inbox, status
            data = s.recv(65536)
            if not data:
                raise EOFError("closed")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[":status"]
                    print("headers:", sorted(k for k, _ in event.headers))
                elif isinstance(event, h2.events.DataReceived):
                    inbox += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    print("stream ended")
                    ended.append(True)
                elif isinstance(event, h2.events.StreamReset):
                    print("stream reset:", event.error_code)
            out = conn.data_to_send()
            if out:
                s.sendall(out)
        while conn.remote_settings.enable_connect_protocol != 1:
            pump()
        print("enable_connect_protocol: 1")
        conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                              (":path", "/v1/realtime?model=gpt-realtime"), (":authority", "127.0.0.1"),
                              ("sec-websocket-version", "13"), ("authorization", "Bearer sk-h2-ws-secret")])
        s.sendall(conn.data_to_send())
        while status is None:
            pump()
        print("status:", status)
        def frame(opcode, payload):
            mask = os.urandom(4)
            head = bytes([0x80 | opcode])
            head += bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload))
            return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        def message():
            global inbox
            while True:
                if len(inbox) >= 2:
                    length, start = inbox[1] & 0x7F, 2
                    if length == 126 and len(inbox) >= 4:
                        length, start = struct.unpack(">H", inbox[2:4])[0], 4
                    if len(inbox) >= start + length:
                        opcode, payload, inbox = inbox[0] & 0x0F, inbox[start:start + length], inbox[start + length:]
                        return opcode, payload
                pump()
        print("first:", json.loads(message()[1])["type"])
        echo = json.dumps({"type": "mock.echo", "over": "h2"}).encode()
        conn.send_data(1, frame(1, echo))
        s.sendall(conn.data_to_send())
        print("echo:", message()[1] == echo)
        conn.send_data(1, frame(8, struct.pack(">H", 1000)))
        s.sendall(conn.data_to_send())
        opcode, payload = message()
        print("close:", opcode, struct.unpack(">H", payload[:2])[0])
        while not ended:
            pump()
        """#

    func testExtendedConnectIsBridgedToTheUpstreamsUpgrade() throws {
        let harness = try ProxyHarness()
        defer { harness.stop() }
        let run = try runPython(Self.script, arguments: ["\(harness.sidecarPort)"])
        XCTAssertEqual(run.status, 0, run.stderr)
        for line in [
            "enable_connect_protocol: 1", "status: 200", "first: session.created", "echo: True", "close: 8 1000",
            "stream ended",
        ] {
            XCTAssertTrue(run.stdout.contains(line), "\(line) missing from:\n\(run.stdout)\n\(run.stderr)")
        }
        XCTAssertFalse(run.stdout.contains("sec-websocket-accept"), run.stdout)
        XCTAssertTrue(eventually { harness.collector.responseDones.contains { $0.hasWebsocket } })
        let done = try XCTUnwrap(harness.collector.responseDones.first { $0.hasWebsocket })
        XCTAssertEqual(done.outcome, .completed)
        XCTAssertEqual(done.websocket.closeCode, 1000)
        XCTAssertEqual(done.websocket.clientMessages, 1)
        let records = harness.collector.records(exchange: done.exchangeID)
        guard case .request(let request) = records.first else { return XCTFail("no request") }
        XCTAssertEqual(request.httpVersion, "HTTP/2")
        XCTAssertEqual(request.method, "GET")
        let upgrade = try XCTUnwrap(harness.mockRequests().first { $0["websocket"] as? Bool == true })
        let headers = try XCTUnwrap(upgrade["headers"] as? [String: String])
        XCTAssertEqual(headers["upgrade"], "websocket")
        XCTAssertNotNil(headers["sec-websocket-key"])
        XCTAssertEqual(headers["authorization"], "Bearer sk-h2-ws-secret")
        XCTAssertFalse(harness.collector.rawFrames.contains { containsBytes($0, Array("sk-h2-ws-secret".utf8)) })
    }
}
