import NIOCore
import Synchronization
import Wire

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The listening sockets, by listener ("reverse", "https", "mitm"). They are bound here rather
/// than by NIO so that a hot upgrade (SIGUSR2) can hand them to the new process, which goes on
/// accepting from the same queue: no connection waits on a closed port, none is lost. A process
/// started that way finds them in `LLMTAP_LISTEN_FDS` (`reverse=5,https=6`) and takes each one that
/// still listens where its listener should.
final class ListeningSockets: Sendable {
    static let variable = "LLMTAP_LISTEN_FDS"

    private struct State {
        /// Handed over by the process before, not yet taken.
        var inherited: [String: CInt]
        /// Accepting now: what an upgrade hands on.
        var listening: [String: CInt] = [:]
    }

    private let state: Mutex<State>

    init(environment: [String: String]) {
        var inherited: [String: CInt] = [:]
        for entry in (environment[Self.variable] ?? "").split(separator: ",") {
            let parts = entry.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let descriptor = CInt(parts[1]), descriptor > 2 else { continue }
            // Only this process may use it: a process it starts gets it again only by an upgrade.
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
            inherited[String(parts[0])] = descriptor
        }
        state = Mutex(State(inherited: inherited))
    }

    /// A listening socket for `name` on `address`: the one inherited for it when it listens there,
    /// otherwise a new one (SO_REUSEADDR, backlog 1024). The caller owns it.
    func socket(for name: String, address: ListenAddress) throws -> CInt {
        let resolved = try SocketAddress.makeAddressResolvingHost(address.host, port: address.port)
        if let descriptor = state.withLock({ $0.inherited.removeValue(forKey: name) }) {
            if Self.listens(descriptor, at: resolved) { return descriptor }
            close(descriptor)
        }
        return try Self.bind(resolved)
    }

    /// `descriptor` accepts for `name`, as a hot upgrade should hand it on.
    func listening(_ name: String, descriptor: CInt) {
        state.withLock { $0.listening[name] = descriptor }
    }

    /// `name` stopped accepting (draining or gone): an upgrade no longer hands it on.
    func stopped(_ name: String) {
        _ = state.withLock { $0.listening.removeValue(forKey: name) }
    }

    /// Copies of the accepting sockets, by listener, numbered from `above` up (close-on-exec: the
    /// caller places them in the process it starts). The caller closes them once it has.
    func copiesForHandOver(above: CInt) throws -> [(name: String, descriptor: CInt)] {
        try state.withLock { state in
            var copies: [(name: String, descriptor: CInt)] = []
            for (name, descriptor) in state.listening.sorted(by: { $0.key < $1.key }) {
                let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, above)
                guard copy >= 0 else {
                    let error = errno
                    for copy in copies { close(copy.descriptor) }
                    throw SocketError("copying the \(name) listener's socket", error)
                }
                copies.append((name, copy))
            }
            return copies
        }
    }

    /// Closes what was inherited and not taken (a listener the new settings no longer have).
    func closeUnclaimed() {
        let left = state.withLock { state in
            defer { state.inherited = [:] }
            return Array(state.inherited.values)
        }
        for descriptor in left { close(descriptor) }
    }

    private static func bind(_ address: SocketAddress) throws -> CInt {
        let family: CInt
        switch address {
        case .v4: family = AF_INET
        case .v6: family = AF_INET6
        case .unixDomainSocket: throw ConfigurationError("a listener needs an IP address, not \(address)")
        }
        let descriptor = Glibc.socket(family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw SocketError("socket", errno) }
        var one: CInt = 1
        var result = setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        if result == 0 {
            result = address.withSockAddr { pointer, length in Glibc.bind(descriptor, pointer, socklen_t(length)) }
        }
        if result == 0 { result = listen(descriptor, 1024) }
        guard result == 0 else {
            let error = SocketError("bind", errno)
            close(descriptor)
            throw error
        }
        return descriptor
    }

    /// Whether `descriptor` is a TCP socket listening on `address` (a port 0 matches any port).
    private static func listens(_ descriptor: CInt, at address: SocketAddress) -> Bool {
        var accepting: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0, accepting == 1 else {
            return false
        }
        var storage = sockaddr_storage()
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &size) }
        }
        guard named == 0 else { return false }
        let local: SocketAddress
        switch CInt(storage.ss_family) {
        case AF_INET:
            local = withUnsafeBytes(of: storage) { .init($0.load(as: sockaddr_in.self), host: "") }
        case AF_INET6:
            local = withUnsafeBytes(of: storage) { .init($0.load(as: sockaddr_in6.self), host: "") }
        default:
            return false
        }
        return local.ipAddress == address.ipAddress && (address.port == 0 || local.port == address.port)
    }
}

struct SocketError: Error, CustomStringConvertible {
    let description: String
    init(_ call: String, _ error: CInt) {
        description = "\(call): \(String(cString: strerror(error))) (errno \(error))"
    }
}
