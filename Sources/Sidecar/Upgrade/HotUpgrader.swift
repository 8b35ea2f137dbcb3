import Foundation
import Logging
import ServiceLifecycle
import UnixSignals
import Wire

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// SIGUSR2: a hot upgrade. The binary at this process's path starts again with the same
/// arguments, inheriting the listening sockets; once it says it is ready, this process stops
/// accepting (the new one goes on from the same queues) and drains within --drain-timeout, as on
/// SIGTERM. A new process that fails, or is not ready within `readyTimeout`, is stopped, said
/// why, and this one keeps serving.
struct HotUpgrader: Service {
    let executable: String
    let arguments: [String]
    let startup: Startup
    let readyTimeout: Duration
    let logger: Logger

    /// This process's binary, by the path it was started from (a rename over it is the upgrade).
    static func currentExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return CommandLine.arguments[0] }
        let path = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.hasSuffix(" (deleted)") ? String(path.dropLast(" (deleted)".count)) : path
    }

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 on), which Swift's Glibc module leaves out.
    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, CInt) -> CInt
    private static let closeFrom: CloseFrom? = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np").map {
        unsafeBitCast($0, to: CloseFrom.self)
    }

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sigusr2).cancelOnGracefulShutdown() {
            // Returning shuts the service group down gracefully: the listeners drain.
            if await upgrade() { return }
        }
    }

    enum Outcome: Equatable {
        case ready(pid_t)
        case failed(String)
    }

    /// Starts the new process and waits for it. True when it took over.
    func upgrade() async -> Bool {
        logger.notice("hot upgrade: starting the new process", metadata: ["executable": "\(executable)"])
        let outcome: Outcome
        do {
            let (pid, readEnd) = try spawn()
            outcome = await withCheckedContinuation { continuation in
                Thread.detachNewThread { [readyTimeout] in
                    continuation.resume(returning: Self.awaitReady(pid: pid, pipe: readEnd, timeout: readyTimeout))
                }
            }
        } catch {
            outcome = .failed("\(error)")
        }
        switch outcome {
        case .ready(let pid):
            logger.notice(
                "hot upgrade: the new process is ready; this one stops accepting and drains",
                metadata: ["new_pid": "\(pid)"])
            return true
        case .failed(let why):
            logger.error(
                "hot upgrade failed; this process keeps serving", metadata: ["error": "\(why)"])
            return false
        }
    }

    /// posix_spawn with nothing open but stdin, stdout and stderr, the listening sockets (from
    /// descriptor 3 on) and a pipe's write end after them.
    private func spawn() throws -> (pid_t, CInt) {
        // Numbered above where they go in the child, so that placing one never overwrites another.
        let above: CInt = 16
        let copies = try startup.sockets.copiesForHandOver(above: above)
        defer { for copy in copies { close(copy.descriptor) } }
        var ends: [CInt] = [0, 0]
        guard pipe(&ends) == 0 else { throw SocketError("pipe", errno) }
        let writeEnd = fcntl(ends[1], F_DUPFD_CLOEXEC, above)
        close(ends[1])
        _ = fcntl(ends[0], F_SETFD, FD_CLOEXEC)
        guard writeEnd >= 0 else {
            close(ends[0])
            throw SocketError("pipe", errno)
        }
        defer { close(writeEnd) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var placed: [String] = []
        for (index, copy) in copies.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, copy.descriptor, 3 + CInt(index))
            placed.append("\(copy.name)=\(3 + index)")
        }
        let readyDescriptor = 3 + CInt(copies.count)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, readyDescriptor)
        // Nothing else of this process's (an inherited pipe someone waits on to close, say).
        guard let closeFrom = Self.closeFrom, closeFrom(&actions, readyDescriptor + 1) == 0 else {
            close(ends[0])
            throw ConfigurationError("this C library has no posix_spawn_file_actions_addclosefrom_np (glibc 2.34)")
        }
        var environment = ProcessInfo.processInfo.environment
        environment[ListeningSockets.variable] = placed.joined(separator: ",")
        environment[Startup.readyVariable] = "\(readyDescriptor)"
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in argv + envp { free(pointer) }
        }
        // The thread spawning may block signals (a dispatch worker does); the new process must not,
        // or SIGTERM would never reach it. Ignored signals stay ignored until it traps them.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            close(ends[0])
            throw SocketError("posix_spawn \(executable)", result)
        }
        return (pid, ends[0])
    }

    /// Blocks (on its own thread) until the child says "ready", exits, or runs out of time; a
    /// child that is not ready in time is stopped.
    static func awaitReady(pid: pid_t, pipe: CInt, timeout: Duration) -> Outcome {
        defer { close(pipe) }
        let deadline = ContinuousClock.now + timeout
        var heard: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { break }
            var poller = pollfd(fd: pipe, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(
                clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            let polled = poll(&poller, 1, milliseconds)
            if polled < 0 && errno == EINTR { continue }
            guard polled > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(pipe, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                // The pipe closed without a word: the child ended, or is ending.
                return .failed("the new process \(pid) \(reap(pid)) before it was ready")
            }
            heard += buffer[..<count]
            if heard.contains(UInt8(ascii: "\n")), String(decoding: heard, as: UTF8.self).hasPrefix("ready") {
                return .ready(pid)
            }
        }
        kill(pid, SIGTERM)
        return .failed(
            "the new process \(pid) was not ready within \(timeout); it was stopped (\(reap(pid)))")
    }

    /// Waits (up to a few seconds) for the child to end, and says how it did.
    private static func reap(_ pid: pid_t) -> String {
        var status: CInt = 0
        for _ in 0..<100 {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                let signal = status & 0x7f
                if signal == 0 { return "exited with status \((status >> 8) & 0xff)" }
                return "was ended by signal \(signal)"
            }
            if result < 0 { return "ended" }
            usleep(50_000)
        }
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
        return "did not end, and was killed"
    }
}
