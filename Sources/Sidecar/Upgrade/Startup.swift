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
    /// The parts not up yet: listeners, and after an upgrade the policy table.
    private let readiness: Mutex<Readiness>
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
        readiness = Mutex(Readiness())
        notifySocket = environment["NOTIFY_SOCKET"]
        self.logger = logger
        // A process this one starts learns of sockets only from its own upgrade.
        unsetenv(ListeningSockets.variable)
        unsetenv(Self.readyVariable)
    }

    var isUpgrade: Bool { readyDescriptor != nil }

    /// What must be up before the process is: `listeners` listeners and, with `policy`, a process
    /// started by an upgrade waits for its first policy snapshot too (up to `policyWaitSeconds`), so that
    /// no virtual-key request it takes over gets the 503 of a sidecar without one. A first start
    /// does not wait: the collector may come up after it.
    func expect(listeners: Int, policy: Bool = false, policyWaitSeconds: Double = 5) {
        let waitsForPolicy = policy && isUpgrade
        perform(readiness.withLock { $0.expect(listeners: listeners, policy: waitsForPolicy) })
        guard waitsForPolicy else { return }
        let thread = Thread { [self] in
            Thread.sleep(forTimeInterval: policyWaitSeconds)
            perform(readiness.withLock { $0.policyWaitEnded() }, waited: policyWaitSeconds)
        }
        thread.name = "llmtap-policy-wait"
        thread.start()
    }

    /// The first policy snapshot is in the table.
    func policyReady() {
        perform(readiness.withLock { $0.policyArrived() })
    }

    /// A first start writes the PID file before it listens: a path it can't write stops it there.
    func writePIDFileAtStart() throws {
        guard let pidFile, !isUpgrade else { return }
        try PIDFile.write(pidFile, pid: getpid())
    }

    /// One more listener accepts. Once all do, the service manager hears it; a process started
    /// by an upgrade also writes the PID file and tells the process before it, which then drains.
    func listenerReady() {
        perform(readiness.withLock { $0.listenerUp() })
    }

    private func perform(_ action: Readiness.Action, waited: Double = 0) {
        switch action {
        case .wait: return
        case .ready: break
        case .readyWithoutPolicy:
            logger.warning(
                "hot upgrade: no policy snapshot from the collector yet; taking over without one (virtual-key requests get 503 until it comes)",
                metadata: ["waited_s": "\(waited)"])
        }
        becameReady()
    }

    private func becameReady() {
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
