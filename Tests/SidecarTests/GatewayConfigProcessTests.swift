import Foundation
import TestSupport
import Wire
import XCTest

/// `--config FILE` and `check-config FILE`, as a user runs them.
final class GatewayConfigProcessTests: XCTestCase {
    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-config-\(UUID())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func file(_ name: String, _ text: String) throws -> String {
        let path = folder.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testCheckConfigSaysOKOrNamesEveryProblemWithItsLine() throws {
        let good = try file(
            "good.yml",
            """
            http_port: 8080
            auth_keys: ["team-key-1"]
            providers:
              - {type: openai, host: "localhost:8080", endpoint: api.openai.com, api_key: "sk-good-secret-1"}
              - {type: anthropic, path_prefix: /anthropic, endpoint: api.anthropic.com, api_key: "env:CHECK_KEY"}
            """)
        let ok = try RunningProcess(
            product: "llmtap-sidecar", arguments: ["check-config", good], environment: ["CHECK_KEY": "sk-env-secret"])
        XCTAssertEqual(ok.waitForExit(), 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("\(good): OK: 2 provider(s)"), ok.stdout)
        XCTAssertTrue(ok.stdout.contains("openai:api.openai.com (openai, localhost:8080)"), ok.stdout)

        let bad = try file(
            "bad.yml",
            """
            https_port: 8443
            providers:
              - type: openai
                endpont: api.openai.com
                api_key: "sk-bad-secret-2"
                weight: 0
              - {name: x, type: openai, endpoint: a.example, api_key: "env:NOT_SET_ANYWHERE"}
              - {name: x, type: gemini, endpoint: b.example}
            llmtap:
              threads: abc
            """)
        let refused = try RunningProcess(product: "llmtap-sidecar", arguments: ["check-config", bad])
        XCTAssertEqual(refused.waitForExit(), 1)
        for message in [
            "\(bad):1: https_port needs cert_file and private_key_file (PEM)",
            "\(bad):4: unknown key \"endpont\" in provider 1 (did you mean \"endpoint\"?)",
            "\(bad):3: provider 1 has no endpoint",
            "\(bad):6: provider 1: weight must be above 0, not 0.0",
            "\(bad):7: env:NOT_SET_ANYWHERE is not set",
            "\(bad):8: two providers are named \"x\" (the first at line 7): names must be unique",
        ] {
            XCTAssertTrue(refused.stderr.contains(message), "\(message) is not in:\n\(refused.stderr)")
        }
        XCTAssertFalse(refused.stderr.contains("sk-bad-secret-2"), "a key is never printed")

        // A file whose keys are right but whose llmtap: values are not: told as a start tells it.
        let badValue = try file("value.yml", "llmtap:\n  threads: abc\n")
        let value = try RunningProcess(product: "llmtap-sidecar", arguments: ["check-config", badValue])
        XCTAssertEqual(value.waitForExit(), 1)
        XCTAssertTrue(
            value.stderr.contains("llmtap.threads (\(badValue) line 2) must be an integer, not \"abc\""), value.stderr)
    }

    func testTheShippedExampleIsValid() throws {
        let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/examples/sidecar.yml").path
        let keys = ["TEAM_KEY", "OPENAI_KEY_A", "OPENAI_KEY_B", "BACKUP_KEY", "ANTHROPIC_KEY"]
        let check = try RunningProcess(
            product: "llmtap-sidecar", arguments: ["check-config", example],
            environment: Dictionary(uniqueKeysWithValues: keys.map { ($0, "sk-example") }))
        XCTAssertEqual(check.waitForExit(), 0, check.stderr)
        XCTAssertTrue(check.stdout.contains("OK: 3 provider(s)"), check.stdout)
    }

    func testABadFileStopsTheStartAndSaysWhy() throws {
        let bad = try file("bad.yml", "http_port: 8080\nprovders: []\n")
        for (arguments, environment) in [
            (["--config", bad], [String: String]()), (["-c", bad], [:]), ([], ["LLMTAP_CONFIG": bad]),
        ] {
            let sidecar = try RunningProcess(product: "llmtap-sidecar", arguments: arguments, environment: environment)
            XCTAssertEqual(sidecar.waitForExit(), 78, sidecar.stderr)
            XCTAssertTrue(
                sidecar.stderr.contains(
                    "\(bad):2: unknown key \"provders\" at the top level (did you mean \"providers\"?)"),
                sidecar.stderr)
        }
        let missing = try RunningProcess(product: "llmtap-sidecar", arguments: ["--config", folder.path + "/none.yml"])
        XCTAssertEqual(missing.waitForExit(), 78)
        XCTAssertTrue(missing.stderr.contains("none.yml: cannot read the file"), missing.stderr)
    }

    /// A flag wins over a variable, and a variable over the file.
    func testTheFileSetsOptionsUnderVariablesAndFlags() throws {
        let collected = Collected<ReceivedRecord>()
        let receiver = try AnalysisReceiver(
            configuration: AnalysisReceiverConfiguration(endpoint: "tcp://127.0.0.1:*"), logger: testLogger()
        ) { collected.append($0) }
        defer { receiver.shutdown() }
        let port = try freeTCPPort()
        let config = try file(
            "sidecar.yml",
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            llmtap:
              collector: \(receiver.boundEndpoint)
              app: from-file
              sidecar_id: from-file
              heartbeat_interval: 0.2
            """)
        let sidecar = try RunningProcess(
            product: "llmtap-sidecar", arguments: ["--config", config, "--sidecar-id", "from-flag"],
            environment: ["LLMTAP_APP": "from-env"])
        defer { sidecar.signal(SIGTERM) }
        XCTAssertTrue(eventually { collected.count >= 2 }, sidecar.stderr)
        guard case .heartbeat(let beat) = collected.all.last?.envelope.record else { return XCTFail("no heartbeat") }
        XCTAssertEqual(beat.app, "from-env", "a variable wins over the file")
        XCTAssertEqual(collected.all.last?.envelope.sidecarID, "from-flag", "a flag wins over both")
        XCTAssertEqual(beat.intervalMs, 200, "the file sets what neither sets")
        XCTAssertTrue(
            eventually { (try? connectTCP(port: port)).map { close($0) } != nil }, "http_port is the listener")
    }
}
