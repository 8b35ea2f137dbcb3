import Foundation
import Logging
import Synchronization
import Wire

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// How this process comes up and says it is up: its listening sockets (its own, or handed over
/// by the process it replaces), the PID file, and, after a hot upgrade, the word to the process
/// that started it, which waits for it before it stops accepting.
final class Startup: Sendable {
    /// The pipe a process started by a hot upgrade says "ready" on.
    static let readyVariable = "LLMTAP_UPGRADE_READY_FD"

    let sockets: ListeningSockets
    let pidFile: String?
    /// Set when a hot upgrade started this process.
    private let readyDescriptor: CInt?
    private let waiting: Mutex<Int>
    /// systemd's `$NOTIFY_SOCKET`, when it runs the sidecar as `Type=notify`.
    private let notifySocket: String?
    private let logger: Logger

    init(pidFile: String?, environment: [String: String], logger: Logger) {
        sockets = ListeningSockets(environment: environment)
        self.pidFile = pidFile
        var descriptor: CInt?
        if let text = environment[Self.readyVariable], let number = CInt(text), number > 2 {
            _ = fcntl(number, F_SETFD, FD_CLOEXEC)
            descriptor = number
        }
        readyDescriptor = descriptor
        waiting = Mutex(0)
        notifySocket = environment["NOTIFY_SOCKET"]
        self.logger = logger
        // A process this one starts learns of sockets only from its own upgrade.
        unsetenv(ListeningSockets.variable)
        unsetenv(Self.readyVariable)
    }

    var isUpgrade: Bool { readyDescriptor != nil }

    /// How many listeners must be up before the process is.
    func expect(listeners: Int) {
        waiting.withLock { $0 = listeners }
    }

    /// A first start writes the PID file before it listens: a path it can't write stops it there.
    func writePIDFileAtStart() throws {
        guard let pidFile, !isUpgrade else { return }
        try PIDFile.write(pidFile, pid: getpid())
    }

    /// One more listener accepts. Once all do, the service manager hears it; a process started
    /// by an upgrade also writes the PID file and tells the process before it, which then drains.
    func listenerReady() {
        let left = waiting.withLock { waiting in
            waiting -= 1
            return waiting
        }
        guard left == 0 else { return }
        ServiceManagerNotifier.notify("READY=1\nMAINPID=\(getpid())\n", socketPath: notifySocket)
        guard let readyDescriptor else { return }
        sockets.closeUnclaimed()
        if let pidFile {
            do {
                try PIDFile.write(pidFile, pid: getpid())
            } catch {
                logger.error("cannot write the PID file", metadata: ["pid_file": "\(pidFile)", "error": "\(error)"])
            }
        }
        let word = Array("ready \(getpid())\n".utf8)
        _ = word.withUnsafeBytes { write(readyDescriptor, $0.baseAddress, $0.count) }
        close(readyDescriptor)
        logger.notice(
            "hot upgrade: this process took over the listening sockets; the one before it drains",
            metadata: ["pid": "\(getpid())", "parent": "\(getppid())"])
    }

    /// The process ends: its PID file goes, unless a process started since has written its own.
    func stopped() {
        guard let pidFile else { return }
        PIDFile.remove(pidFile, ifItNames: getpid())
    }
}

/// `--pid-file`: the process id and a newline, put in place by a rename, so a reader sees the old
/// file or the new one, never half of one.
enum PIDFile {
    static func write(_ path: String, pid: pid_t) throws {
        let temporary = "\(path).\(pid).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw SocketError("open \(temporary)", errno) }
        let text = Array("\(pid)\n".utf8)
        let written = text.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        let error = errno
        close(descriptor)
        guard written == text.count else {
            unlink(temporary)
            throw SocketError("write \(temporary)", error)
        }
        guard rename(temporary, path) == 0 else {
            let error = errno
            unlink(temporary)
            throw SocketError("rename to \(path)", error)
        }
    }

    static func read(_ path: String) -> pid_t? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return pid_t(String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    static func remove(_ path: String, ifItNames pid: pid_t) {
        if read(path) == pid { unlink(path) }
    }
}
