import CZeroMQ

/// A failed libzmq call: which call, on what, and libzmq's own words for it.
public struct ZMQError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The libzmq function that failed, with its argument where that helps ("zmq_bind(tcp://*:7101)").
    public let operation: String
    /// The errno value libzmq reported.
    public let code: Int32
    /// `zmq_strerror(code)`.
    public let message: String

    public init(operation: String, code: Int32) {
        self.operation = operation
        self.code = code
        self.message = String(cString: zmq_strerror(code))
    }

    /// The error of the libzmq call that just failed on this thread.
    static func last(_ operation: @autoclosure () -> String) -> ZMQError {
        ZMQError(operation: operation(), code: zmq_errno())
    }

    public var description: String {
        "\(operation) failed: \(message) (errno \(code))"
    }

    /// The call would have blocked (`EAGAIN`): nothing was sent or received.
    public var wouldBlock: Bool { code == EAGAIN }
    /// The context was terminated: the socket must be closed.
    public var contextTerminated: Bool { code == ETERM }
}
