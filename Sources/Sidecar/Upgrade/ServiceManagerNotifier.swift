#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET`. After a hot
/// upgrade the new process says `MAINPID=` too, so systemd follows it (with `NotifyAccess=all`)
/// instead of taking the old process's exit for the service's.
enum ServiceManagerNotifier {
    /// Sends `message` when a service manager asked for it; false when none did or it failed.
    @discardableResult
    static func notify(_ message: String, socketPath: String?) -> Bool {
        guard let socketPath, !socketPath.isEmpty else { return false }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = Array(socketPath.utf8)
        // An abstract socket: its name starts with a NUL, not an '@'.
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
        let descriptor = socket(AF_UNIX, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                bytes.withUnsafeBytes { sendto(descriptor, $0.baseAddress, $0.count, 0, address, length) }
            }
        }
        return sent == bytes.count
    }
}
