import Foundation
import TestSupport
import Wire
import XCTest

extension XCTestCase {
    /// A folder for one test's files, removed when the test ends.
    func makeFolder() throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-gw-\(UUID())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        return folder
    }

    /// A self-signed certificate for `localhost`, and its key, in PEM files in `folder`.
    func makeCertificate(in folder: URL, name: String = "tls") throws -> (cert: String, key: String) {
        let (cert, key) = (
            folder.appendingPathComponent("\(name).crt").path, folder.appendingPathComponent("\(name).key").path
        )
        let openssl = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/openssl"),
            arguments: [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost", "-days", "1",
            ])
        guard openssl.waitForExit() == 0 else { throw TestFailure("openssl req: \(openssl.stderr)") }
        return (cert, key)
    }

    /// A gateway serving HTTPS (with `makeCertificate`'s certificate) and plain HTTP, both on
    /// loopback, to one OpenAI provider at `port`; `llmtap` adds to its `llmtap:` section.
    func startHTTPSGateway(to port: Int, in folder: URL, llmtap: String = "") throws -> (
        sidecar: RunningProcess, httpsPort: Int, httpPort: Int, cert: String
    ) {
        let (cert, key) = try makeCertificate(in: folder)
        let (httpsPort, httpPort) = (try freeTCPPort(), try freeTCPPort())
        let (sidecar, _) = try startGateway(
            """
            https_port: \(httpsPort)
            https_bind_address: 127.0.0.1
            http_port: \(httpPort)
            http_bind_address: 127.0.0.1
            cert_file: \(cert)
            private_key_file: \(key)
            providers:
              - {type: openai, endpoint: 127.0.0.1, port: \(port), tls: false, api_key: sk-o}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"\(llmtap.isEmpty ? "" : ", " + llmtap)}
            """, in: folder)
        return (sidecar, httpsPort, httpPort, cert)
    }

    /// llmtap-sidecar started with `yaml` as its configuration file (in `folder`), once its plain
    /// listener is ready; the caller stops it. Returns it and the file's path.
    func startGateway(
        _ yaml: String, in folder: URL, arguments: [String] = [], environment: [String: String] = [:],
        ready: String = "reverse listener ready"
    ) throws -> (sidecar: RunningProcess, config: String) {
        let config = folder.appendingPathComponent("sidecar.yml").path
        try yaml.write(toFile: config, atomically: true, encoding: .utf8)
        let sidecar = try RunningProcess(
            product: "llmtap-sidecar", arguments: ["--config", config] + arguments, environment: environment)
        guard eventually({ sidecar.stderr.contains(ready) || !sidecar.process.isRunning }), sidecar.process.isRunning
        else { throw TestFailure("the sidecar did not start: \(sidecar.stderr)") }
        return (sidecar, config)
    }
}

/// The sidecar started with a configuration of several providers (each a real
/// llmtap-mock-upstream), driven with curl: routed by Host and by path prefix, each provider's key
/// in its place, and no key on the wire.
final class GatewayRoutingTests: XCTestCase {
    typealias Mock = MockProvider

    /// `retries: 0`: a provider that can't be reached is the request's 502, and nothing is retried.
    func testWithoutRetriesAnUnreachableProviderIsA502() throws {
        let fallback = try Mock()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: primary, type: openai, endpoint: 127.0.0.1, port: \(try freeTCPPort()), tls: false, retries: 0}
              - {name: spare, type: openai, endpoint: 127.0.0.1, port: \(fallback.port), tls: false, is_fallback: true}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            fallback.process.signal(SIGTERM)
        }
        XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 502)
        XCTAssertFalse(sidecar.stderr.contains("retrying"), sidecar.stderr)
        XCTAssertTrue(fallback.requests.isEmpty)
    }

    /// Passive health: a primary that fails is out for a cool-down and its fallback serves; once
    /// the primary answers again it takes its route back.
    func testAFailingPrimaryGivesWayToItsFallbackAndComesBack() throws {
        let fallback = try Mock()
        let primaryPort = try freeTCPPort()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: primary, type: openai, endpoint: 127.0.0.1, port: \(primaryPort), tls: false, api_key: sk-p}
              - {name: spare, type: openai, endpoint: 127.0.0.1, port: \(fallback.port), tls: false, api_key: sk-s, is_fallback: true}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())", connect_timeout: 2}
            """, in: folder)
        var primary: Mock?
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            fallback.process.signal(SIGTERM)
            primary?.process.signal(SIGTERM)
        }
        func status() throws -> Int { try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status }
        XCTAssertEqual(
            try status(), 200, "nothing listens where the primary is: none of the request got there, so it is retried")
        XCTAssertTrue(sidecar.stderr.contains("retrying on another provider"), sidecar.stderr)
        XCTAssertTrue(sidecar.stderr.contains("provider out after a failure"), sidecar.stderr)
        XCTAssertTrue(sidecar.stderr.contains("provider=primary"), sidecar.stderr)
        for _ in 0..<3 { XCTAssertEqual(try status(), 200, "the fallback serves while the primary is out") }
        XCTAssertEqual(fallback.requests.count, 4)

        primary = try Mock(port: primaryPort)
        // Its cool-down over (1 s, then 2 s after a second failure), the next request tries it.
        XCTAssertTrue(
            eventually(timeout: .seconds(10)) {
                _ = try? status()
                return (primary?.requests.count ?? 0) > 0
            })
        XCTAssertTrue(eventually { sidecar.stderr.contains("provider back") }, sidecar.stderr)
        let before = fallback.requests.count
        for _ in 0..<3 { XCTAssertEqual(try status(), 200) }
        XCTAssertEqual(fallback.requests.count, before, "the primary has its route back")
    }

    /// Active health checks: each provider's probe, with its key, every interval; a provider that
    /// stops answering is out within an interval with no client request, and back once it answers.
    func testHealthChecksTakeADeadProviderOutAndBringItBack() throws {
        var primary = try Mock()
        let fallback = try Mock()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            health_check: {enabled: true, interval: 0.3}
            providers:
              - name: primary
                type: openai
                endpoint: 127.0.0.1
                port: \(primary.port)
                tls: false
                api_key: sk-probe-key
                health_check: {method: GET, path: /v1/models, headers: {x-probe: "1"}}
              - {name: spare, type: openai, endpoint: 127.0.0.1, port: \(fallback.port), tls: false, is_fallback: true}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            fallback.process.signal(SIGTERM)
            primary.process.signal(SIGTERM)
        }
        XCTAssertTrue(eventually { primary.requests.count >= 2 }, sidecar.stderr)
        let probe = try XCTUnwrap(primary.requests.first)
        XCTAssertEqual(probe.path, "/v1/models")
        XCTAssertEqual(probe.headers["authorization"], "Bearer sk-probe-key")
        XCTAssertEqual(probe.headers["x-probe"], "1")
        XCTAssertEqual(probe.headers["user-agent"], "llmtap-sidecar health check")
        XCTAssertTrue(fallback.requests.isEmpty, "a fallback without a probe is not checked")

        primary.process.signal(SIGKILL)
        _ = primary.process.waitForExit()
        XCTAssertTrue(
            eventually(timeout: .seconds(5)) { sidecar.stderr.contains("provider out after a failure") }, sidecar.stderr
        )
        XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 200)
        XCTAssertEqual(fallback.requests.count, 1, "the fallback serves while the primary is out")

        primary = try Mock(port: primary.port)
        XCTAssertTrue(eventually(timeout: .seconds(10)) { sidecar.stderr.contains("provider back") }, sidecar.stderr)
        XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 200)
        XCTAssertEqual(fallback.requests.count, 1, "the primary serves again")
    }

    /// `https_port` serves TLS 1.2 and 1.3 itself (ALPN h2 and http/1.1: HTTP2ClientTests), beside the plain `http_port`.
    func testTheSidecarServesHTTPSWithItsOwnCertificate() throws {
        let mock = try Mock()
        let folder = try makeFolder()
        let (sidecar, httpsPort, httpPort, cert) = try startHTTPSGateway(to: mock.port, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            mock.process.signal(SIGTERM)
        }
        XCTAssertTrue(
            eventually {
                sidecar.stderr.contains("https listener ready") && sidecar.stderr.contains("reverse listener ready")
            },
            sidecar.stderr)
        let overTLS = try curlWithStatus([
            "-s", "--cacert", cert, "--resolve", "localhost:\(httpsPort):127.0.0.1",
            "https://localhost:\(httpsPort)/v1/models",
        ])
        XCTAssertEqual(overTLS.status, 200, String(decoding: overTLS.body, as: UTF8.self))
        XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(httpPort)/v1/models"]).status, 200)
        let untrusted = try curlWithStatus(["-s", "https://127.0.0.1:\(httpsPort)/v1/models"])
        XCTAssertNotEqual(untrusted.exitCode, 0, "a client that does not trust the certificate is refused by itself")
        for version in ["-tls1_3", "-tls1_2"] {
            let handshake = try RunningProcess(
                executable: URL(fileURLWithPath: "/usr/bin/openssl"),
                arguments: [
                    "s_client", "-connect", "127.0.0.1:\(httpsPort)", "-servername", "localhost", "-alpn", "http/1.1",
                    version, "-CAfile", cert,
                ], stdinText: "")
            XCTAssertEqual(handshake.waitForExit(), 0, handshake.stderr)
            XCTAssertTrue(handshake.stdout.contains("ALPN protocol: http/1.1"), handshake.stdout)
            XCTAssertTrue(handshake.stdout.contains("Verify return code: 0 (ok)"), handshake.stdout)
            XCTAssertTrue(handshake.stdout.contains(version == "-tls1_3" ? "TLSv1.3" : "TLSv1.2"), handshake.stdout)
        }
        XCTAssertEqual(mock.requests.count, 2, "both listeners route to the provider")

        // A rotated certificate, the same files: SIGHUP, and the next handshake shows it.
        let (oldCert, newCert) = (folder.appendingPathComponent("old.crt").path, cert)
        try FileManager.default.copyItem(atPath: cert, toPath: oldCert)
        _ = try makeCertificate(in: folder)
        sidecar.signal(SIGHUP)
        XCTAssertTrue(eventually { sidecar.stderr.contains("configuration reloaded") }, sidecar.stderr)
        func trusted(_ caFile: String) throws -> Int {
            try curlWithStatus([
                "-s", "--cacert", caFile, "--resolve", "localhost:\(httpsPort):127.0.0.1",
                "https://localhost:\(httpsPort)/v1/models",
            ]).status
        }
        XCTAssertEqual(try trusted(newCert), 200, "the new certificate serves")
        XCTAssertEqual(try trusted(oldCert), 0, "the old one is gone")
    }

    /// A connection past `--max-connections` on the HTTPS listener gets its 503 over TLS, as the
    /// client speaks there (the limit counts the connections of every listener).
    func testAnHTTPSConnectionPastTheLimitGets503OverTLS() throws {
        let mock = try Mock()
        let folder = try makeFolder()
        let (sidecar, httpsPort, httpPort, cert) = try startHTTPSGateway(
            to: mock.port, in: folder, llmtap: "max_connections: 2")
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            mock.process.signal(SIGTERM)
        }
        XCTAssertTrue(eventually { sidecar.stderr.contains("https listener ready") }, sidecar.stderr)
        let https = [
            "-s", "--cacert", cert, "--resolve", "localhost:\(httpsPort):127.0.0.1",
            "https://localhost:\(httpsPort)/v1/models",
        ]
        let held = try (0..<2).map { _ in try connectTCP(port: httpPort) }
        Thread.sleep(forTimeInterval: 0.3)
        let refused = try curlWithStatus(https)
        XCTAssertEqual(refused.exitCode, 0, "a TLS handshake, then an answer")
        XCTAssertEqual(refused.status, 503)
        XCTAssertTrue(String(decoding: refused.body, as: UTF8.self).contains("too_many_connections"))
        for fd in held { close(fd) }
        XCTAssertTrue(eventually { (try? curlWithStatus(https).status) == 200 }, sidecar.stderr)
        XCTAssertTrue(sidecar.stderr.contains("listener=https"), sidecar.stderr)
    }

    /// Client keys: one of them in any credential header, or 401; a route's own keys only there.
    func testRoutesWithClientKeysRefuseEveryOtherKey() throws {
        let openai = try Mock()
        let anthropic = try Mock()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            auth_keys: ["team-key-1"]
            providers:
              - {type: openai, host: openai.local, endpoint: 127.0.0.1, port: \(openai.port), tls: false, api_key: sk-o}
              - type: anthropic
                host: claude.local
                endpoint: 127.0.0.1
                port: \(anthropic.port)
                tls: false
                api_key: sk-a
                auth_keys: ["claude-only-key"]
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            for mock in [openai, anthropic] { mock.process.signal(SIGTERM) }
        }
        func status(_ host: String, _ headers: [String]) throws -> Int {
            try curlWithStatus(
                ["-s", "-H", "Host: \(host)", "-H", "Content-Type: application/json"] + headers.flatMap { ["-H", $0] }
                    + ["-d", "{}", "http://127.0.0.1:\(port)/v1/chat/completions"]
            ).status
        }
        XCTAssertEqual(try status("openai.local", []), 401, "no key")
        XCTAssertEqual(try status("openai.local", ["Authorization: Bearer team-key-2"]), 401, "a wrong key")
        XCTAssertEqual(
            try status("openai.local", ["Authorization: Bearer claude-only-key"]), 401, "another route's key")
        XCTAssertEqual(try status("openai.local", ["Authorization: Bearer team-key-1"]), 200)
        XCTAssertEqual(try status("claude.local", ["x-api-key: team-key-1"]), 200, "the file's keys serve every route")
        XCTAssertEqual(try status("claude.local", ["Authorization: Bearer claude-only-key"]), 200, "either header")
        XCTAssertEqual(try status("claude.local", ["x-api-key: nope"]), 401)
        XCTAssertEqual(openai.requests.map { $0.headers["authorization"] }, ["Bearer sk-o"], "only the good one went")
        XCTAssertEqual(anthropic.requests.map { $0.headers["x-api-key"] }, ["sk-a", "sk-a"])
        for key in ["team-key-1", "claude-only-key", "sk-o", "sk-a"] {
            XCTAssertFalse(sidecar.stderr.contains(key), "\(key) is in the log")
        }
    }

    func testRequestsGoWhereTheirRouteSaysWithTheProvidersKey() throws {
        let openai = try Mock()
        let anthropic = try Mock()
        let collector = try RawFrameCollector()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - name: openai-mock
                type: openai
                host: "openai.local"
                endpoint: 127.0.0.1
                port: \(openai.port)
                tls: false
                api_key: "env:GATEWAY_OPENAI_KEY"
              - name: claude-mock
                type: anthropic
                path_prefix: /anthropic
                endpoint: 127.0.0.1
                port: \(anthropic.port)
                tls: false
                api_key: "sk-ant-provider-secret"
            llmtap:
              collector: \(collector.endpoint)
              threads: 2
            """, in: folder, environment: ["GATEWAY_OPENAI_KEY": "sk-openai-provider-secret"])
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            for mock in [openai, anthropic] { mock.process.signal(SIGTERM) }
            collector.stop()
        }
        XCTAssertTrue(sidecar.stderr.contains("openai-mock=http://127.0.0.1:\(openai.port)"), sidecar.stderr)

        let base = "http://127.0.0.1:\(port)"
        let chat = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#
        let (_, openaiStatus, openaiBody, _) = try curlWithStatus([
            "-s", "-H", "Host: openai.local", "-H", "Authorization: Bearer client-key-not-for-upstream",
            "-H", "Content-Type: application/json", "-d", chat, "\(base)/v1/chat/completions",
        ])
        XCTAssertEqual(openaiStatus, 200, String(decoding: openaiBody, as: UTF8.self))
        XCTAssertTrue(String(decoding: openaiBody, as: UTF8.self).contains("chat.completion"))

        let message =
            #"{"model":"claude-sonnet-4-5","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#
        let (_, claudeStatus, claudeBody, _) = try curlWithStatus([
            "-s", "-N", "-H", "x-api-key: client-key-not-for-upstream", "-H", "Content-Type: application/json",
            "-d", message, "\(base)/anthropic/v1/messages",
        ])
        XCTAssertEqual(claudeStatus, 200, String(decoding: claudeBody, as: UTF8.self))
        XCTAssertTrue(String(decoding: claudeBody, as: UTF8.self).contains("message_stop"), "streamed through")

        let (_, missStatus, missBody, _) = try curlWithStatus([
            "-s", "-H", "Host: nobody.local", "-d", chat, "\(base)/v1/chat/completions",
        ])
        XCTAssertEqual(missStatus, 404)
        XCTAssertTrue(
            String(decoding: missBody, as: UTF8.self).contains(
                "no provider is configured for host nobody.local and path /v1/chat/completions"),
            String(decoding: missBody, as: UTF8.self))

        XCTAssertTrue(eventually { openai.requests.count == 1 && anthropic.requests.count == 1 })
        let toOpenAI = try XCTUnwrap(openai.requests.first)
        XCTAssertEqual(toOpenAI.path, "/v1/chat/completions")
        XCTAssertEqual(toOpenAI.headers["authorization"], "Bearer sk-openai-provider-secret")
        XCTAssertEqual(toOpenAI.headers["host"], "127.0.0.1:\(openai.port)")
        let toAnthropic = try XCTUnwrap(anthropic.requests.first)
        XCTAssertEqual(toAnthropic.path, "/v1/messages", "sent without its prefix")
        XCTAssertEqual(toAnthropic.headers["x-api-key"], "sk-ant-provider-secret")
        XCTAssertEqual(toAnthropic.headers["anthropic-version"], "2023-06-01", "added when the client sent none")

        // Every exchange is tapped (the refused one too), and no key of either side is on the wire.
        XCTAssertTrue(
            eventually {
                collector.envelopes.filter {
                    if case .responseDone = $0.record { true } else { false }
                }.count == 3
            })
        let wire = collector.rawFrames.flatMap { $0 }
        for secret in ["sk-openai-provider-secret", "sk-ant-provider-secret", "client-key-not-for-upstream"] {
            XCTAssertNil(
                String(decoding: wire, as: UTF8.self).range(of: secret), "\(secret) reached the collector's wire")
            XCTAssertFalse(sidecar.stderr.contains(secret), "\(secret) is in the sidecar's log")
        }
    }

    /// SIGHUP under load: every request answered, the new weights in effect at once, and a file
    /// that can't be used refused while the one before it keeps serving.
    /// `retry_on`: a provider's 429 sends a request (its body held, up to 64 KiB) to the route's
    /// next provider before any of the answer reaches the client; a larger body gets the 429.
    func testAStatusInRetryOnSendsTheHeldRequestToTheNextProvider() throws {
        let busy = try Mock(arguments: ["--status", "429"])
        let spare = try Mock()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: busy, type: openai, endpoint: 127.0.0.1, port: \(busy.port), tls: false, weight: 1000, retry_on: [429], api_key: sk-busy}
              - {name: spare, type: openai, endpoint: 127.0.0.1, port: \(spare.port), tls: false, weight: 1, api_key: sk-spare}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            for mock in [busy, spare] { mock.process.signal(SIGTERM) }
        }
        func chat(_ content: String, stream: Bool = false) throws -> (status: Int, body: String) {
            let body =
                #"{"model":"gpt-4o-mini","stream":\#(stream),"messages":[{"role":"user","content":"\#(content)"}]}"#
            let result = try curlWithStatus([
                "-s", "http://127.0.0.1:\(port)/v1/chat/completions", "-H", "content-type: application/json",
                "-d", body,
            ])
            return (result.status, String(decoding: result.body, as: UTF8.self))
        }
        let small = String(repeating: "a", count: 20_000)
        let (status, body) = try chat(small)
        XCTAssertEqual(status, 200, body)
        XCTAssertEqual(busy.requests.count, 1, "busy had it first")
        XCTAssertEqual(spare.requests.count, 1, "and spare got it again, whole")
        XCTAssertEqual(spare.requests.last?.headers["authorization"], "Bearer sk-spare")
        XCTAssertTrue(sidecar.stderr.contains("the first answered a status its retry_on lists"), sidecar.stderr)
        // Streamed too: nothing of busy's answer went out, so spare's stream is the client's.
        let streamed = try chat("hi", stream: true)
        XCTAssertEqual(streamed.status, 200)
        XCTAssertTrue(streamed.body.contains("data: [DONE]"), streamed.body)
        XCTAssertFalse(streamed.body.contains("mock error 429"), streamed.body)
        // Past 64 KiB the body is not held: busy's 429 is the answer.
        let large = try chat(String(repeating: "b", count: 70_000))
        XCTAssertEqual(large.status, 429, large.body)
        XCTAssertEqual(spare.requests.count, 2)
    }

    /// An upstream that drops a pooled keep-alive connection as a request comes: the request goes
    /// again on a new connection to the same provider, and the client never sees the break.
    func testARequestOnAPooledConnectionThatBrokeGoesAgainOnANewOne() throws {
        let flaky = try Mock(arguments: ["--requests-per-connection", "1"])
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: flaky, type: openai, endpoint: 127.0.0.1, port: \(flaky.port), tls: false, api_key: sk-f}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            flaky.process.signal(SIGTERM)
        }
        for index in 0..<20 {
            let result = try curlWithStatus([
                "-s", "http://127.0.0.1:\(port)/v1/chat/completions", "-H", "content-type: application/json",
                "-d", #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"n\#(index)"}]}"#,
            ])
            XCTAssertEqual(result.status, 200, "request \(index): \(String(decoding: result.body, as: UTF8.self))")
        }
        XCTAssertEqual(flaky.requests.count, 20, "each answered once")
        XCTAssertTrue(
            sidecar.stderr.contains("a pooled upstream connection broke before answering"), sidecar.stderr)
    }

    func testSIGHUPReloadsUnderLoadWithoutAFailedRequest() throws {
        let (a, b) = (try Mock(), try Mock())
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let config = folder.appendingPathComponent("sidecar.yml").path
        func write(weights: (Int, Int), extra: String = "") throws {
            try """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: a, type: openai, endpoint: 127.0.0.1, port: \(a.port), tls: false, weight: \(weights.0), api_key: sk-a}
              - {name: b, type: openai, endpoint: 127.0.0.1, port: \(b.port), tls: false, weight: \(weights.1), api_key: sk-b}
            \(extra)
            """.write(toFile: config, atomically: true, encoding: .utf8)
        }
        try write(weights: (3, 1))
        let sidecar = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: ["--config", config, "--collector", "tcp://127.0.0.1:\(try freeTCPPort())"])
        XCTAssertTrue(eventually { sidecar.stderr.contains("reverse listener ready") }, sidecar.stderr)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            for mock in [a, b] { mock.process.signal(SIGTERM) }
        }

        let bench = try startBench(port: port, requests: 10000, concurrency: 32, in: folder)
        var reloads = 0
        while bench.process.isRunning && reloads < 10 {
            usleep(1_000_000)
            reloads += 1
            try write(weights: reloads % 2 == 0 ? (3, 1) : (1, 3))
            sidecar.signal(SIGHUP)
        }
        XCTAssertEqual(bench.waitForExit(timeout: .seconds(120)), 0, bench.stderr)
        let report = try benchReport(of: bench)
        XCTAssertEqual(report["errors"] as? Int, 0, "\(report)")
        XCTAssertGreaterThanOrEqual(reloads, 3, "the load lasted long enough to reload under it")
        XCTAssertTrue(
            eventually { sidecar.stderr.components(separatedBy: "configuration reloaded").count - 1 >= reloads },
            sidecar.stderr)

        // The new weights take effect at once: all of the next 100 by 1 to 99 but one.
        try write(weights: (1, 99))
        sidecar.signal(SIGHUP)
        XCTAssertTrue(
            eventually { sidecar.stderr.components(separatedBy: "configuration reloaded").count - 1 > reloads })
        let (aBefore, bBefore) = (a.requests.count, b.requests.count)
        for _ in 0..<100 {
            XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 200)
        }
        XCTAssertEqual(a.requests.count - aBefore, 1)
        XCTAssertEqual(b.requests.count - bBefore, 99)

        // A file that can't be used: refused, and the one before keeps serving.
        try write(weights: (1, 99), extra: "provders: []")
        sidecar.signal(SIGHUP)
        XCTAssertTrue(eventually { sidecar.stderr.contains("configuration reload refused") }, sidecar.stderr)
        XCTAssertTrue(sidecar.stderr.contains("unknown key \"provders\""), sidecar.stderr)
        for _ in 0..<100 {
            XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 200)
        }
        XCTAssertEqual(b.requests.count - bBefore, 198, "the weights before the refused file")
        XCTAssertTrue(sidecar.process.isRunning)
    }
}

/// `connect_tunnel_enabled`: the gateway's listener also opens blind CONNECT tunnels, to
/// --mitm-ports only, and with `auth_keys` only for a client key in `Proxy-Authorization`.
final class GatewayTunnelTests: XCTestCase {
    func testConnectTunnelsNeedTheSettingAnAllowedPortAndAClientKey() throws {
        let mock = try MockProvider()
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let yaml = """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            auth_keys: [team-tunnel-key]
            connect_tunnel_enabled: true
            providers:
              - {name: p, type: openai, endpoint: 127.0.0.1, port: \(mock.port), tls: false, api_key: sk-p}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """
        let (sidecar, config) = try startGateway(yaml, in: folder, arguments: ["--mitm-ports", "\(mock.port)"])
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            mock.process.signal(SIGTERM)
        }
        let target = "http://127.0.0.1:\(mock.port)/v1/models"
        // Through the tunnel: the mock itself answers (no credential swap: the tunnel is blind).
        let tunnelled = try curlWithStatus(["-s", "-p", "-x", "http://me:team-tunnel-key@127.0.0.1:\(port)", target])
        XCTAssertEqual(tunnelled.status, 200)
        XCTAssertTrue(String(decoding: tunnelled.body, as: UTF8.self).contains("gpt-4o-mini"))
        let bearer = try curlWithStatus([
            "-s", "-p", "-x", "http://127.0.0.1:\(port)", "--proxy-header",
            "Proxy-Authorization: Bearer team-tunnel-key",
            target,
        ])
        XCTAssertEqual(bearer.status, 200)
        // No key, a wrong key: 407 with its challenge; another port: 403.
        for proxy in ["http://127.0.0.1:\(port)", "http://me:wrong@127.0.0.1:\(port)"] {
            let refused = try curlWithStatus([
                "-s", "-p", "-x", proxy, target,
            ])
            XCTAssertEqual(refused.status, 407, proxy)
        }
        let elsewhere = try curlWithStatus([
            "-s", "-p", "-x", "http://me:team-tunnel-key@127.0.0.1:\(port)",
            "http://127.0.0.1:\(try freeTCPPort())/",
        ])
        XCTAssertEqual(elsewhere.status, 403)
        XCTAssertTrue(sidecar.stderr.contains("CONNECT to 127.0.0.1:\(mock.port) without a client key"), sidecar.stderr)
        XCTAssertFalse(sidecar.stderr.contains("team-tunnel-key"))
        // The same listener still routes the gateway's own requests.
        let routed = try curlWithStatus([
            "-s", "-H", "authorization: Bearer team-tunnel-key", "http://127.0.0.1:\(port)/v1/models",
        ])
        XCTAssertEqual(routed.status, 200)
        XCTAssertEqual(mock.requests.last?.headers["authorization"], "Bearer sk-p")

        // Without the setting, a CONNECT is no tunnel.
        sidecar.signal(SIGTERM)
        _ = sidecar.waitForExit()
        try yaml.replacingOccurrences(of: "connect_tunnel_enabled: true", with: "connect_tunnel_enabled: false")
            .write(toFile: config, atomically: true, encoding: .utf8)
        let plain = try RunningProcess(
            product: "llmtap-sidecar", arguments: ["--config", config, "--mitm-ports", "\(mock.port)"])
        defer {
            plain.signal(SIGTERM)
            _ = plain.waitForExit()
        }
        XCTAssertTrue(eventually { plain.stderr.contains("reverse listener ready") }, plain.stderr)
        let closed = try curlWithStatus([
            "-s", "-p", "-x", "http://me:team-tunnel-key@127.0.0.1:\(port)",
            target,
        ])
        XCTAssertNotEqual(closed.status, 200)
    }
}
