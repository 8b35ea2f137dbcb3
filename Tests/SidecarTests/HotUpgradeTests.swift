import Foundation
import TestSupport
import XCTest

/// SIGUSR2: the real binary starts itself again, hands the listening socket over, and drains;
/// driven under llmtap-bench load, twice in a row, and once with a new process that can't start.
final class HotUpgradeTests: XCTestCase {
    /// Running: neither gone nor a zombie (an upgraded process's parent exits before it, and who
    /// reaps it then is not up to the test).
    func isAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return false }
        return !stat[stat.index(after: end)...].hasPrefix(" Z")
    }

    /// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`: what the sidecar says on it.
    final class NotifySocket {
        let path: String
        let descriptor: CInt

        init(in folder: URL) throws {
            path = folder.appendingPathComponent("notify").path
            descriptor = socket(AF_UNIX, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            guard descriptor >= 0, bound == 0 else { throw TestFailure("cannot bind \(path)") }
        }

        /// Every message received so far.
        func messages() -> [String] {
            var all: [String] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
                guard count > 0 else { return all }
                all.append(String(decoding: buffer[..<count], as: UTF8.self))
            }
        }

        deinit { close(descriptor) }
    }

    func testSIGUSR2UnderLoadHandsOverTheSocketsWithoutAFailedRequest() throws {
        let (a, b) = (try MockProvider(), try MockProvider())
        let port = try freeTCPPort()
        let folder = try makeFolder()
        let pidFile = folder.appendingPathComponent("sidecar.pid").path
        let yaml = """
            http_port: \(port)
            http_bind_address: 127.0.0.1
            providers:
              - {name: a, type: openai, endpoint: 127.0.0.1, port: \(a.port), tls: false, api_key: sk-a}
              - {name: b, type: openai, endpoint: 127.0.0.1, port: \(b.port), tls: false, api_key: sk-b}
            """
        let notify = try NotifySocket(in: folder)
        let (sidecar, config) = try startGateway(
            yaml, in: folder,
            arguments: [
                "-p", pidFile, "--drain-timeout", "5", "--collector", "tcp://127.0.0.1:\(try freeTCPPort())",
            ], environment: ["NOTIFY_SOCKET": notify.path])
        var current = sidecar.process.processIdentifier
        defer {
            sidecar.signal(SIGKILL)
            if isAlive(current) { kill(current, SIGKILL) }
            for mock in [a, b] { mock.process.signal(SIGTERM) }
        }
        XCTAssertEqual(pid(inFile: pidFile), current, "the PID file names the first process")
        var said = notify.messages()
        XCTAssertEqual(said, ["READY=1\nMAINPID=\(current)\n"], "systemd hears the first process is up")

        let bench = try startBench(port: port, requests: 20000, concurrency: 32, in: folder)
        // Two upgrades under the load, the second of the process the first started.
        for round in 1...2 {
            usleep(1_000_000)
            XCTAssertTrue(bench.process.isRunning, "the load outlasts upgrade \(round)")
            let before = current
            kill(before, SIGUSR2)
            current = try XCTUnwrap(pid(inFile: pidFile, other: before), "upgrade \(round): \(sidecar.stderr)")
            XCTAssertTrue(isAlive(current))
            XCTAssertTrue(eventually { !isAlive(before) }, "the old process is gone after its drain")
            said += notify.messages()
            XCTAssertEqual(said.last, "READY=1\nMAINPID=\(current)\n", "systemd follows the new process")
        }
        XCTAssertEqual(sidecar.waitForExit(), 0, "the first process exits 0 after its drain")
        XCTAssertEqual(bench.waitForExit(timeout: .seconds(180)), 0, bench.stderr)
        let report = try benchReport(of: bench)
        XCTAssertEqual(report["errors"] as? Int, 0, "\(report)")
        XCTAssertEqual(report["requests"] as? Int, 20000, "\(report)")
        XCTAssertEqual(
            sidecar.stderr.components(separatedBy: "hot upgrade: the new process is ready").count - 1, 2,
            sidecar.stderr)

        // A new process that can't start (its file is broken): the one serving keeps serving.
        try (yaml + "\nprovders: []\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(current, SIGUSR2)
        XCTAssertTrue(eventually { sidecar.stderr.contains("hot upgrade failed") }, sidecar.stderr)
        XCTAssertTrue(sidecar.stderr.contains("exited with status 78 before it was ready"), sidecar.stderr)
        XCTAssertTrue(isAlive(current))
        XCTAssertEqual(pid(inFile: pidFile), current, "the PID file still names the process serving")
        for _ in 0..<20 {
            XCTAssertEqual(try curlWithStatus(["-s", "http://127.0.0.1:\(port)/v1/models"]).status, 200)
        }

        // SIGTERM ends the last one, and its PID file goes with it.
        kill(current, SIGTERM)
        XCTAssertTrue(eventually { !isAlive(current) })
        XCTAssertFalse(FileManager.default.fileExists(atPath: pidFile), "the PID file is removed at exit")
    }
}
