import Foundation
import TestSupport
import XCTest

/// SIGUSR2 on a sidecar that enforces the collector's policy: the new process takes over only
/// once its policy table is in, so no virtual-key request it takes gets the 503 of a sidecar
/// without one; with the collector away it takes over after its wait, and says so.
final class PolicyHotUpgradeTests: XCTestCase {
    func testAnUpgradedSidecarTakesOverWithItsPolicyTable() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let key = try fleet.createToken(project: try fleet.createProject("upgrade"))
        let pidFile = fleet.folder.appendingPathComponent("sidecar.pid").path
        let port = try fleet.startSidecar(extra: ["-p", pidFile, "--drain-timeout", "5"])
        var current = try XCTUnwrap(pid(inFile: pidFile))
        defer { kill(current, SIGKILL) }
        XCTAssertTrue(eventually { (try? fleet.chat(port: port, key: key).status) == 200 }, fleet.sidecarLog())

        let bench = try startBench(port: port, requests: 8000, concurrency: 16, token: key, in: fleet.folder)
        usleep(1_000_000)
        XCTAssertTrue(bench.process.isRunning, "the load outlasts the upgrade")
        let before = current
        kill(before, SIGUSR2)
        current = try XCTUnwrap(pid(inFile: pidFile, other: before), fleet.sidecarLog())
        XCTAssertEqual(bench.waitForExit(timeout: .seconds(180)), 0, bench.stderr)
        let report = try benchReport(of: bench)
        XCTAssertEqual(report["errors"] as? Int, 0, "no 503 from the new process: \(report)")
        XCTAssertEqual(report["requests"] as? Int, 8000, "\(report)")
        let log = fleet.sidecarLog()
        // The new process writes to the same stderr: its snapshot came before it took over.
        let snapshot = try XCTUnwrap(
            log.range(
                of: "policy snapshot received",
                range: log.range(of: "hot upgrade: starting")
                    .map { $0.upperBound..<log.endIndex }), log)
        let takeover = try XCTUnwrap(log.range(of: "this process took over the listening sockets"), log)
        XCTAssertLessThan(snapshot.lowerBound, takeover.lowerBound, log)

        // The collector away: the next process waits for a snapshot, then takes over without one.
        fleet.stopCollector()
        let started = ContinuousClock.now
        let previous = current
        kill(previous, SIGUSR2)
        current = try XCTUnwrap(pid(inFile: pidFile, other: previous, timeout: .seconds(20)), fleet.sidecarLog())
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - started, .seconds(4), "it waited for the snapshot")
        XCTAssertTrue(
            fleet.sidecarLog().contains("no policy snapshot from the collector yet; taking over without one"),
            fleet.sidecarLog())
        XCTAssertEqual(try fleet.chat(port: port, key: key).status, 503, "no table yet: virtual keys wait")
    }
}
