import Foundation
import XCTest

@testable import Sidecar

/// The gateway's configuration file, read without starting anything: what a good file gives, and
/// what each bad one is told, with its line.
final class GatewayConfigTests: XCTestCase {
    let environment = ["OPENAI_KEY_A": "sk-a", "OPENAI_KEY_B": "sk-b", "BACKUP_KEY": "sk-backup"]

    func parse(_ yaml: String, environment: [String: String]? = nil) -> (GatewayConfig?, [ConfigProblem]) {
        var parser = GatewayConfigParser(environment: environment ?? self.environment)
        let config = parser.parse(yaml)
        return (config, parser.problems)
    }

    /// The problems of `yaml`, as lines "LINE: message".
    func problems(_ yaml: String, environment: [String: String]? = nil) -> [String] {
        parse(yaml, environment: environment).1.map { "\($0.line ?? 0): \($0.message)" }
    }

    func testOpenproxysExampleReadsUnchanged() throws {
        let (config, problems) = parse(
            """
            http_port: 8080
            auth_keys: ["team-key-1"]
            health_check: {enabled: true, interval: 30}
            providers:
              - type: openai
                host: "localhost:8080"
                endpoint: api.openai.com
                api_keys: [{key: "env:OPENAI_KEY_A", weight: 1}, {key: "env:OPENAI_KEY_B", weight: 2}]
                health_check: {method: GET, path: /v1/models}
              - type: openai
                host: "localhost:8080"
                endpoint: backup.example.net
                api_key: "env:BACKUP_KEY"
                is_fallback: true
            """)
        XCTAssertEqual(problems, [])
        let file = try XCTUnwrap(config)
        XCTAssertEqual(file.httpPort, 8080)
        XCTAssertEqual(file.authKeys, [.literal("team-key-1")])
        XCTAssertEqual(file.healthCheck, .init(enabled: true, intervalSeconds: 30))
        XCTAssertEqual(file.providers.map(\.name), ["openai:api.openai.com", "openai:backup.example.net"])
        let primary = file.providers[0]
        XCTAssertEqual(primary.host, "localhost:8080")
        XCTAssertEqual([primary.port, primary.retries], [443, 1])
        XCTAssertTrue(primary.tls)
        XCTAssertFalse(primary.isFallback)
        XCTAssertEqual(
            primary.keys,
            [
                .init(source: .environment("OPENAI_KEY_A"), weight: 1),
                .init(source: .environment("OPENAI_KEY_B"), weight: 2),
            ])
        XCTAssertEqual(primary.probe, HealthProbe(method: "GET", path: "/v1/models"))
        XCTAssertTrue(file.providers[1].isFallback)
        XCTAssertEqual(file.providers[1].keys, [.init(source: .environment("BACKUP_KEY"), weight: 1)])
        XCTAssertEqual(file.settings["LISTEN_ADDR"]?.value, "0.0.0.0:8080", "http_port is the HTTP listener")
    }

    func testLLMTapsAdditionsSitBesideThem() throws {
        let (config, problems) = parse(
            """
            http_port: 3000
            http_bind_address: "127.0.0.1"
            http_max_header_size: 8192
            providers:
              - name: claude
                type: anthropic
                path_prefix: /anthropic
                endpoint: api.anthropic.com
                api_key: "$(print-token --fresh)"
                refresh_interval: 600
                retries: 2
                retry_on: [429, 503]
              - type: forward
                endpoint: 127.0.0.1
                port: 8081
                tls: false
                weight: 0.5
            llmtap:
              collector: tcp://ops:7101
              app: checkout
              allowlist: [api.openai.com, "*.anthropic.com"]
              require_virtual_key: true
            """)
        XCTAssertEqual(problems, [])
        let file = try XCTUnwrap(config)
        let claude = file.providers[0]
        XCTAssertEqual(claude.name, "claude")
        XCTAssertEqual(claude.pathPrefix, "/anthropic")
        XCTAssertEqual(claude.keys.map(\.source), [.command("print-token --fresh")])
        XCTAssertEqual(claude.refreshIntervalSeconds, 600)
        XCTAssertEqual(claude.retries, 2)
        XCTAssertEqual(claude.retryOn, [429, 503])
        let local = file.providers[1]
        XCTAssertEqual(local.name, "forward:127.0.0.1")
        XCTAssertEqual([local.port, local.weight == 0.5 ? 1 : 0], [8081, 1])
        XCTAssertFalse(local.tls)
        XCTAssertEqual(
            file.settings.mapValues(\.value),
            [
                "LLMTAP_COLLECTOR": "tcp://ops:7101", "LLMTAP_APP": "checkout",
                "LLMTAP_ALLOWLIST": "api.openai.com,*.anthropic.com", "LLMTAP_REQUIRE_VIRTUAL_KEY": "true",
                "LISTEN_ADDR": "127.0.0.1:3000", "LLMTAP_MAX_HEADER_BYTES": "8192",
            ])
        XCTAssertEqual(file.settings["LLMTAP_COLLECTOR"]?.key, "llmtap.collector")
        XCTAssertEqual(file.settings["LLMTAP_COLLECTOR"]?.line, 19)
    }

    func testKeySources() {
        XCTAssertEqual(KeySource("sk-1"), .literal("sk-1"))
        XCTAssertEqual(KeySource("env:KEY"), .environment("KEY"))
        XCTAssertEqual(KeySource("file:/run/secrets/key"), .file("/run/secrets/key"))
        XCTAssertEqual(KeySource("$(gcloud auth print-access-token)"), .command("gcloud auth print-access-token"))
        XCTAssertEqual(KeySource("$()"), .literal("$()"))
        XCTAssertFalse("\(KeySource("sk-1"))".contains("sk-1"), "a key's description never holds it")
    }

    func testEachBadFileIsToldWhatAndWhere() throws {
        XCTAssertEqual(
            problems("http_port: 80\nproviders: [\n"),
            ["3: not valid YAML: while parsing a flow node did not find expected node content (column 1)"])
        XCTAssertEqual(
            problems("http_port: 80\nprovders: []\n"),
            ["2: unknown key \"provders\" at the top level (did you mean \"providers\"?)"])
        XCTAssertEqual(
            problems("providers:\n  - type: openai\n    endpont: api.openai.com\n"),
            [
                "3: unknown key \"endpont\" in provider 1 (did you mean \"endpoint\"?)",
                "2: provider 1 has no endpoint (the host it really is at, such as api.openai.com)",
            ])
        XCTAssertEqual(
            problems("providers:\n  - {type: openai, endpoint: a.example, weight: 0}\n"),
            ["2: provider 1: weight must be above 0, not 0.0"])
        XCTAssertEqual(
            problems("providers:\n  - type: openai\n    endpoint: a.example\n    api_keys: [{key: k1, weight: -1}]\n"),
            ["4: provider 1: a key's weight must be above 0, not -1.0"])
        XCTAssertEqual(
            problems(
                "providers:\n  - {name: main, type: openai, endpoint: a.example}\n  - {name: main, type: openai, endpoint: b.example}\n"
            ),
            ["3: two providers are named \"main\" (the first at line 2): names must be unique"])
        XCTAssertEqual(problems("https_port: 8443\n"), ["1: https_port needs cert_file and private_key_file (PEM)"])
        XCTAssertEqual(
            problems("providers:\n  - {type: openai, endpoint: a.example, api_key: \"env:NOT_SET_ANYWHERE\"}\n"),
            ["2: env:NOT_SET_ANYWHERE is not set"])
        XCTAssertEqual(
            problems("providers:\n  - {type: cohere, endpoint: a.example}\n"),
            ["2: provider 1: type must be one of openai, anthropic, gemini, forward, not \"cohere\""])
        XCTAssertEqual(
            problems("providers:\n  - {type: openai, endpoint: a.example, retry_on: [500]}\n"),
            ["2: provider 1: retry_on takes 429, 502, 503 and 504, not 500"])
        XCTAssertEqual(problems("http_port: 80\nhttp_port: 81\n"), ["1: a key is given twice: http_port"])
        XCTAssertEqual(
            problems("http_port: eighty\n"), ["1: http_port must be a whole number from 1 to 65535, not \"eighty\""])
        XCTAssertEqual(
            problems("llmtap:\n  colector: tcp://x:1\n"),
            ["2: unknown key \"colector\" in llmtap (did you mean \"collector\"?)"])
        XCTAssertEqual(
            problems("http_port: 80\nllmtap: {listen: \"0.0.0.0:3000\"}\n"),
            ["1: http_port and llmtap.listen both set the HTTP listener: give one"])
        XCTAssertEqual(
            problems("providers:\n  - {type: forward, endpoint: a.example, api_key: k}\n"),
            ["2: provider 1 is a forward provider: it passes the client's credential and takes no api_key"])
    }

    func testNoProblemRepeatsAKey() {
        let secret = "sk-live-do-not-print-0123456789"
        for yaml in [
            "providers:\n  - {type: openai, endpoint: a.example, api_key: \"\(secret)\n",
            "providers:\n  - {type: openai, endpoint: a.example, api_key: [\(secret)]}\n",
            "auth_keys: \(secret)\n",
            "providers:\n  - {type: openai, endpoint: a.example, weight: 0, api_key: \(secret), bogus: \(secret)}\n",
        ] {
            let found = problems(yaml)
            XCTAssertFalse(found.isEmpty, yaml)
            for problem in found { XCTAssertFalse(problem.contains(secret), problem) }
        }
    }

    func testAKeyFileMustBeItsCertificates() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-config-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func pair(_ name: String) throws -> (cert: String, key: String) {
            let cert = directory.path + "/\(name).crt"
            let key = directory.path + "/\(name).key"
            try run(
                "/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", cert, "-subj", "/CN=\(name)", "-days", "1")
            return (cert, key)
        }
        let first = try pair("first")
        let second = try pair("second")
        XCTAssertEqual(problems("https_port: 8443\ncert_file: \(first.cert)\nprivate_key_file: \(first.key)\n"), [])
        XCTAssertEqual(
            problems("https_port: 8443\ncert_file: \(first.cert)\nprivate_key_file: \(second.key)\n"),
            ["3: private_key_file \(second.key) is not the key of cert_file \(first.cert)"])
        XCTAssertEqual(
            problems("https_port: 8443\ncert_file: \(first.key)\nprivate_key_file: \(first.key)\n").first?.hasPrefix(
                "2: cert_file \(first.key) is not a PEM certificate"),
            true)
        XCTAssertEqual(
            problems("https_port: 8443\ncert_file: \(directory.path)/none.crt\nprivate_key_file: \(first.key)\n"),
            ["2: cert_file \(directory.path)/none.crt is not a PEM certificate: no such file"])
    }

    private func run(_ executable: String, _ arguments: String...) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "\(executable) \(arguments)")
    }
}
