import Foundation
import TestSupport
import Wire
import XCTest

/// The sidecar with real clients over longer runs: no collector, the official openai package,
/// graceful shutdown, TLS upstreams, connection reuse.
final class ProxyLifecycleTests: XCTestCase {
    func testWithNoCollectorAThousandRequestsAllSucceedAndTheDropsAreCounted() throws {
        let nobody = "tcp://127.0.0.1:\(try freeTCPPort())"
        let harness = try ProxyHarness(sidecarArguments: ["--max-queued-records", "100"], collectorEndpoint: nobody)
        let script = """
            import http.client, json, sys
            connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
            ok = 0
            for i in range(1000):
                connection.request("POST", "/v1/chat/completions", body=json.dumps({"model": "gpt-4o-mini", "n": i}),
                                   headers={"content-type": "application/json", "authorization": "Bearer sk-test"})
                response = connection.getresponse()
                body = json.loads(response.read())
                ok += response.status == 200 and body["object"] == "chat.completion"
            print(ok)
            """
        let run = try runPython(script, arguments: ["\(harness.sidecarPort)"], timeout: .seconds(120))
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertEqual(run.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "1000")
        XCTAssertEqual(harness.stop(), 0, harness.sidecar.stderr)
        // Each exchange is at least 3 records; with a queue of 100 and nobody listening, most were dropped, and said so.
        let stopped = try XCTUnwrap(
            harness.sidecar.stderr.split(separator: "\n").last { $0.contains("llmtap-sidecar stopped") })
        let dropped =
            stopped.split(separator: " ").first { $0.hasPrefix("dropped=") }.flatMap { Int($0.dropFirst(8)) } ?? 0
        XCTAssertGreaterThan(dropped, 2_900, String(stopped))
    }

    func testTheOfficialOpenAIClientWorksThroughTheSidecarStreamingAndNot() throws {
        let harness = try ProxyHarness(mockArguments: ["--event-delay-ms", "2"])
        defer { harness.stop() }
        let script = """
            import json, sys
            from openai import OpenAI
            client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-test-openai-client-key")
            completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                    stream=True, stream_options={"include_usage": True})
            pieces, usage = [], None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            models = [m.id for m in client.models.list()]
            print(json.dumps({"text": completion.choices[0].message.content, "usage": completion.usage.total_tokens,
                              "streamed": "".join(pieces), "stream_usage": usage, "models": models}))
            """
        let run = try runPython(script, arguments: [harness.baseURL])
        XCTAssertEqual(run.status, 0, run.stderr)
        let result = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(result["text"] as? String, "Hello! How can I help")
        XCTAssertEqual(result["streamed"] as? String, "Hello! How can I help")
        XCTAssertEqual(result["stream_usage"] as? Int, 6)
        XCTAssertEqual(result["models"] as? [String], ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"])
        // The client's key went upstream untouched.
        XCTAssertTrue(
            harness.mockRequests().allSatisfy {
                ($0["headers"] as? [String: String])?["authorization"] == "Bearer sk-test-openai-client-key"
            })
    }

    func testSIGTERMLetsAStreamUnderWayFinishThenExitsZero() throws {
        let harness = try ProxyHarness()
        let script = """
            import http.client, json, sys
            connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
            connection.request("POST", "/v1/chat/completions", body=json.dumps({"stream": True}),
                               headers={"x-mock-events": "4", "x-mock-event-delay-ms": "300"})
            response = connection.getresponse()
            print("started", flush=True)
            body = response.read().decode()
            print("done" if "[DONE]" in body else "cut", flush=True)
            """
        let client = Process()
        client.executableURL = URL(fileURLWithPath: try testPython())
        let scriptFile = FileManager.default.temporaryDirectory.appendingPathComponent("drain-\(UUID().uuidString).py")
        try script.write(to: scriptFile, atomically: true, encoding: .utf8)
        client.arguments = [scriptFile.path, "\(harness.sidecarPort)"]
        let output = Pipe()
        client.standardOutput = output
        try client.run()
        XCTAssertTrue(eventually { harness.mockLog().contains { $0["event"] as? String == "sent" } })
        harness.sidecar.signal(SIGTERM)
        client.waitUntilExit()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(printed, "started\ndone\n", "the stream under way finished whole")
        XCTAssertEqual(harness.sidecar.waitForExit(), 0, harness.sidecar.stderr)
        XCTAssertTrue(harness.sidecar.stderr.contains("draining"))
        // Nothing new is accepted once it has gone.
        XCTAssertNotEqual(try curl(["--max-time", "2", harness.baseURL + "/v1/models"]).exitCode, 0)
        harness.stop()
        let outcomes = harness.collector.envelopes.compactMap {
            if case .responseDone(let done) = $0.record { done.outcome } else { nil }
        }
        XCTAssertEqual(outcomes, [.completed], "the final records were flushed to the collector before exit")
    }

    func testAnHTTPSUpstreamIsVerifiedAgainstTheExtraCAAndRefusedWithoutIt() throws {
        let pki = try TestPKI.make()
        let trusted = try ProxyHarness(
            sidecarArguments: ["--upstream-ca-file", pki.caCertificate],
            mockArguments: ["--tls-cert", pki.serverCertificate, "--tls-key", pki.serverKey]
        )
        let response = try curl([
            trusted.baseURL + "/v1/chat/completions", "-d", #"{"model":"gpt-4o-mini","stream":true}"#,
        ])
        XCTAssertEqual(response.exitCode, 0)
        XCTAssertTrue(String(decoding: response.body, as: UTF8.self).hasSuffix("data: [DONE]\n\n"))
        let requests = trusted.mockRequests()
        XCTAssertEqual((requests.first?["headers"] as? [String: String])?["host"], "localhost:\(trusted.mockPort)")
        trusted.stop()

        // Without our test CA the system roots don't know the certificate: 502, and the record says why.
        let untrusted = try ProxyHarness(mockArguments: [
            "--tls-cert", pki.serverCertificate, "--tls-key", pki.serverKey,
        ])
        let refused = try curl([untrusted.baseURL + "/v1/models"])
        XCTAssertTrue(refused.headers.hasPrefix("HTTP/1.1 502"), refused.headers)
        XCTAssertTrue(String(decoding: refused.body, as: UTF8.self).contains("upstream_unreachable"))
        XCTAssertTrue(untrusted.mockRequests().isEmpty)
        untrusted.stop()

        // A CA file that is not PEM stops the sidecar at start, naming the problem.
        let garbage = FileManager.default.temporaryDirectory.appendingPathComponent("not-a-ca-\(UUID().uuidString).pem")
        try "not a certificate".write(to: garbage, atomically: true, encoding: .utf8)
        let bad = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: [
                "--upstream", "https://localhost:1", "--upstream-ca-file", garbage.path, "--listen",
                "127.0.0.1:\(try freeTCPPort())",
            ])
        XCTAssertNotEqual(bad.waitForExit(), 0)
        XCTAssertTrue(bad.stderr.contains("cannot set up TLS to the upstream"), bad.stderr)
    }

    func testSequentialRequestsReuseOneUpstreamConnection() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--threads", "1"])
        defer { harness.stop() }
        for _ in 0..<20 {
            XCTAssertEqual(try curl([harness.baseURL + "/v1/models"]).exitCode, 0)
        }
        let opened = harness.mockLog().filter { $0["event"] as? String == "connection_opened" }.count
        XCTAssertEqual(opened, 1, "20 requests from 20 client connections went over one pooled upstream connection")
    }
}

/// A throwaway CA and a server certificate for localhost, made with the openssl command.
struct TestPKI {
    let caCertificate: String
    let serverCertificate: String
    let serverKey: String

    static func make() throws -> TestPKI {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-pki-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let path = { (name: String) in folder.appendingPathComponent(name).path }
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n".write(
            toFile: path("ext.cnf"), atomically: true, encoding: .utf8)
        for arguments in [
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=LLMTap Test CA", "-keyout", path("ca.key"), "-out", path("ca.pem"),
            ],
            [
                "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", "/CN=localhost", "-keyout", path("server.key"), "-out", path("server.csr"),
            ],
            [
                "x509", "-req", "-in", path("server.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                "-CAcreateserial",
                "-days", "2", "-extfile", path("ext.cnf"), "-out", path("server.pem"),
            ],
        ] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["openssl"] + arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw TestFailure("openssl \(arguments[0]) failed") }
        }
        return TestPKI(
            caCertificate: path("ca.pem"), serverCertificate: path("server.pem"), serverKey: path("server.key"))
    }
}

/// A slow client must slow the upstream read, not fill the sidecar's memory.
final class BackPressureTests: XCTestCase {
    func testAClientThatStopsReadingStopsTheSidecarReadingTheUpstream() throws {
        let harness = try ProxyHarness(sidecarArguments: ["--max-capture-bytes", "65536"])
        defer { harness.stop() }
        let pid = harness.sidecar.process.processIdentifier
        // 400 events of 64 KiB, sent by the mock as fast as it can: 25 MiB in all.
        let fd = try connectTCP(port: harness.sidecarPort, receiveTimeout: .seconds(30))
        defer { close(fd) }
        let request = Array(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-mock-events: 400\r\nx-mock-event-delay-ms: 0\r\nx-mock-event-bytes: 65536\r\nContent-Length: 16\r\n\r\n{\"stream\": true}"
                .utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var received = recv(fd, &buffer, 1024, 0)
        XCTAssertGreaterThan(received, 0)
        let before = try residentMegabytes(pid)
        // The client reads nothing for a while; the mock has long sent everything by then. The
        // kernel's socket buffers hold a few MiB of it; without back-pressure the sidecar would hold the rest.
        usleep(1_500_000)
        let during = try residentMegabytes(pid)
        XCTAssertLessThan(
            during - before, 12,
            "the sidecar buffered the response instead of holding the upstream back (\(before) -> \(during) MB)")
        // Then it reads it all: every byte arrives, and the stream ends properly.
        var tail: [UInt8] = []
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            received += count
            tail = Array((tail + buffer[0..<count]).suffix(32))
            if String(decoding: tail, as: UTF8.self).hasSuffix("data: [DONE]\n\n\r\n0\r\n\r\n") { break }
        }
        XCTAssertGreaterThan(received, 400 * 65536, "the whole stream arrived")
        XCTAssertTrue(String(decoding: tail, as: UTF8.self).hasSuffix("0\r\n\r\n"), "and ended with its last chunk")
    }

    private func residentMegabytes(_ pid: Int32) throws -> Double {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kilobytes = Double(line.split(separator: " ").dropFirst().first ?? "")
        else {
            throw TestFailure("no VmRSS for \(pid)")
        }
        return kilobytes / 1024
    }
}
