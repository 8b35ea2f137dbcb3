import CZeroMQ

/// A libzmq context: the I/O threads behind a set of sockets. Thread-safe.
///
/// Sockets keep their context alive; the context is terminated once the last socket is closed
/// and the last reference is gone, which waits for each socket's linger to run out.
public final class ZMQContext: @unchecked Sendable {
    // libzmq documents contexts as thread-safe; the handle is never mutated after init.
    let handle: UnsafeMutableRawPointer

    /// - Parameter ioThreads: libzmq's background I/O threads. One moves about a gigabyte a second.
    public init(ioThreads: Int32 = 1) throws(ZMQError) {
        guard let handle = zmq_ctx_new() else {
            throw ZMQError.last("zmq_ctx_new")
        }
        if zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads) != 0 {
            let error = ZMQError.last("zmq_ctx_set(ZMQ_IO_THREADS, \(ioThreads))")
            zmq_ctx_term(handle)
            throw error
        }
        self.handle = handle
    }

    deinit {
        // EINTR means a signal arrived while lingering sockets were flushed; the call must be repeated.
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }
}
