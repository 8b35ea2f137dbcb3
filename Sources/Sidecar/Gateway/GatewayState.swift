import NIOSSL
import Synchronization

/// A gateway's configuration as it serves now: its routes and its HTTPS certificate, swapped
/// whole when the file is reloaded (SIGHUP). Each new request reads the routes once and keeps
/// them, each new TLS connection the certificate: what is under way finishes as it began.
final class GatewayState: Sendable {
    private struct Current: Sendable {
        var routes: GatewayRoutes
        var tls: NIOSSLContext?
    }

    private let current: Mutex<Current>

    init(routes: GatewayRoutes, tls: NIOSSLContext?) {
        current = Mutex(Current(routes: routes, tls: tls))
    }

    /// The routes now; empty when the file has no providers (then the listener's `--upstream` serves).
    var routes: GatewayRoutes { current.withLock { $0.routes } }

    /// The HTTPS listener's certificate now.
    var tls: NIOSSLContext? { current.withLock { $0.tls } }

    func replace(routes: GatewayRoutes, tls: NIOSSLContext?) {
        current.withLock { $0 = Current(routes: routes, tls: tls) }
    }
}
