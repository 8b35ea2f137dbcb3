import CZeroMQ

/// A libzmq socket. libzmq sockets are not thread-safe, so a `ZMQSocket` belongs to the thread
/// that created it and is deliberately not `Sendable`: create it on the thread that uses it.
public final class ZMQSocket {
    public enum Kind: Sendable {
        case push, pull, pub, sub, xpub, pair

        var rawValue: Int32 {
            switch self {
            case .push: ZMQ_PUSH
            case .pull: ZMQ_PULL
            case .pub: ZMQ_PUB
            case .sub: ZMQ_SUB
            case .xpub: ZMQ_XPUB
            case .pair: ZMQ_PAIR
            }
        }
    }

    /// What `poll` waits for.
    public struct Events: OptionSet, Sendable {
        public let rawValue: Int16
        public init(rawValue: Int16) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: Int16(ZMQ_POLLIN))
        public static let writable = Events(rawValue: Int16(ZMQ_POLLOUT))
    }

    public let kind: Kind
    // Keeps the context from terminating while this socket is open.
    private let context: ZMQContext
    private var handle: UnsafeMutableRawPointer?

    public init(context: ZMQContext, kind: Kind) throws(ZMQError) {
        guard let handle = zmq_socket(context.handle, kind.rawValue) else {
            throw ZMQError.last("zmq_socket(\(kind))")
        }
        self.context = context
        self.kind = kind
        self.handle = handle
    }

    deinit {
        close()
    }

    /// Closes the socket. Messages still queued are delivered in the background for up to the
    /// socket's linger. Safe to call more than once.
    public func close() {
        if let handle {
            zmq_close(handle)
            self.handle = nil
        }
    }

    private func open(_ operation: @autoclosure () -> String) throws(ZMQError) -> UnsafeMutableRawPointer {
        guard let handle else { throw ZMQError(operation: operation(), code: ENOTSOCK) }
        return handle
    }

    public func set(_ option: ZMQSocketOption) throws(ZMQError) {
        let handle = try open("zmq_setsockopt(\(option.name))")
        let rc = option.withRawValue { name, value in
            zmq_setsockopt(handle, name, value.baseAddress, value.count)
        }
        if rc != 0 { throw ZMQError.last("zmq_setsockopt(\(option.name))") }
    }

    /// Binds to an endpoint such as `tcp://*:7101`, `tcp://127.0.0.1:*` (any free port) or `ipc:///path`.
    public func bind(_ endpoint: String) throws(ZMQError) {
        let handle = try open("zmq_bind(\(endpoint))")
        if zmq_bind(handle, endpoint) != 0 { throw ZMQError.last("zmq_bind(\(endpoint))") }
    }

    /// Connects to an endpoint. libzmq connects in the background and reconnects by itself,
    /// so this succeeds whether or not a peer is there yet.
    public func connect(_ endpoint: String) throws(ZMQError) {
        let handle = try open("zmq_connect(\(endpoint))")
        if zmq_connect(handle, endpoint) != 0 { throw ZMQError.last("zmq_connect(\(endpoint))") }
    }

    /// The endpoint of the last bind, with a wildcard port resolved (`tcp://127.0.0.1:38211`).
    public func lastEndpoint() throws(ZMQError) -> String {
        let handle = try open("zmq_getsockopt(ZMQ_LAST_ENDPOINT)")
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        if zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size) != 0 {
            throw ZMQError.last("zmq_getsockopt(ZMQ_LAST_ENDPOINT)")
        }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Sending

    /// Sends one frame. Returns `false` instead of blocking when the frame can't be queued now
    /// (`EAGAIN`: no peer, or the peer's high-water mark is reached) and `dontWait` is set.
    /// - Parameter more: another frame of the same message follows.
    @discardableResult
    public func send(_ bytes: UnsafeRawBufferPointer, more: Bool = false, dontWait: Bool = false) throws(ZMQError)
        -> Bool
    {
        let handle = try open("zmq_send")
        let flags = (more ? ZMQ_SNDMORE : 0) | (dontWait ? ZMQ_DONTWAIT : 0)
        while true {
            if zmq_send(handle, bytes.baseAddress, bytes.count, flags) >= 0 { return true }
            let error = ZMQError.last("zmq_send")
            if error.code == EINTR { continue }
            if error.wouldBlock { return false }
            throw error
        }
    }

    @discardableResult
    public func send(_ bytes: [UInt8], more: Bool = false, dontWait: Bool = false) throws(ZMQError) -> Bool {
        // withUnsafeBytes only rethrows untyped errors, so the typed one travels in a Result.
        try bytes.withUnsafeBytes { buffer in
            Result { () throws(ZMQError) -> Bool in try send(buffer, more: more, dontWait: dontWait) }
        }.get()
    }

    /// Sends an encoded frame, which it consumes. When the frame can't be queued now (`EAGAIN`),
    /// `whileBlocked` is asked whether to try again (it may wait, for example with `poll`); when it
    /// says no, `false` is returned and the frame is gone.
    ///
    /// The bytes are copied into a libzmq message. Handing libzmq the block itself
    /// (`zmq_msg_init_data`) was measured slower for records of a few KiB: it costs libzmq a second
    /// allocation and a free on its own I/O thread (llmtap-wire-bench: 880k against 770k records/s).
    public func send(_ frame: consuming OutboundFrame, whileBlocked: () -> Bool) throws(ZMQError) -> Bool {
        defer { frame.release() }
        let handle = try open("zmq_msg_send")
        var message = zmq_msg_t()
        guard zmq_msg_init_size(&message, frame.count) == 0 else {
            throw ZMQError.last("zmq_msg_init_size(\(frame.count))")
        }
        // After a successful send the message is empty and closing it does nothing.
        defer { zmq_msg_close(&message) }
        frame.withUnsafeBytes { bytes in
            if let source = bytes.baseAddress, let destination = zmq_msg_data(&message) {
                destination.copyMemory(from: source, byteCount: bytes.count)
            }
        }
        while true {
            if zmq_msg_send(&message, handle, ZMQ_DONTWAIT) >= 0 { return true }
            let error = ZMQError.last("zmq_msg_send")
            if error.code == EINTR { continue }
            guard error.wouldBlock else { throw error }
            if !whileBlocked() { return false }
        }
    }

    /// Sends a message of several frames. libzmq delivers a multipart message whole or not at all.
    /// With `dontWait`, returns `false` when the first frame can't be queued; the others can't fail that way.
    @discardableResult
    public func send(multipart frames: [[UInt8]], dontWait: Bool = false) throws(ZMQError) -> Bool {
        precondition(!frames.isEmpty, "a ZeroMQ message has at least one frame")
        for (index, frame) in frames.enumerated() {
            let sent = try send(frame, more: index < frames.count - 1, dontWait: dontWait)
            if !sent {
                // Only the first frame can report EAGAIN: once it is queued the rest follow atomically.
                precondition(index == 0, "libzmq refused a later frame of a multipart message")
                return false
            }
        }
        return true
    }

    // MARK: Receiving

    /// Receives one frame and hands its bytes to `body` without copying them. The bytes are valid
    /// only inside `body`. Returns `nil` with `dontWait` when no frame is waiting.
    public func receiveFrame<R>(
        dontWait: Bool = false,
        _ body: (_ bytes: UnsafeRawBufferPointer, _ more: Bool) -> R
    ) throws(ZMQError) -> R? {
        let handle = try open("zmq_msg_recv")
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        defer { zmq_msg_close(&message) }
        while zmq_msg_recv(&message, handle, dontWait ? ZMQ_DONTWAIT : 0) < 0 {
            let error = ZMQError.last("zmq_msg_recv")
            if error.code == EINTR { continue }
            if error.wouldBlock { return nil }
            throw error
        }
        let more = zmq_msg_more(&message) != 0
        let size = zmq_msg_size(&message)
        let bytes = UnsafeRawBufferPointer(start: size == 0 ? nil : zmq_msg_data(&message), count: size)
        return body(bytes, more)
    }

    /// Receives a whole message, every frame copied. Returns `nil` with `dontWait` when none is waiting.
    public func receiveMultipart(dontWait: Bool = false) throws(ZMQError) -> [[UInt8]]? {
        var frames: [[UInt8]] = []
        while true {
            let frame = try receiveFrame(dontWait: dontWait && frames.isEmpty) { bytes, more in
                (bytes: Array(bytes), more: more)
            }
            guard let frame else { return nil }
            frames.append(frame.bytes)
            if !frame.more { return frames }
        }
    }

    /// Receives a whole message, waiting at most `timeoutMilliseconds` for it to start (-1 waits forever).
    public func receiveMultipart(timeoutMilliseconds: Int) throws(ZMQError) -> [[UInt8]]? {
        guard try poll(.readable, timeoutMilliseconds: timeoutMilliseconds).contains(.readable) else { return nil }
        return try receiveMultipart(dontWait: true)
    }

    /// Discards the rest of a multipart message after a frame that said `more`.
    public func discardRemainingFrames() throws(ZMQError) {
        var more = true
        while more {
            more = try receiveFrame { _, more in more } ?? false
        }
    }

    // MARK: Polling

    /// Waits until the socket is ready for any of `events`, or the timeout passes (-1 waits forever).
    /// Returns the events that are ready, empty on timeout.
    public func poll(_ events: Events, timeoutMilliseconds: Int) throws(ZMQError) -> Events {
        let handle = try open("zmq_poll")
        var item = zmq_pollitem_t(socket: handle, fd: -1, events: events.rawValue, revents: 0)
        while zmq_poll(&item, 1, timeoutMilliseconds) < 0 {
            let error = ZMQError.last("zmq_poll")
            if error.code == EINTR { continue }
            throw error
        }
        return Events(rawValue: item.revents).intersection(events)
    }

    /// Waits until the socket is ready for `events` or `fd` (a plain file descriptor, such as an
    /// eventfd other threads write to wake this one) is readable, or the timeout passes.
    public func poll(_ events: Events, orReadable fd: Int32, timeoutMilliseconds: Int) throws(ZMQError) -> (
        socket: Events, fdReadable: Bool
    ) {
        let handle = try open("zmq_poll")
        var items = [
            zmq_pollitem_t(socket: handle, fd: -1, events: events.rawValue, revents: 0),
            zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0),
        ]
        while zmq_poll(&items, 2, timeoutMilliseconds) < 0 {
            let error = ZMQError.last("zmq_poll")
            if error.code == EINTR { continue }
            throw error
        }
        return (Events(rawValue: items[0].revents).intersection(events), items[1].revents & Int16(ZMQ_POLLIN) != 0)
    }

    /// Waits on several sockets at once; returns the ready events of each, in order.
    public static func poll(
        _ sockets: [(ZMQSocket, Events)],
        timeoutMilliseconds: Int
    ) throws(ZMQError) -> [Events] {
        var items: [zmq_pollitem_t] = []
        items.reserveCapacity(sockets.count)
        for (socket, events) in sockets {
            items.append(
                zmq_pollitem_t(socket: try socket.open("zmq_poll"), fd: -1, events: events.rawValue, revents: 0))
        }
        while zmq_poll(&items, Int32(items.count), timeoutMilliseconds) < 0 {
            let error = ZMQError.last("zmq_poll")
            if error.code == EINTR { continue }
            throw error
        }
        return zip(items, sockets).map { Events(rawValue: $0.0.revents).intersection($0.1.1) }
    }

    /// Starts libzmq's event monitor: events in `mask` (`ZMQ_EVENT_*`) are published on a PAIR
    /// socket at `endpoint` (an `inproc://` name), which the caller connects to read them.
    public func monitor(_ endpoint: String, events mask: Int32) throws(ZMQError) {
        let handle = try open("zmq_socket_monitor(\(endpoint))")
        if zmq_socket_monitor(handle, endpoint, mask) != 0 {
            throw ZMQError.last("zmq_socket_monitor(\(endpoint))")
        }
    }
}
