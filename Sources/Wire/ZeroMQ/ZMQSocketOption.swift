import CZeroMQ

/// The socket options LLMTap sets. Each maps to one `zmq_setsockopt` call.
public enum ZMQSocketOption: Sendable, Equatable {
    /// `ZMQ_SNDHWM`: messages queued toward one peer before sends would block.
    case sendHighWaterMark(Int32)
    /// `ZMQ_RCVHWM`: messages queued from one peer before libzmq stops reading it.
    case receiveHighWaterMark(Int32)
    /// `ZMQ_LINGER`: how long closing waits to deliver queued messages; -1 forever, 0 drop at once.
    case linger(milliseconds: Int32)
    /// `ZMQ_RECONNECT_IVL`: first wait before reconnecting a lost connection.
    case reconnectInterval(milliseconds: Int32)
    /// `ZMQ_RECONNECT_IVL_MAX`: the back-off ceiling for reconnects; 0 keeps the first interval.
    case reconnectIntervalMax(milliseconds: Int32)
    /// `ZMQ_IMMEDIATE`: queue only toward completed connections, so that sends to a peer
    /// that is away fail with `EAGAIN` instead of filling a buffer nobody reads.
    case immediate(Bool)
    /// `ZMQ_MAXMSGSIZE`: a peer that sends a larger message is disconnected; -1 for no limit.
    case maxMessageSize(Int64)
    /// `ZMQ_SUBSCRIBE`: a SUB socket receives messages whose first frame starts with this prefix.
    case subscribe([UInt8])
    /// `ZMQ_UNSUBSCRIBE`: undoes one `subscribe` with the same prefix.
    case unsubscribe([UInt8])
    /// `ZMQ_SNDBUF` / `ZMQ_RCVBUF`: the kernel's TCP buffer sizes in bytes; -1 keeps the OS default.
    /// XPUB: pass every subscription message up, duplicates included, so each joining subscriber is seen.
    case xpubVerbose(Bool)
    case sendBufferSize(Int32)
    case receiveBufferSize(Int32)

    var name: String {
        switch self {
        case .sendHighWaterMark: "ZMQ_SNDHWM"
        case .receiveHighWaterMark: "ZMQ_RCVHWM"
        case .linger: "ZMQ_LINGER"
        case .reconnectInterval: "ZMQ_RECONNECT_IVL"
        case .reconnectIntervalMax: "ZMQ_RECONNECT_IVL_MAX"
        case .immediate: "ZMQ_IMMEDIATE"
        case .maxMessageSize: "ZMQ_MAXMSGSIZE"
        case .subscribe: "ZMQ_SUBSCRIBE"
        case .unsubscribe: "ZMQ_UNSUBSCRIBE"
        case .xpubVerbose: "ZMQ_XPUB_VERBOSE"
        case .sendBufferSize: "ZMQ_SNDBUF"
        case .receiveBufferSize: "ZMQ_RCVBUF"
        }
    }

    /// Calls `body` with the option's libzmq number and its value's bytes.
    func withRawValue<R>(_ body: (Int32, UnsafeRawBufferPointer) -> R) -> R {
        func int32(_ option: Int32, _ value: Int32) -> R {
            withUnsafeBytes(of: value) { body(option, $0) }
        }
        switch self {
        case .sendHighWaterMark(let value): return int32(ZMQ_SNDHWM, value)
        case .receiveHighWaterMark(let value): return int32(ZMQ_RCVHWM, value)
        case .linger(let value): return int32(ZMQ_LINGER, value)
        case .reconnectInterval(let value): return int32(ZMQ_RECONNECT_IVL, value)
        case .reconnectIntervalMax(let value): return int32(ZMQ_RECONNECT_IVL_MAX, value)
        case .immediate(let on): return int32(ZMQ_IMMEDIATE, on ? 1 : 0)
        case .xpubVerbose(let on): return int32(ZMQ_XPUB_VERBOSE, on ? 1 : 0)
        case .sendBufferSize(let value): return int32(ZMQ_SNDBUF, value)
        case .receiveBufferSize(let value): return int32(ZMQ_RCVBUF, value)
        case .maxMessageSize(let value): return withUnsafeBytes(of: value) { body(ZMQ_MAXMSGSIZE, $0) }
        case .subscribe(let prefix): return prefix.withUnsafeBytes { body(ZMQ_SUBSCRIBE, $0) }
        case .unsubscribe(let prefix): return prefix.withUnsafeBytes { body(ZMQ_UNSUBSCRIBE, $0) }
        }
    }
}
