import Foundation
import Logging
import NIOCore
import TestSupport
import XCTest

@testable import Sidecar

/// `$(command)` keys: a script that prints a token, its runs counted; run again after a 401 and
/// after `refresh_interval`; an Anthropic token sent as OAuth; its failures said without its output.
final class CommandKeyTests: XCTestCase {
    /// A script that counts its runs in `count` and prints `tok-N`, the run's number.
    func tokenScript(in folder: URL) throws -> (script: String, runs: () -> Int) {
        let script = folder.appendingPathComponent("token.sh").path
        let count = folder.appendingPathComponent("count").path
        try """
        #!/bin/sh
        n=$(cat '\(count)' 2>/dev/null || echo 0)
        n=$((n + 1))
        echo "$n" > '\(count)'
        echo "tok-$n"
        """.write(toFile: script, atomically: true, encoding: .utf8)
        return (
            script,
            {
                Int(
                    (try? String(contentsOfFile: count, encoding: .utf8))?.trimmingCharacters(
                        in: .whitespacesAndNewlines) ?? "") ?? 0
            }
        )
    }

    func testACommandsOutputIsItsKeyAndItsFailuresSayHowNotWhat() {
        XCTAssertEqual(try CommandKey.run("printf 'sk-oauth-1\\n'").get(), "sk-oauth-1")
        for (command, said) in [
            ("echo sk-secret-out; exit 3", "exited with status 3"),
            ("true", "printed nothing"),
            ("printf 'a\\nb\\n'", "printed more than one line"),
            ("kill -9 $$", "was ended by signal 9"),
        ] {
            guard case .failure(let failure) = CommandKey.run(command) else { return XCTFail(command) }
            XCTAssertEqual(failure.description, said, command)
            XCTAssertFalse(failure.description.contains("sk-secret"), "a failure never shows the output")
        }
    }

    func testAKeyIsFetchedAgainAfterItsIntervalAndAfterA401ButNotForEveryRequest() throws {
        let folder = try makeFolder()
        let (script, runs) = try tokenScript(in: folder)
        let key = try CommandKey(
            command: "sh '\(script)'", provider: "p", refreshIntervalSeconds: 3600, logger: Logger(label: "test"))
        XCTAssertEqual(key.value(), "tok-1")
        // A 401 at once after the run: it just ran, so no run.
        key.refused()
        for _ in 0..<100 { XCTAssertEqual(key.value(), "tok-1") }
        XCTAssertEqual(runs(), 1)
        // A 401 later: one run, in the background, whatever the number of 401s.
        let later = NIODeadline.now().uptimeNanoseconds + CommandKey.minimumRerunNanos + 1
        for _ in 0..<10 { key.refused(now: later) }
        XCTAssertTrue(eventually { key.value(now: later) == "tok-2" })
        XCTAssertEqual(runs(), 2)
        XCTAssertEqual(key.runs, 2)
        // Past the interval: the next use runs it again, the key before serving until it is done.
        let due = later + 3600 * 1_000_000_000 + 1
        XCTAssertEqual(key.value(now: due), "tok-2")
        XCTAssertTrue(eventually { key.runs == 3 })
        XCTAssertEqual(key.value(), "tok-3")
        XCTAssertEqual(runs(), 3)
    }

    /// The real binary with an Anthropic provider whose key is a command's: the mock accepts only
    /// the second token, so the first request's 401 must bring it.
    func testTheSidecarRunsTheCommandAgainAfterA401AndSendsAnAnthropicTokenAsOAuth() throws {
        let folder = try makeFolder()
        let (script, runs) = try tokenScript(in: folder)
        let mockPort = try freeTCPPort()
        let log = folder.appendingPathComponent("mock.jsonl").path
        let mock = try RunningProcess(
            product: "llmtap-mock-upstream",
            arguments: ["--listen", "127.0.0.1:\(mockPort)", "--request-log", log, "--accept-key", "tok-2"])
        XCTAssertTrue(eventually { mock.stdout.contains("listening on") }, mock.stderr)
        let port = try freeTCPPort()
        let (sidecar, _) = try startGateway(
            """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: claude, type: anthropic, endpoint: 127.0.0.1, port: \(mockPort), tls: false, api_key: "$(sh '\(script)')"}
            llmtap: {collector: "tcp://127.0.0.1:\(try freeTCPPort())"}
            """, in: folder)
        defer {
            sidecar.signal(SIGTERM)
            _ = sidecar.waitForExit()
            mock.signal(SIGTERM)
        }
        XCTAssertEqual(runs(), 1, "run once at start")
        // Past the minimum spacing of runs, so that the 401 runs it again.
        usleep(1_200_000)
        let request = [
            "-s", "http://127.0.0.1:\(port)/v1/messages", "-H", "x-api-key: the-clients-own",
            "-H", "content-type: application/json",
            "-d", #"{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#,
        ]
        XCTAssertEqual(try curlWithStatus(request).status, 401, "tok-1 is refused")
        XCTAssertTrue(eventually { runs() == 2 }, "the 401 ran the command again: \(sidecar.stderr)")
        XCTAssertTrue(eventually { sidecar.stderr.contains("why=the upstream answered 401") }, sidecar.stderr)
        for _ in 0..<10 { XCTAssertEqual(try curlWithStatus(request).status, 200) }
        XCTAssertEqual(runs(), 2, "the token is kept between runs")

        let sent = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }.compactMap { $0["headers"] as? [String: String] }
        let last = try XCTUnwrap(sent.last)
        XCTAssertEqual(last["authorization"], "Bearer tok-2")
        XCTAssertEqual(last["anthropic-beta"], "oauth-2025-04-20")
        XCTAssertEqual(last["anthropic-version"], "2023-06-01")
        XCTAssertNil(last["x-api-key"], "the client's key never goes upstream")
        XCTAssertFalse(sidecar.stderr.contains("tok-"), "no token in the log")
    }

    func testACommandThatFailsAtStartStopsTheSidecarSayingHow() throws {
        let folder = try makeFolder()
        let config = folder.appendingPathComponent("sidecar.yml").path
        try """
        http_port: \(try freeTCPPort())
        providers:
          - {name: p, type: openai, endpoint: 127.0.0.1, api_key: "$(echo sk-leaked; exit 7)"}
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let sidecar = try RunningProcess(product: "llmtap-sidecar", arguments: ["--config", config])
        XCTAssertNotEqual(sidecar.waitForExit(), 0)
        XCTAssertTrue(sidecar.stderr.contains("provider p: its $(command) key exited with status 7"), sidecar.stderr)
        XCTAssertFalse(sidecar.stderr.contains("sk-leaked"), sidecar.stderr)
    }
}
