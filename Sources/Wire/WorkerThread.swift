import Dispatch
import Foundation
import Synchronization

/// A long-lived worker on a thread of its own (a ZeroMQ socket's owner, the database writer):
/// the one way both binaries run one. `start` hands the body its thread and waits until the body
/// says it is up (or why it is not); `wake` nudges a body that waits for work, through a semaphore
/// or, for a body that polls a socket too, a pipe it can poll; `join` waits until the body has
/// drained and returned, for any number of callers. Each ZeroMQ socket stays with the one thread
/// that made it.
public final class WorkerThread: Sendable {
    public let name: String
    private let wakeup = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    /// Read and write ends of the wake-up pipe, for a body that polls (`-1` without one).
    private let pipeEnds: (read: Int32, write: Int32)
    private let started = Atomic<Bool>(false)

    /// A worker woken through a semaphore (`waitForWake`).
    public init(name: String) {
        self.name = name
        pipeEnds = (-1, -1)
    }

    /// A worker whose body polls a socket, and `wakeupFD` beside it.
    public init(pollableNamed name: String) throws(WorkerThreadError) {
        self.name = name
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw WorkerThreadError("\(name): pipe() failed, errno \(errno)") }
        for end in ends { _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK) }
        pipeEnds = (ends[0], ends[1])
    }

    deinit {
        if pipeEnds.read >= 0 {
            close(pipeEnds.read)
            close(pipeEnds.write)
        }
    }

    /// Runs `body` on a new thread and waits for it to call `ready` (at most once, before its
    /// work): with a value, which this returns, or an error, which this throws. A body that returns
    /// without calling it fails the start.
    public func start<Value: Sendable>(
        _ body: @escaping @Sendable (_ ready: (Result<Value, any Error>) -> Void) -> Void
    ) throws -> Value {
        precondition(!started.exchange(true, ordering: .relaxed), "\(name) was started twice")
        let outcome = Mutex<Result<Value, any Error>?>(nil)
        let up = DispatchSemaphore(value: 0)
        let thread = Thread { [finished, name] in
            var reported = false
            body { result in
                guard !reported else { return }
                reported = true
                outcome.withLock { $0 = result }
                up.signal()
            }
            if !reported {
                outcome.withLock { $0 = .failure(WorkerThreadError("\(name) stopped before it was up")) }
                up.signal()
            }
            finished.signal()
        }
        thread.name = name
        thread.start()
        up.wait()
        return try outcome.withLock { $0! }.get()
    }

    /// Runs `body` on a new thread, for a body that can't fail to come up.
    public func start(_ body: @escaping @Sendable () -> Void) {
        // swift-format-ignore: NeverUseForceTry
        try! start { (ready: (Result<Void, any Error>) -> Void) in
            ready(.success(()))
            body()
        }
    }

    /// Wakes the body if it waits in `waitForWake` or polls `wakeupFD`.
    public func wake() {
        if pipeEnds.write >= 0 {
            var byte: UInt8 = 1
            _ = write(pipeEnds.write, &byte, 1)
        } else {
            wakeup.signal()
        }
    }

    /// For the body: waits until woken, or `timeout`; true when woken.
    @discardableResult
    public func waitForWake(timeout: DispatchTimeInterval) -> Bool {
        wakeup.wait(timeout: .now() + timeout) == .success
    }

    /// For a pollable body: the descriptor that turns readable when woken.
    public var wakeupFD: Int32 { pipeEnds.read }

    /// For a pollable body, once `wakeupFD` was readable: takes the wake-ups so it is not again.
    public func drainWakeups() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while read(pipeEnds.read, &bytes, bytes.count) > 0 {}
    }

    /// Waits until the body has returned. Blocks: never on an event loop.
    public func join() {
        finished.wait()
        finished.signal() // let any other caller through as well
    }

    /// Waits at most `timeout` for the body to return; false if it has not.
    public func join(timeout: DispatchTimeInterval) -> Bool {
        guard finished.wait(timeout: .now() + timeout) == .success else { return false }
        finished.signal()
        return true
    }
}

public struct WorkerThreadError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
