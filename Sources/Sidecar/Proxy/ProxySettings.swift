import NIOCore

/// What every client connection's handler shares.
struct ProxySettings: Sendable {
    let tap: TapSettings
    let tenantHasher: TenantHasher
    /// The upstream may be silent this long (before its answer, or between two pieces of it).
    let upstreamTimeout: TimeAmount
    /// A client connection may be idle this long between requests, or take this long to send a
    /// request head (a slow-loris client gets 408).
    let clientTimeout: TimeAmount
    let maxHeaderBytes: Int
    /// Virtual keys, limits and budgets; nil without `--policy`.
    var policy: PolicyGate?
    /// A configuration's providers (`--config`): each request goes where its route says, not to
    /// the listener's one upstream.
    var gateway: GatewayState?
    /// Client connections open at once, both listeners together (`--max-connections`).
    var maxConnections = 10_000
    /// Streams one HTTP/2 client connection may have open at once (`--max-concurrent-streams`).
    var maxConcurrentStreams = 100
    /// A WebSocket message (all its frames) may be this large; past it, the session ends with 1009
    /// (`--max-websocket-message-bytes`).
    var maxWebSocketMessageBytes = 16 << 20
    /// Bytes of pipelined requests held while an exchange is under way; past it, reading pauses.
    let maxPipelinedBytes = 1 << 20
    /// Body bytes held to find the model for a key limited to some models; past it, 413.
    let maxModelCheckBytes = 4 << 20

    /// The limits an exchange's state machine works with.
    var exchangeLimits: ExchangeLimits {
        ExchangeLimits(
            upstreamTimeout: upstreamTimeout, clientTimeout: clientTimeout, maxModelCheckBytes: maxModelCheckBytes,
            maxPipelinedBytes: maxPipelinedBytes)
    }
}
