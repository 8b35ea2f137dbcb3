import Foundation
import Logging
import NIOCore
import Synchronization
import Wire

/// A provider key that a command prints (`$(command)` in the file: an OAuth token, say). It runs
/// once when the configuration is read, and what it printed (its last newline dropped) is the key
/// until `refresh_interval` has passed or the upstream answers 401; then it runs again in the
/// background while the key before keeps serving, one run at a time. A failed run is logged with
/// its exit status, never with what it printed, and the key before stays.
final class CommandKey: Sendable {
    let command: String
    let provider: String
    private let refreshNanos: UInt64
    private let keyHasher: TenantHasher
    private let logger: Logger

    private struct State {
        var value: String
        var id: String
        var fetchedAt: UInt64
        var running = false
        var runs = 1
    }
    private let state: Mutex<State>

    /// How long a run may take before it is stopped and counts as failed.
    static let runTimeout: Duration = .seconds(30)
    /// A 401 runs the command again only if its key is at least this old: a bad token under
    /// load must not run it for every request.
    static let minimumRerunNanos: UInt64 = 1_000_000_000

    /// Runs the command now (a configuration that can't get its key is refused).
    init(
        command: String, provider: String, refreshIntervalSeconds: Double,
        keyHasher: TenantHasher = TenantHasher(key: TenantHasher.defaultKey), logger: Logger
    ) throws(ConfigurationError) {
        self.command = command
        self.provider = provider
        refreshNanos = UInt64(max(1, refreshIntervalSeconds) * 1e9)
        self.keyHasher = keyHasher
        self.logger = logger
        switch Self.run(command) {
        case .success(let value):
            state = Mutex(
                State(value: value, id: keyHasher.tenant(for: value), fetchedAt: NIODeadline.now().uptimeNanoseconds))
            logger.info(
                "a key command ran", metadata: ["provider": "\(provider)", "runs": "1", "why": "start"])
        case .failure(let failure):
            throw ConfigurationError("provider \(provider): its $(command) key \(failure)")
        }
    }

    /// The key now; a refresh starts in the background once it is due.
    func value(now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> String {
        current(now: now).value
    }

    /// The key now and its id; a refresh starts in the background once it is due.
    func current(now: UInt64 = NIODeadline.now().uptimeNanoseconds) -> (value: String, id: String) {
        let (value, id, due) = state.withLock { state -> (String, String, Bool) in
            guard !state.running, now - state.fetchedAt >= refreshNanos else { return (state.value, state.id, false) }
            state.running = true
            return (state.value, state.id, true)
        }
        if due { refresh(why: "refresh_interval") }
        return (value, id)
    }

    /// The upstream answered 401 to the key: run the command again (unless it just ran).
    func refused(now: UInt64 = NIODeadline.now().uptimeNanoseconds) {
        let due = state.withLock { state -> Bool in
            guard !state.running, now - state.fetchedAt >= Self.minimumRerunNanos else { return false }
            state.running = true
            return true
        }
        if due { refresh(why: "the upstream answered 401") }
    }

    var runs: Int { state.withLock { $0.runs } }

    private func refresh(why: String) {
        Thread.detachNewThread { [self] in
            let result = Self.run(command)
            let id = (try? result.get()).map(keyHasher.tenant(for:)) ?? ""
            let runs = state.withLock { state -> Int in
                state.running = false
                state.runs += 1
                if case .success(let value) = result {
                    state.value = value
                    state.id = id
                    state.fetchedAt = NIODeadline.now().uptimeNanoseconds
                } else {
                    // The key before serves on; the next try waits for the next interval.
                    state.fetchedAt = NIODeadline.now().uptimeNanoseconds
                }
                return state.runs
            }
            switch result {
            case .success:
                logger.info(
                    "a key command ran", metadata: ["provider": "\(provider)", "runs": "\(runs)", "why": "\(why)"])
            case .failure(let failure):
                logger.error(
                    "a key command failed; the key before stays in use",
                    metadata: ["provider": "\(provider)", "runs": "\(runs)", "error": "\(failure)"])
            }
        }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// `/bin/sh -c command`: what it printed on stdout, or why not (its exit status; never its output).
    static func run(_ command: String) -> Result<String, Failure> {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        let output = Pipe()
        process.standardOutput = output
        // What it says on stderr may hold anything: it is not logged (run the command by hand to see it).
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            return .failure(Failure(description: "could not start: \(error)"))
        }
        let timedOut = Mutex(false)
        let watchdog = DispatchWorkItem {
            guard process.isRunning else { return }
            timedOut.withLock { $0 = true }
            process.terminate()
        }
        DispatchQueue.global().asyncAfter(
            deadline: .now() + .seconds(Int(runTimeout.components.seconds)), execute: watchdog)
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        watchdog.cancel()
        if timedOut.withLock({ $0 }) {
            return .failure(Failure(description: "did not finish within \(runTimeout) and was stopped"))
        }
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let how =
                process.terminationReason == .exit
                ? "exited with status \(process.terminationStatus)" : "was ended by signal \(process.terminationStatus)"
            return .failure(Failure(description: how))
        }
        var value = String(decoding: data, as: UTF8.self)
        while value.last == "\n" || value.last == "\r" { value.removeLast() }
        guard !value.isEmpty, !value.contains("\n") else {
            return .failure(
                Failure(description: value.isEmpty ? "printed nothing" : "printed more than one line"))
        }
        return .success(value)
    }
}
