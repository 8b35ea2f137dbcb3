import Foundation
import Logging
import Wire

/// Where the repository's files are, for tests that read committed files or build the C consumer.
public let repositoryRoot: URL = {
    var url = URL(fileURLWithPath: #filePath)
    while url.path != "/" {
        url.deleteLastPathComponent()
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
    }
    fatalError("Package.swift not found above \(#filePath)")
}()

/// The folder `swift build` put the products in: the one holding the test bundle.
public let productsDirectory: URL = {
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    var url = bundle
    while url.path != "/" {
        if url.pathExtension == "xctest" { return url.deletingLastPathComponent() }
        url.deleteLastPathComponent()
    }
    return bundle.deletingLastPathComponent()
}()

/// A logger for tests: warnings and worse, to standard error.
public func testLogger(_ label: String = "llmtap.test") -> Logger {
    var logger = Logger(label: label) { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = .warning
    return logger
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
public func freeTCPPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket() failed: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { throw TestFailure("bind() failed: errno \(errno)") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Polls `condition` until it holds or `timeout` passes. Returns whether it held. Tests wait on
/// conditions, never on fixed sleeps, and the timeouts are generous: these machines are shared.
@discardableResult
public func eventually(timeout: Duration = .seconds(20), _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        usleep(5_000)
    }
    return try condition()
}

/// A thread-safe list, for collecting what a handler on another thread received.
public final class Collected<Element: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Element] = []

    public init() {}

    public func append(_ item: Element) {
        lock.lock()
        items.append(item)
        lock.unlock()
    }

    public var all: [Element] {
        lock.lock()
        defer { lock.unlock() }
        return items
    }

    public var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return items.count
    }
}

/// One of our binaries, started as a user would start it, with its output kept in files.
public final class RunningProcess: @unchecked Sendable {
    public let process = Process()
    public let stdoutURL: URL
    public let stderrURL: URL

    /// One of our products, from the build's products folder.
    public convenience init(product: String, arguments: [String], environment: [String: String] = [:]) throws {
        let executable = productsDirectory.appendingPathComponent(product)
        guard FileManager.default.isExecutableFile(atPath: executable.path) else {
            throw TestFailure("\(executable.path) is not built: run `swift build` before the tests")
        }
        try self.init(executable: executable, arguments: arguments, environment: environment)
    }

    /// Any program (the test Python, say), run in `directory` if given.
    public init(
        executable: URL, arguments: [String], environment: [String: String] = [:], directory: URL? = nil,
        stdinText: String? = nil
    ) throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-\(executable.lastPathComponent)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        stdoutURL = folder.appendingPathComponent("stdout")
        stderrURL = folder.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.currentDirectoryURL = directory
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        if let stdinText {
            let stdinURL = folder.appendingPathComponent("stdin")
            try Data(stdinText.utf8).write(to: stdinURL)
            process.standardInput = try FileHandle(forReadingFrom: stdinURL)
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        try process.run()
    }

    public var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    public func signal(_ signal: Int32) {
        // Never signal a pid that may have been reused by now.
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Waits for the process to exit; returns its exit status, or nil if it is still running after `timeout`.
    public func waitForExit(timeout: Duration = .seconds(20)) -> Int32? {
        guard eventually(timeout: timeout, { !process.isRunning }) else { return nil }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// The Python that has Tests/requirements.txt installed: `LLMTAP_PYTHON` (scripts/test sets it),
/// or the virtualenv scripts/test makes in .build/python.
public func testPython() throws -> String {
    if let python = ProcessInfo.processInfo.environment["LLMTAP_PYTHON"],
        FileManager.default.isExecutableFile(atPath: python)
    {
        return python
    }
    let venv = repositoryRoot.appendingPathComponent(".build/python/bin/python").path
    guard FileManager.default.isExecutableFile(atPath: venv) else {
        throw TestFailure(
            "no Python with the test packages: run scripts/test, which makes .build/python from Tests/requirements.txt")
    }
    return venv
}
