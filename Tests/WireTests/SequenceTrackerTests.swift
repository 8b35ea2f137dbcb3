import XCTest

@testable import Wire

final class SequenceTrackerTests: XCTestCase {
    func testInOrderRecordsMakeNoGap() {
        var tracker = SequenceTracker()
        for seq in 1...5 {
            XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "1", seq: UInt64(seq), droppedBefore: 0), .inOrder)
        }
        XCTAssertEqual(tracker.stream(sidecarID: "a", bootID: "1")?.received, 5)
        XCTAssertEqual(tracker.stream(sidecarID: "a", bootID: "1")?.missing, 0)
    }

    func testAGapIsSplitIntoSidecarDropsAndTransitLosses() {
        var tracker = SequenceTracker()
        _ = tracker.observe(sidecarID: "a", bootID: "1", seq: 1, droppedBefore: 0)
        // seqs 2...6 missing; the sidecar says it dropped 3 of them itself.
        let observation = tracker.observe(sidecarID: "a", bootID: "1", seq: 7, droppedBefore: 3)
        XCTAssertEqual(
            observation,
            .gap(SequenceGap(sidecarID: "a", bootID: "1", firstMissing: 2, lastMissing: 6, droppedBySender: 3)))
        let stream = tracker.stream(sidecarID: "a", bootID: "1")!
        XCTAssertEqual(stream.missing, 5)
        XCTAssertEqual(stream.droppedBySender, 3)
        XCTAssertEqual(stream.lostInTransit, 2)
    }

    func testAStreamThatStartsLateIsMissingItsBeginning() {
        var tracker = SequenceTracker()
        guard case .gap(let gap) = tracker.observe(sidecarID: "a", bootID: "1", seq: 101, droppedBefore: 100) else {
            return XCTFail("seq 101 first should be a gap")
        }
        XCTAssertEqual(gap.firstMissing, 1)
        XCTAssertEqual(gap.lastMissing, 100)
        XCTAssertEqual(gap.lostInTransit, 0)
    }

    func testImplausibleDropCountsGetNoCredit() {
        var tracker = SequenceTracker()
        _ = tracker.observe(sidecarID: "a", bootID: "1", seq: 1, droppedBefore: 10)
        guard case .gap(let shrinking) = tracker.observe(sidecarID: "a", bootID: "1", seq: 3, droppedBefore: 4) else {
            return XCTFail()
        }
        XCTAssertEqual(shrinking.droppedBySender, 0)
        guard case .gap(let tooMany) = tracker.observe(sidecarID: "a", bootID: "1", seq: 5, droppedBefore: 1_000) else {
            return XCTFail()
        }
        XCTAssertEqual(tooMany.droppedBySender, 1, "no more can have been dropped than are missing")
    }

    func testRepeatsAndStragglersAreCountedNotTreatedAsProgress() {
        var tracker = SequenceTracker()
        _ = tracker.observe(sidecarID: "a", bootID: "1", seq: 1, droppedBefore: 0)
        _ = tracker.observe(sidecarID: "a", bootID: "1", seq: 3, droppedBefore: 0)
        XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "1", seq: 2, droppedBefore: 0), .outOfOrder)
        XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "1", seq: 3, droppedBefore: 0), .outOfOrder)
        XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "1", seq: 4, droppedBefore: 0), .inOrder)
        XCTAssertEqual(tracker.stream(sidecarID: "a", bootID: "1")?.outOfOrder, 2)
    }

    func testSidecarsAndBootsAreTrackedApart() {
        var tracker = SequenceTracker()
        _ = tracker.observe(sidecarID: "a", bootID: "1", seq: 1, droppedBefore: 0)
        _ = tracker.observe(sidecarID: "b", bootID: "1", seq: 1, droppedBefore: 0)
        XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "1", seq: 2, droppedBefore: 0), .inOrder)
        // A restart: the new boot starts again at 1.
        XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "2", seq: 1, droppedBefore: 0), .inOrder)
        XCTAssertEqual(tracker.observe(sidecarID: "b", bootID: "1", seq: 2, droppedBefore: 0), .inOrder)
        XCTAssertEqual(
            tracker.allStreams.map { "\($0.sidecarID)/\($0.bootID):\($0.lastSeq)" }, ["a/1:2", "a/2:1", "b/1:2"])
    }

    func testTheQuietestStreamIsForgottenPastTheBound() {
        var tracker = SequenceTracker(maxStreams: 3)
        for boot in ["1", "2", "3"] { _ = tracker.observe(sidecarID: "a", bootID: boot, seq: 1, droppedBefore: 0) }
        _ = tracker.observe(sidecarID: "a", bootID: "1", seq: 2, droppedBefore: 0) // boot 2 is now the quietest
        _ = tracker.observe(sidecarID: "a", bootID: "4", seq: 1, droppedBefore: 0)
        XCTAssertEqual(tracker.allStreams.map(\.bootID), ["1", "3", "4"])
        XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "3", seq: 2, droppedBefore: 0), .inOrder)
        XCTAssertEqual(tracker.observe(sidecarID: "a", bootID: "4", seq: 2, droppedBefore: 0), .inOrder)
    }
}

final class SequenceTrackerResumeTests: XCTestCase {
    func testAResumedStreamCountsOnlyWhatWasMissedSinceTheEarlierRun() {
        var tracker = SequenceTracker()
        tracker.resume(SequenceResumePoint(sidecarID: "s", bootID: "b", lastSeq: 100, lastDroppedBefore: 5))
        // 101...109 went missing while no receiver ran: 3 of them dropped by the sidecar.
        XCTAssertEqual(
            tracker.observe(sidecarID: "s", bootID: "b", seq: 110, droppedBefore: 8),
            .gap(SequenceGap(sidecarID: "s", bootID: "b", firstMissing: 101, lastMissing: 109, droppedBySender: 3))
        )
        XCTAssertEqual(tracker.observe(sidecarID: "s", bootID: "b", seq: 111, droppedBefore: 8), .inOrder)
        let stats = tracker.stream(sidecarID: "s", bootID: "b")
        XCTAssertEqual([stats?.received, stats?.missing, stats?.lostInTransit, stats?.droppedBySender], [2, 9, 6, 3])
        XCTAssertEqual(
            stats?.resumePoint, SequenceResumePoint(sidecarID: "s", bootID: "b", lastSeq: 111, lastDroppedBefore: 8))
    }
}
