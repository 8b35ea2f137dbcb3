import XCTest

@testable import Sidecar

/// When a starting process says it is up, with no process: listeners, and the policy snapshot a
/// hot upgrade with --policy waits for.
final class ReadinessTests: XCTestCase {
    func testUpOnceEveryListenerIs() {
        var readiness = Readiness()
        XCTAssertEqual(readiness.expect(listeners: 2, policy: false), .wait)
        XCTAssertEqual(readiness.listenerUp(), .wait)
        XCTAssertEqual(readiness.listenerUp(), .ready)
        XCTAssertEqual(readiness.policyArrived(), .wait, "up only once")
    }

    func testAnUpgradeWithPolicyWaitsForItsSnapshot() {
        var readiness = Readiness()
        XCTAssertEqual(readiness.expect(listeners: 1, policy: true), .wait)
        XCTAssertEqual(readiness.listenerUp(), .wait, "listening, but no table yet")
        XCTAssertEqual(readiness.policyArrived(), .ready)
        XCTAssertEqual(readiness.policyWaitEnded(), .wait, "the wait ending later changes nothing")
    }

    func testASnapshotBeforeTheListenersCountsWhenTheyAreUp() {
        var readiness = Readiness()
        XCTAssertEqual(readiness.policyArrived(), .wait, "nothing is up before expect")
        XCTAssertEqual(readiness.expect(listeners: 1, policy: true), .wait)
        XCTAssertEqual(readiness.listenerUp(), .ready)
    }

    func testTheEndOfTheWaitBringsItUpWithoutTheSnapshot() {
        var readiness = Readiness()
        XCTAssertEqual(readiness.expect(listeners: 1, policy: true), .wait)
        XCTAssertEqual(readiness.listenerUp(), .wait)
        XCTAssertEqual(readiness.policyWaitEnded(), .readyWithoutPolicy)
        XCTAssertEqual(readiness.policyArrived(), .wait, "up only once")
    }

    func testTheWaitEndingBeforeTheListenersLeavesThemToBringItUp() {
        var readiness = Readiness()
        XCTAssertEqual(readiness.expect(listeners: 1, policy: true), .wait)
        XCTAssertEqual(readiness.policyWaitEnded(), .wait)
        XCTAssertEqual(readiness.listenerUp(), .ready)
    }
}
