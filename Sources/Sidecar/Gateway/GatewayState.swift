import NIOSSL
import Synchronization

/// A gateway's configuration as it serves now: its routes and its HTTPS certificate, swapped
/// whole when the file is reloaded (SIGHUP). Each new request reads the routes once and keeps
/// them, each new TLS connection the certificate: what is under way finishes as it began.
final class GatewayState: Sendable {
    private struct Current: Sendable {
        var routes: GatewayRoutes
        var tls: ServerTLS?
    }

    private let current: Mutex<Current>
    /// Counts replacements: a connection keeps the routes it read with the count they came
    /// with, and reads them again (under the lock) only once it changed, so a request of a
    /// keep-alive connection costs one load, not a lock both event loops take.
    private let generation = Atomic<Int>(0)

    /// Routes as read by one connection, and the replacement they came from.
    struct Cached {
        fileprivate let generation: Int
        let routes: GatewayRoutes
    }

    init(routes: GatewayRoutes, tls: ServerTLS?) {
        current = Mutex(Current(routes: routes, tls: tls))
    }

    /// The routes now; empty when the file has no providers (then the listener's `--upstream` serves).
    var routes: GatewayRoutes { current.withLock { $0.routes } }

    /// The routes now, from `cache` while no reload has replaced them since.
    func routes(cache: inout Cached?) -> GatewayRoutes {
        let now = generation.load(ordering: .acquiring)
        if let cache, cache.generation == now { return cache.routes }
        let read = current.withLock { Cached(generation: generation.load(ordering: .relaxed), routes: $0.routes) }
        cache = read
        return read.routes
    }

    /// The HTTPS listener's certificate now.
    var tls: ServerTLS? { current.withLock { $0.tls } }

    func replace(routes: GatewayRoutes, tls: ServerTLS?) {
        current.withLock {
            $0 = Current(routes: routes, tls: tls)
            generation.add(1, ordering: .releasing)
        }
    }
}
