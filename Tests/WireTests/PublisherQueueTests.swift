import TestSupport
import XCTest

@testable import Wire

final class PublisherQueueTests: XCTestCase {
    private let record = SampleRecords.heartbeat

    func testEveryCallUsesASequenceNumberAndDropsAreCountedBeforeTheNextRecord() {
        var queue = PublisherQueue(maxRecords: 2, maxBytes: 1 << 20)
        XCTAssertEqual(queue.enqueue(.message(record), cost: 10), .accepted(wakeConsumer: false))
        XCTAssertEqual(queue.enqueue(.message(record), cost: 10), .accepted(wakeConsumer: false))
        XCTAssertEqual(queue.enqueue(.message(record), cost: 10), .dropped) // seq 3
        XCTAssertEqual(queue.enqueue(.message(record), cost: 10), .dropped) // seq 4
        guard case .records(let taken) = queue.take() else { return XCTFail("nothing to take") }
        XCTAssertEqual(taken.map(\.seq), [1, 2])
        XCTAssertEqual(taken.map(\.droppedBefore), [0, 0])
        // Taken records still count against the limit until they are sent.
        XCTAssertEqual(queue.enqueue(.message(record), cost: 10), .dropped) // seq 5
        queue.sent(count: 2, cost: 20)
        XCTAssertEqual(queue.enqueue(.message(record), cost: 10), .accepted(wakeConsumer: false)) // seq 6
        guard case .records(let next) = queue.take() else { return XCTFail("nothing to take") }
        XCTAssertEqual(next.map(\.seq), [6])
        XCTAssertEqual(next.map(\.droppedBefore), [3], "seqs 3, 4 and 5 were dropped before seq 6")
        XCTAssertEqual(
            queue.stats,
            PublisherStats(accepted: 3, published: 2, dropped: 3, queueDepth: 1, queueBytes: 10, lastSeq: 6))
    }

    func testTheByteLimitDropsAndAnOversizeRecordStillFitsAnEmptyQueue() {
        var queue = PublisherQueue(maxRecords: 100, maxBytes: 100)
        XCTAssertEqual(queue.enqueue(.message(record), cost: 60), .accepted(wakeConsumer: false))
        XCTAssertEqual(queue.enqueue(.message(record), cost: 60), .dropped)
        XCTAssertEqual(queue.enqueue(.message(record), cost: 40), .accepted(wakeConsumer: false))
        guard case .records(let taken) = queue.take() else { return XCTFail() }
        queue.sent(count: taken.count, cost: 100)
        XCTAssertEqual(
            queue.enqueue(.message(record), cost: 5_000), .accepted(wakeConsumer: false),
            "one big record must not be refused forever")
        XCTAssertEqual(queue.enqueue(.message(record), cost: 1), .dropped)
    }

    func testAnIdleConsumerIsWokenOnceByTheNextRecord() {
        var queue = PublisherQueue(maxRecords: 10, maxBytes: 1_000)
        guard case .idle = queue.take() else { return XCTFail("an empty queue should make the consumer idle") }
        XCTAssertEqual(queue.enqueue(.message(record), cost: 1), .accepted(wakeConsumer: true))
        XCTAssertEqual(queue.enqueue(.message(record), cost: 1), .accepted(wakeConsumer: false))
    }

    func testAWaitingConsumerIsWokenOnlyPastTheBatchThresholdOrOnClose() {
        var queue = PublisherQueue(maxRecords: 100, maxBytes: 10_000, wakeRecords: 3, wakeBytes: 500)
        guard case .idle = queue.take() else { return XCTFail() }
        XCTAssertEqual(queue.enqueue(.message(record), cost: 1), .accepted(wakeConsumer: false))
        XCTAssertEqual(queue.enqueue(.message(record), cost: 1), .accepted(wakeConsumer: false))
        XCTAssertEqual(
            queue.enqueue(.message(record), cost: 1), .accepted(wakeConsumer: true),
            "the third record crosses the threshold")
        XCTAssertEqual(
            queue.enqueue(.message(record), cost: 1), .accepted(wakeConsumer: false), "once woken, not again")
        guard case .records = queue.take() else { return XCTFail() }
        guard case .idle = queue.take() else { return XCTFail() }
        XCTAssertEqual(queue.enqueue(.message(record), cost: 600), .accepted(wakeConsumer: true), "bytes count too")
        guard case .records = queue.take() else { return XCTFail() }
        guard case .idle = queue.take() else { return XCTFail() }
        XCTAssertTrue(queue.close(), "closing wakes a waiting consumer at once")
        // Thresholds above half the limits are lowered, so a full queue always wakes the consumer.
        let small = PublisherQueue(maxRecords: 4, maxBytes: 100, wakeRecords: 256, wakeBytes: 1 << 20)
        XCTAssertEqual(small.wakeRecords, 2)
        XCTAssertEqual(small.wakeBytes, 50)
    }

    func testClosingRefusesNewRecordsAndFinishesOnceDrained() {
        var queue = PublisherQueue(maxRecords: 10, maxBytes: 1_000)
        XCTAssertEqual(queue.enqueue(.message(record), cost: 1), .accepted(wakeConsumer: false))
        XCTAssertFalse(queue.close())
        XCTAssertEqual(queue.enqueue(.message(record), cost: 1), .dropped)
        guard case .records(let taken) = queue.take() else { return XCTFail() }
        queue.abandoned(count: taken.count, cost: 1)
        guard case .finished = queue.take() else { return XCTFail("a closed, empty queue is finished") }
        XCTAssertEqual(queue.stats.dropped, 2)
        XCTAssertEqual(queue.stats.queueDepth, 0)
    }
}

final class PendingRecordLayoutTests: XCTestCase {
    /// The queue holds up to tens of thousands of these, in two arrays while the I/O thread drains.
    func testAQueuedRecordIsSmallInline() {
        XCTAssertLessThanOrEqual(MemoryLayout<PendingRecord>.stride, 64)
    }
}
