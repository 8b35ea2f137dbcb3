import Dispatch
import Synchronization
import Wire
import XCTest

/// The one helper every worker thread is run with: its start handshake, wake-ups and join.
final class WorkerThreadTests: XCTestCase {
    struct Refused: Error {}

    func testStartReturnsWhatTheBodyReportsAndJoinWaitsForItsEnd() throws {
        let worker = WorkerThread(name: "test-worker")
        let stop = Atomic<Bool>(false)
        let woken = Atomic<Int>(0)
        let endpoint = try worker.start { (ready: (Result<String, any Error>) -> Void) in
            ready(.success("tcp://127.0.0.1:1"))
            while !stop.load(ordering: .acquiring) {
                if worker.waitForWake(timeout: .seconds(5)) { woken.add(1, ordering: .relaxed) }
            }
        }
        XCTAssertEqual(endpoint, "tcp://127.0.0.1:1")
        XCTAssertFalse(worker.join(timeout: .milliseconds(50)), "joined a body still running")
        stop.store(true, ordering: .releasing)
        worker.wake()
        worker.join()
        worker.join() // a second caller gets through too
        XCTAssertEqual(woken.load(ordering: .relaxed), 1)
    }

    func testAFailureToComeUpIsThrownAndSoIsABodyThatNeverSaid() {
        XCTAssertThrowsError(
            try WorkerThread(name: "refusing").start { (ready: (Result<Int, any Error>) -> Void) in
                ready(.failure(Refused()))
            }
        ) { XCTAssertTrue($0 is Refused) }
        XCTAssertThrowsError(
            try WorkerThread(name: "silent").start { (_: (Result<Int, any Error>) -> Void) in }
        ) { XCTAssertTrue("\($0)".contains("silent stopped before it was up")) }
    }

    func testAPollableWorkerIsWokenThroughItsDescriptor() throws {
        let worker = try WorkerThread(pollableNamed: "test-pollable")
        let sawWake = Atomic<Bool>(false)
        worker.start {
            var descriptor = pollfd(fd: worker.wakeupFD, events: Int16(POLLIN), revents: 0)
            if poll(&descriptor, 1, 5_000) == 1 {
                worker.drainWakeups()
                sawWake.store(true, ordering: .releasing)
            }
        }
        worker.wake()
        worker.join()
        XCTAssertTrue(sawWake.load(ordering: .acquiring))
    }
}
