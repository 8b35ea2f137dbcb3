import Logging
import ServiceLifecycle
import Synchronization
import Wire
import XCTest

/// One `ServiceGroup` per binary stops its parts in the reverse of their order: the shutdown order
/// is the list.
final class StopOnShutdownTests: XCTestCase {
    func testPartsStopOneAtATimeFromTheLast() async throws {
        let stopped = Mutex<[String]>([])
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    StopOnShutdown("publisher", blocking: { stopped.withLock { $0.append("publisher") } }),
                    StopOnShutdown("pools", async: { stopped.withLock { $0.append("pools") } }),
                    StopOnShutdown("listener", blocking: { stopped.withLock { $0.append("listener") } }),
                ],
                logger: Logger(label: "test")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await Task.sleep(for: .milliseconds(50))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        XCTAssertEqual(stopped.withLock { $0 }, ["listener", "pools", "publisher"])
    }
}
