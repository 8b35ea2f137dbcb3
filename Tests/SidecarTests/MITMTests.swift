import Foundation
import TestSupport
import Wire
import XCTest

/// MITM mode with real processes: curl, openssl and the openai package use the sidecar as their
/// HTTPS proxy, in front of the mock upstream speaking TLS with a certificate from a test CA.
final class MITMTests: XCTestCase {
    private typealias Setup = MITMProxySetup

    /// A sidecar in both modes; `allowlisted` decides whether localhost is decrypted.
    private func startProxy(allowlisted: Bool = true, extra: [String] = []) throws -> Setup {
        try MITMProxySetup.start(allowlisted: allowlisted, extra: extra)
    }

    func testConnectionMayNotRemoveFramingHeadersEitherWay() throws {
        let setup = try startProxy()
        defer { setup.harness.stop() }
        let through = ["--http1.1", "-x", setup.proxy, "--cacert", setup.caCertificate, "--max-time", "5"]
        let url = "\(setup.upstreamURL)/v1/chat/completions"
        for name in ["content-length", "authorization"] {
            let refused = try curlWithStatus(
                through + [url, "-H", "Connection: \(name)", "-H", "Authorization: Bearer sk-test", "-d", "{}"])
            XCTAssertEqual(refused.status, 400, "\(name): \(refused.headers)")
        }
        XCTAssertEqual(setup.harness.mockRequests().count, 0)
        // The upstream's answer naming its Content-Length in Connection keeps it.
        let kept = try curlWithStatus(
            through + [
                url, "-H", "x-mock-response-header: connection: content-length", "-d", #"{"model":"gpt-4o-mini"}"#,
            ])
        XCTAssertEqual(kept.exitCode, 0)
        XCTAssertEqual(kept.status, 200)
        XCTAssertTrue(kept.headers.lowercased().contains("content-length:"), kept.headers)
        XCTAssertTrue(String(decoding: kept.body, as: UTF8.self).contains("chat.completion"))
    }

    func testCurlThroughTheProxyIsDecryptedAnsweredAndTappedAsMITM() throws {
        let setup = try startProxy()
        defer { setup.harness.stop() }
        let secret = "sk-mitm-secret-5512"
        for stream in [false, true] {
            let response = try curlWithStatus([
                "-x", setup.proxy, "--cacert", setup.caCertificate, "\(setup.upstreamURL)/v1/chat/completions",
                "-H", "Authorization: Bearer \(secret)", "-d", #"{"model":"gpt-4o-mini","stream":\#(stream)}"#,
            ])
            XCTAssertEqual(response.exitCode, 0)
            XCTAssertEqual(response.status, 200)
            let body = String(decoding: response.body, as: UTF8.self)
            XCTAssertTrue(stream ? body.hasSuffix("data: [DONE]\n\n") : body.contains("chat.completion"), body)
            XCTAssertTrue(response.headers.lowercased().contains("x-llmtap-exchange-id"))
        }
        XCTAssertTrue(
            eventually {
                setup.harness.collector.envelopes.filter { if case .responseDone = $0.record { true } else { false } }
                    .count == 2
            })
        let requests = setup.harness.collector.envelopes.compactMap {
            if case .request(let request) = $0.record { request } else { nil }
        }
        XCTAssertEqual(requests.map(\.ingress), [.mitm, .mitm])
        XCTAssertEqual(
            requests.map(\.host), ["localhost:\(setup.harness.mockPort)", "localhost:\(setup.harness.mockPort)"])
        XCTAssertEqual(requests.first?.scheme, "https")
        for frame in setup.harness.collector.rawFrames {
            XCTAssertNil(Data(frame).range(of: Data(secret.utf8)), "the credential reached the wire")
        }
        // The upstream saw its own host, over TLS it verified with --upstream-ca-file.
        XCTAssertEqual(
            (setup.harness.mockRequests().first?["headers"] as? [String: String])?["host"],
            "localhost:\(setup.harness.mockPort)")
    }

    func testCurlOverH2ThroughTheProxyIsDecryptedAndTappedStreamByStream() throws {
        let setup = try startProxy()
        defer { setup.harness.stop() }
        for stream in [false, true] {
            let body = #"{"model":"gpt-4o-mini","stream":\#(stream)}"#
            let response = try curlWithStatus([
                "--http2", "-x", setup.proxy, "--cacert", setup.caCertificate,
                "\(setup.upstreamURL)/v1/chat/completions", "-H", "Authorization: Bearer sk-mitm-h2", "-d", body,
            ])
            XCTAssertEqual(response.exitCode, 0)
            XCTAssertEqual(response.status, 200)
            // The CONNECT's answer, then the decrypted response, over h2 (ALPN with the leaf).
            XCTAssertTrue(response.headers.contains("\r\nHTTP/2 200"), response.headers)
            let text = String(decoding: response.body, as: UTF8.self)
            XCTAssertTrue(stream ? text.hasSuffix("data: [DONE]\n\n") : text.contains("chat.completion"), text)
        }
        XCTAssertTrue(eventually { setup.harness.collector.responseDones.count == 2 })
        XCTAssertEqual(setup.harness.collector.responseDones.map(\.outcome), [.completed, .completed])
        let requests = setup.harness.collector.envelopes.compactMap {
            if case .request(let request) = $0.record { request } else { nil }
        }
        XCTAssertEqual(requests.map(\.ingress), [.mitm, .mitm])
        XCTAssertEqual(requests.map(\.httpVersion), ["HTTP/2", "HTTP/2"])
        XCTAssertEqual(requests.first?.scheme, "https")
        XCTAssertFalse(
            setup.harness.collector.rawFrames.contains { containsBytes($0, Array("sk-mitm-h2".utf8)) },
            "the credential reached the wire")
    }

    func testTheOpenAIPackageWorksThroughTheProxyStreamingAndNot() throws {
        let setup = try startProxy()
        defer { setup.harness.stop() }
        let script = openAIChatScript(apiKey: "sk-openai-python-mitm")
        let python = try RunningProcess(
            executable: URL(fileURLWithPath: try testPython()), arguments: ["-c", script, setup.upstreamURL],
            environment: ["HTTPS_PROXY": setup.proxy, "SSL_CERT_FILE": setup.caCertificate, "NO_PROXY": ""])
        XCTAssertEqual(python.waitForExit(timeout: .seconds(60)), 0, python.stderr)
        XCTAssertTrue(python.stdout.contains("plain: Hello"), python.stdout)
        XCTAssertTrue(python.stdout.contains("stream: Hello"), python.stdout)
        XCTAssertTrue(
            eventually {
                let ingress: [IngressMode] = setup.harness.collector.envelopes.compactMap { envelope -> IngressMode? in
                    if case .request(let request) = envelope.record { return request.ingress }
                    return nil
                }
                return ingress == [.mitm, .mitm]
            })
    }

    func testTheOpenAIPackageOverH2ThroughTheProxy() throws {
        let setup = try startProxy()
        defer { setup.harness.stop() }
        // httpx with HTTP/2 under the openai package: ALPN picks h2 with the sidecar's leaf.
        let script = openAIChatScript(
            apiKey: "sk-openai-python-mitm-h2",
            httpClient: """
                import httpx
                http = httpx.Client(http2=True, proxy=sys.argv[2], verify=sys.argv[3],
                                    event_hooks={"response": [lambda r: versions.append(r.http_version)]})
                """)
        let run = try runPython(script, arguments: [setup.upstreamURL, setup.proxy, setup.caCertificate])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(run.stdout.contains("plain: Hello"), run.stdout)
        XCTAssertTrue(run.stdout.contains("stream: Hello"), run.stdout)
        XCTAssertTrue(run.stdout.contains("versions: HTTP/2,HTTP/2"), run.stdout)
        XCTAssertTrue(eventually { setup.harness.collector.responseDones.count == 2 })
        XCTAssertEqual(setup.harness.collector.responseDones.map(\.outcome), [.completed, .completed])
    }

    func testAHostOffTheAllowlistIsTunnelledUntouched() throws {
        let setup = try startProxy(allowlisted: false)
        defer { setup.harness.stop() }
        // 4 MB through the tunnel and back (the mock echoes it), end-to-end TLS with the test CA.
        let folder = FileManager.default.temporaryDirectory
        let upload = folder.appendingPathComponent("tunnel-\(UUID().uuidString).bin")
        var generator = SystemRandomNumberGenerator()
        try Data((0..<(4 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }).write(to: upload)
        let response = try curlWithStatus([
            "-x", setup.proxy, "--cacert", setup.pki.caCertificate, "\(setup.upstreamURL)/echo",
            "-H", "Content-Type: application/octet-stream", "--data-binary", "@\(upload.path)",
        ])
        XCTAssertEqual(response.status, 200)
        let echoed = try XCTUnwrap(JSONSerialization.jsonObject(with: response.body) as? [String: Any])
        XCTAssertEqual(echoed["body_bytes"] as? Int, 4 << 20)
        XCTAssertEqual(echoed["body_sha256"] as? String, try Self.sha256(upload))
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertTrue(
            setup.harness.collector.envelopes.allSatisfy { if case .request = $0.record { false } else { true } },
            "nothing of a tunnelled exchange is decrypted or published")

        // With --deny-unlisted the same CONNECT is refused.
        let denied = try startProxy(allowlisted: false, extra: ["--deny-unlisted"])
        defer { denied.harness.stop() }
        let refused = try curlWithStatus([
            "-x", denied.proxy, "--cacert", denied.pki.caCertificate, "\(denied.upstreamURL)/v1/models",
        ])
        XCTAssertNotEqual(refused.exitCode, 0)
        XCTAssertTrue(refused.headers.contains("403"), refused.headers)
    }

    func testTheLeafAndTheCAAreWhatClientsExpectAndTheCAIsKept() throws {
        let setup = try startProxy()
        let sidecarCA = try String(contentsOfFile: setup.caCertificate, encoding: .utf8)
        // openssl fetches the leaf through the proxy; it must chain to our CA with the right SAN.
        let fetched = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/openssl"),
            arguments: [
                "s_client", "-proxy", "127.0.0.1:\(setup.mitmPort)", "-connect", "localhost:\(setup.harness.mockPort)",
                "-servername", "localhost", "-alpn", "http/1.1", "-showcerts",
            ], stdinText: "")
        XCTAssertEqual(fetched.waitForExit(), 0, fetched.stderr)
        let output = fetched.stdout
        let leafPEM = try XCTUnwrap(
            output.range(of: "-----BEGIN CERTIFICATE-----").flatMap { start in
                output.range(of: "-----END CERTIFICATE-----", range: start.lowerBound..<output.endIndex).map {
                    String(output[start.lowerBound..<$0.upperBound])
                }
            })
        XCTAssertTrue(output.contains("ALPN protocol: http/1.1"), output)
        let leafFile = FileManager.default.temporaryDirectory.appendingPathComponent("leaf-\(UUID().uuidString).pem")
        try (leafPEM + "\n").write(to: leafFile, atomically: true, encoding: .utf8)
        let verify = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/openssl"),
            arguments: ["verify", "-CAfile", setup.caCertificate, "-purpose", "sslserver", leafFile.path])
        XCTAssertEqual(verify.waitForExit(), 0, verify.stdout + verify.stderr)
        let text = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/openssl"),
            arguments: ["x509", "-in", leafFile.path, "-noout", "-text"])
        XCTAssertEqual(text.waitForExit(), 0)
        XCTAssertTrue(text.stdout.contains("DNS:localhost"), text.stdout)
        XCTAssertTrue(text.stdout.contains("Digital Signature"), text.stdout)
        XCTAssertTrue(text.stdout.contains("TLS Web Server Authentication"), text.stdout)
        XCTAssertTrue(text.stdout.contains("CA:FALSE"), text.stdout)
        XCTAssertTrue(text.stdout.contains("ecdsa-with-SHA256"), text.stdout)

        // The key is private; the CA survives a restart unchanged; `ca path` and `ca export` show it.
        let keyMode =
            try FileManager.default.attributesOfItem(atPath: setup.caDirectory + "/llmtap-ca-key.pem")[
                .posixPermissions] as? Int
        XCTAssertEqual(keyMode, 0o600)
        setup.harness.stop()
        let path = try RunningProcess(
            product: "llmtap-sidecar", arguments: ["ca", "path", "--ca-dir", setup.caDirectory])
        XCTAssertEqual(path.waitForExit(), 0)
        XCTAssertEqual(path.stdout.trimmingCharacters(in: .whitespacesAndNewlines), setup.caCertificate)
        let exported = try RunningProcess(
            product: "llmtap-sidecar", arguments: ["ca", "export", "--ca-dir", setup.caDirectory])
        XCTAssertEqual(exported.waitForExit(), 0)
        XCTAssertEqual(exported.stdout, sidecarCA)
        XCTAssertFalse(exported.stdout.contains("PRIVATE KEY"))
        let again = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: [
                "--mode", "mitm", "--mitm-listen", "127.0.0.1:\(try freeTCPPort())", "--ca-dir", setup.caDirectory,
            ])
        XCTAssertTrue(eventually { again.stderr.contains("MITM listener ready") }, again.stderr)
        XCTAssertTrue(again.stderr.contains("loaded the LLMTap CA"))
        XCTAssertEqual(try String(contentsOfFile: setup.caCertificate, encoding: .utf8), sidecarCA)
        again.signal(SIGTERM)
        XCTAssertEqual(again.waitForExit(), 0)

        // A damaged CA stops the start, naming the file; it is never replaced.
        try "garbage".write(toFile: setup.caCertificate, atomically: true, encoding: .utf8)
        let broken = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: [
                "--mode", "mitm", "--mitm-listen", "127.0.0.1:\(try freeTCPPort())", "--ca-dir", setup.caDirectory,
            ])
        XCTAssertNotEqual(broken.waitForExit(), 0)
        XCTAssertTrue(broken.stderr.contains(setup.caCertificate), broken.stderr)
        XCTAssertEqual(try String(contentsOfFile: setup.caCertificate, encoding: .utf8), "garbage")
    }

    func testAClientThatHasNotSentCONNECTDoesNotHoldAGracefulDrain() throws {
        let setup = try startProxy(extra: ["--drain-timeout", "60"])
        defer { setup.harness.stop() }
        // Connected, and silent: no CONNECT yet.
        let idle = try connectTCP(port: setup.mitmPort)
        defer { close(idle) }
        XCTAssertTrue(eventually { setup.harness.sidecar.stderr.contains("MITM listener ready") })
        let signalled = ContinuousClock.now
        setup.harness.sidecar.signal(SIGTERM)
        // Without the quiesce the drain waited its 60 s for this client.
        XCTAssertEqual(setup.harness.sidecar.waitForExit(timeout: .seconds(30)), 0, setup.harness.sidecar.stderr)
        XCTAssertLessThan(ContinuousClock.now - signalled, .seconds(30))
        var byte: UInt8 = 0
        XCTAssertEqual(recv(idle, &byte, 1, 0), 0, "the idle client's connection was closed")
    }

    func testBadProxyInputIsRefusedAndOtherConnectionsGoOn() throws {
        let setup = try startProxy()
        defer { setup.harness.stop() }
        let cases: [(String, String)] = [
            ("CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n", "HTTP/1.1 400"),
            // Not a host name nor an address (this one used to crash the sidecar).
            ("CONNECT [x:443 HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
            ("CONNECT a]b:443 HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
            // Unlisted and nothing listening: 502, not a crash.
            ("CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 502"),
            ("CONNECT localhost:22 HTTP/1.1\r\nHost: localhost:22\r\n\r\n", "HTTP/1.1 403"),
            ("GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n", "HTTP/1.1 400"),
        ]
        for (request, status) in cases {
            let (response, closed) = try rawHTTP(port: setup.mitmPort, Array(request.utf8))
            XCTAssertTrue(response.hasPrefix(status), "\(request.debugDescription): \(response)")
            XCTAssertTrue(closed)
        }
        // Not TLS after a CONNECT that expects it: the connection is closed and the reason logged.
        let (afterConnect, closed) = try rawHTTP(
            port: setup.mitmPort,
            Array(
                "CONNECT localhost:\(setup.harness.mockPort) HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\n\r\n"
                    .utf8))
        XCTAssertTrue(afterConnect.hasPrefix("HTTP/1.1 200"), afterConnect)
        XCTAssertTrue(closed)
        func handshakeFailures() -> Int {
            setup.harness.sidecar.stderr.components(separatedBy: "TLS handshake failed").count - 1
        }
        XCTAssertTrue(eventually { handshakeFailures() > 0 })
        let before = handshakeFailures()
        // A client that doesn't trust our CA fails its handshake, which is logged too.
        let untrusting = try curlWithStatus([
            "-x", setup.proxy, "--cacert", setup.pki.caCertificate, "\(setup.upstreamURL)/v1/models",
        ])
        XCTAssertNotEqual(untrusting.exitCode, 0)
        XCTAssertTrue(eventually { handshakeFailures() > before })
        // Through all that, a good client is served.
        let good = try curlWithStatus([
            "-x", setup.proxy, "--cacert", setup.caCertificate, "\(setup.upstreamURL)/v1/models",
        ])
        XCTAssertEqual(good.status, 200)
        XCTAssertTrue(setup.harness.sidecar.stderr.contains("refused a proxy request"))
    }

    private static func sha256(_ file: URL) throws -> String? {
        let process = try RunningProcess(executable: URL(fileURLWithPath: "/usr/bin/sha256sum"), arguments: [file.path])
        guard process.waitForExit() == 0 else { return nil }
        return process.stdout.split(separator: " ").first.map(String.init)
    }
}

/// A sidecar in both modes (reverse and MITM) in front of the mock upstream serving TLS with a
/// test CA's certificate for localhost: what the MITM and WebSocket tests start from.
struct MITMProxySetup {
    let harness: ProxyHarness
    let pki: TestPKI
    let caDirectory: String
    let mitmPort: Int
    var caCertificate: String { caDirectory + "/llmtap-ca.pem" }
    var proxy: String { "http://127.0.0.1:\(mitmPort)" }
    var upstreamURL: String { "https://localhost:\(harness.mockPort)" }

    /// `allowlisted` decides whether localhost is decrypted.
    static func start(allowlisted: Bool = true, extra: [String] = []) throws -> MITMProxySetup {
        let pki = try TestPKI.make()
        let caDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-ca-\(UUID().uuidString)"
        ).path
        let mockPort = try freeTCPPort()
        let mitmPort = try freeTCPPort()
        let harness = try ProxyHarness(
            sidecarArguments: [
                "--mode", "both", "--mitm-listen", "127.0.0.1:\(mitmPort)", "--ca-dir", caDirectory,
                "--allowlist", allowlisted ? "localhost,api.openai.com" : "api.openai.com",
                "--mitm-ports", "443,\(mockPort)", "--upstream-ca-file", pki.caCertificate,
            ] + extra,
            mockArguments: ["--tls-cert", pki.serverCertificate, "--tls-key", pki.serverKey],
            fixedMockPort: mockPort
        )
        XCTAssertTrue(eventually { harness.sidecar.stderr.contains("MITM listener ready") }, harness.sidecar.stderr)
        return MITMProxySetup(harness: harness, pki: pki, caDirectory: caDirectory, mitmPort: mitmPort)
    }
}
