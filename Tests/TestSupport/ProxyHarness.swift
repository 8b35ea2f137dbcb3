import CZeroMQ
import Foundation
import Wire

/// Frames received on a raw PULL socket, kept as the bytes that crossed the wire.
public final class RawFrameCollector: @unchecked Sendable {
    public let endpoint: String
    private let lock = NSLock()
    private var frames: [[UInt8]] = []
    private var stopping = false
    private let finished = DispatchSemaphore(value: 0)

    public init() throws {
        endpoint = "tcp://127.0.0.1:\(try freeTCPPort())"
        let ready = DispatchSemaphore(value: 0)
        let endpoint = self.endpoint
        Thread { [self] in
            defer { finished.signal() }
            guard let context = try? ZMQContext(), let pull = try? ZMQSocket(context: context, kind: .pull) else {
                ready.signal()
                return
            }
            try? pull.set(.linger(milliseconds: 0))
            try? pull.bind(endpoint)
            ready.signal()
            while !isStopping {
                guard let message = try? pull.receiveMultipart(timeoutMilliseconds: 50) else { continue }
                lock.lock()
                frames.append(contentsOf: message)
                lock.unlock()
            }
            pull.close()
        }.start()
        ready.wait()
    }

    private var isStopping: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopping
    }

    public var rawFrames: [[UInt8]] {
        lock.lock()
        defer { lock.unlock() }
        return frames
    }

    /// Every frame decoded; a frame that does not decode fails the caller's expectations by its absence.
    public var envelopes: [DecodedEnvelope] {
        var decoder = EnvelopeDecoder()
        return rawFrames.compactMap { frame in frame.withUnsafeBytes { try? decoder.decode($0).get() } }
    }

    /// The records of one exchange, in arrival order (heartbeats left out).
    public func records(exchange id: String) -> [WireRecord] {
        envelopes.map(\.record).filter { $0.exchangeID == id }
    }

    /// Every exchange's last record, in arrival order.
    public var responseDones: [WireResponseDone] {
        envelopes.compactMap { if case .responseDone(let done) = $0.record { done } else { nil } }
    }

    public func stop() {
        lock.lock()
        stopping = true
        lock.unlock()
        finished.wait()
    }
}

extension WireRecord {
    public var exchangeID: String? {
        switch self {
        case .request(let request): request.exchangeID
        case .streamChunk(let chunk): chunk.exchangeID
        case .responseDone(let done): done.exchangeID
        case .heartbeat: nil
        }
    }
}

/// A mock upstream, a sidecar in front of it, and a raw collector behind it, all real processes
/// and sockets on loopback.
public final class ProxyHarness: @unchecked Sendable {
    public let mock: RunningProcess
    public let mockPort: Int
    public let mockLogURL: URL
    public let sidecar: RunningProcess
    public let sidecarPort: Int
    public let collector: RawFrameCollector

    public var baseURL: String { "http://127.0.0.1:\(sidecarPort)" }
    public var mockURL: String { "http://127.0.0.1:\(mockPort)" }

    /// - Parameters:
    ///   - upstream: overrides the upstream URL (for an unreachable one); by default the mock.
    ///   - collectorEndpoint: overrides where the sidecar publishes (for a missing collector).
    public init(
        sidecarArguments: [String] = [], mockArguments: [String] = [], upstream: String? = nil,
        collectorEndpoint: String? = nil, environment: [String: String] = [:], fixedMockPort: Int? = nil
    ) throws {
        collector = try RawFrameCollector()
        mockPort = try fixedMockPort ?? freeTCPPort()
        mockLogURL = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-mock-\(UUID().uuidString).jsonl")
        mock = try RunningProcess(
            product: "llmtap-mock-upstream",
            arguments: [
                "--listen", "127.0.0.1:\(mockPort)", "--request-log", mockLogURL.path,
            ] + mockArguments)
        sidecarPort = try freeTCPPort()
        let scheme = mockArguments.contains("--tls-cert") ? "https://localhost" : "http://127.0.0.1"
        sidecar = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: [
                "--listen", "127.0.0.1:\(sidecarPort)",
                "--upstream", upstream ?? "\(scheme):\(mockPort)",
                "--collector", collectorEndpoint ?? collector.endpoint,
                "--sidecar-id", "test-sidecar", "--app", "test-app", "--threads", "2",
            ] + sidecarArguments, environment: environment)
        guard eventually({ mock.stdout.contains("listening on") || !mock.process.isRunning }), mock.process.isRunning
        else {
            throw TestFailure("the mock upstream did not start: \(mock.stderr)")
        }
        guard eventually({ sidecar.stderr.contains("reverse listener ready") || !sidecar.process.isRunning }),
            sidecar.process.isRunning
        else {
            throw TestFailure("the sidecar did not start: \(sidecar.stderr)")
        }
    }

    /// The mock's log: one object per finished request or sent event.
    public func mockLog() -> [[String: Any]] {
        guard let text = try? String(contentsOf: mockLogURL, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
    }

    /// Requests the mock received whole, by path.
    public func mockRequests() -> [[String: Any]] {
        mockLog().filter { $0["method"] != nil }
    }

    private var stopped: Int32??

    /// Stops the sidecar with SIGTERM and returns its exit status, then stops the rest.
    /// Calling it again returns the same status.
    @discardableResult
    public func stop() -> Int32? {
        if let stopped { return stopped }
        if sidecar.process.isRunning { sidecar.signal(SIGTERM) }
        let status = sidecar.waitForExit()
        if mock.process.isRunning { mock.signal(SIGTERM) }
        _ = mock.waitForExit()
        collector.stop()
        stopped = .some(status)
        return status
    }

    deinit {
        stop()
    }
}

/// A provider: a real llmtap-mock-upstream on its own port, its requests logged.
public struct MockProvider {
    public let process: RunningProcess
    public let port: Int
    public let log: URL

    public init(port: Int? = nil, arguments: [String] = []) throws {
        self.port = try port ?? freeTCPPort()
        log = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-mock-\(UUID()).jsonl")
        process = try RunningProcess(
            product: "llmtap-mock-upstream",
            arguments: ["--listen", "127.0.0.1:\(self.port)", "--request-log", log.path] + arguments)
        guard eventually({ process.stdout.contains("listening on") }) else {
            throw TestFailure("the mock did not start: \(process.stderr)")
        }
    }

    /// The headers of each request it received whole.
    public var requests: [(path: String, headers: [String: String])] {
        guard let text = try? String(contentsOf: log, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                let path = object["path"] as? String, let headers = object["headers"] as? [String: String]
            else { return nil }
            return (path, headers)
        }
    }
}

/// Runs curl, the reference client, and returns its exit code, body and response headers.
public func curl(_ arguments: [String], timeout: Duration = .seconds(30)) throws -> (
    exitCode: Int32, body: Data, headers: String
) {
    let result = try curlWithStatus(arguments, timeout: timeout)
    return (result.exitCode, result.body, result.headers)
}

/// curl, with the HTTP status of the last response (0 when there was none).
public func curlWithStatus(_ arguments: [String], timeout: Duration = .seconds(30)) throws -> (
    exitCode: Int32, status: Int, body: Data, headers: String
) {
    let folder = FileManager.default.temporaryDirectory
    let headersFile = folder.appendingPathComponent("curl-headers-\(UUID().uuidString)")
    let bodyFile = folder.appendingPathComponent("curl-body-\(UUID().uuidString)")
    defer {
        try? FileManager.default.removeItem(at: headersFile)
        try? FileManager.default.removeItem(at: bodyFile)
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["curl", "-sS", "--no-buffer", "-D", headersFile.path, "-o", bodyFile.path] + arguments
    process.standardError = FileHandle.nullDevice
    try process.run()
    guard eventually(timeout: timeout, { !process.isRunning }) else {
        process.terminate()
        throw TestFailure("curl \(arguments.joined(separator: " ")) did not finish")
    }
    let headers = (try? String(contentsOf: headersFile, encoding: .utf8)) ?? ""
    // The last status line wins: "HTTP/1.1 100 Continue" may come first.
    let status =
        headers.components(separatedBy: "\r\n").last { $0.hasPrefix("HTTP/") }
        .flatMap { $0.split(separator: " ").dropFirst().first.flatMap { Int($0) } } ?? 0
    return (process.terminationStatus, status, (try? Data(contentsOf: bodyFile)) ?? Data(), headers)
}

/// A field's value in a head as curl's `-D` wrote it (name matched in lower case), or nil.
public func headerValue(_ name: String, in headers: String) -> String? {
    headers.split(separator: "\r\n").first { $0.lowercased().hasPrefix(name + ":") }
        .map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) }
}

/// Whether `needle` occurs in `haystack`: a secret in a frame, a file, a log.
public func containsBytes(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    return (0...(haystack.count - needle.count)).contains { start in
        haystack[start..<start + needle.count].elementsEqual(needle)
    }
}

/// A TCP connection to 127.0.0.1:port, as a file descriptor the caller closes.
public func connectTCP(port: Int, receiveTimeout: Duration = .seconds(10)) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket() failed: errno \(errno)") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else {
        close(fd)
        throw TestFailure("connect to 127.0.0.1:\(port) failed: errno \(errno)")
    }
    var tv = timeval(tv_sec: Int(receiveTimeout.components.seconds), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Sends raw bytes on a new TCP connection and reads until the server closes it (or the timeout).
/// Returns what came back and whether the server closed the connection.
public func rawHTTP(port: Int, _ request: [UInt8], timeout: Duration = .seconds(10)) throws -> (
    response: String, closed: Bool
) {
    let (bytes, closed) = try rawHTTPBytes(port: port, request, timeout: timeout)
    return (String(decoding: bytes, as: UTF8.self), closed)
}

/// `rawHTTP`, with the answer as the bytes that came (for bytes that are not UTF-8).
public func rawHTTPBytes(port: Int, _ request: [UInt8], timeout: Duration = .seconds(10)) throws -> (
    response: [UInt8], closed: Bool
) {
    let fd = try connectTCP(port: port, receiveTimeout: timeout)
    defer { close(fd) }
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count == 0 { return (received, true) }
        if count < 0 { return (received, false) }
        received += buffer[0..<count]
    }
}

/// A Python script that makes a chat completion and a streamed one with the official `openai`
/// package, `base_url` argv[1] + "/v1", and prints `plain: TEXT TOKENS`, `stream: TEXT TOKENS` and
/// `versions: ...` (the HTTP version of each response, when `httpClient` is given). `httpClient`
/// is Python making the package's httpx client as `http` (it may read `sys.argv` and append to
/// `versions` in a response hook); nil leaves the package's own.
public func openAIChatScript(apiKey: String, httpClient: String? = nil) -> String {
    """
    import sys, openai
    versions = []
    \(httpClient ?? "http = None")
    client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="\(apiKey)", http_client=http)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    print("plain:", reply.choices[0].message.content, reply.usage.total_tokens)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                                            stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content: text += chunk.choices[0].delta.content
        if chunk.usage: usage = chunk.usage.total_tokens
    print("stream:", text, usage)
    print("versions:", ",".join(versions))
    """
}

/// curl's arguments for a JSON POST of `body` with `key` as a bearer credential.
public func curlChatArguments(_ body: String, key: String) -> [String] {
    ["-H", "content-type: application/json", "-H", "authorization: Bearer \(key)", "--data-binary", body]
}

/// Runs a Python script with the test virtualenv's packages; returns its exit status and output.
public func runPython(_ script: String, arguments: [String] = [], timeout: Duration = .seconds(60)) throws -> (
    status: Int32, stdout: String, stderr: String
) {
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-\(UUID().uuidString).py")
    try script.write(to: file, atomically: true, encoding: .utf8)
    let python = try RunningProcess(
        executable: URL(fileURLWithPath: try testPython()), arguments: [file.path] + arguments)
    guard let status = python.waitForExit(timeout: timeout) else {
        python.process.terminate()
        throw TestFailure("the Python script did not finish: \(python.stderr)")
    }
    return (status, python.stdout, python.stderr)
}
