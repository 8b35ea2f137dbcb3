import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// A load generator for LLM endpoints: N keep-alive connections send requests in turn until the
/// total is reached, and each request's latency (and, for streams, time to first byte) is kept.
@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-bench",
        abstract:
            "Load-tests an LLM endpoint (through llmtap-sidecar or direct) and reports latency, TTFB, throughput and errors.",
        discussion: """
            Example: llmtap-bench --base-url http://127.0.0.1:3000/v1 --endpoint /chat/completions \\
                       --requests 2000 --concurrency 32 --stream --output results.json
            """
    )

    @Option(help: "The API's base URL, as a client's base_url (http or https).")
    var baseURL = "http://127.0.0.1:3000/v1"

    @Option(help: "The path after the base URL.")
    var endpoint = "/chat/completions"

    @Option(help: "Bearer token sent as Authorization (a virtual key, or the provider key).")
    var token = ProcessInfo.processInfo.environment["OPENAI_API_KEY"] ?? "sk-llmtap-bench"

    @Option(help: "Requests in all.")
    var requests = 1000

    @Option(help: "Seconds to keep sending for, whatever is left of --requests (the requests under way then finish).")
    var duration: Double?

    @Option(help: "Connections sending at once.")
    var concurrency = 16

    @Option(help: "The JSON body, or @file to read it from. Default: a one-line chat completion request.")
    var payload: String?

    @Flag(help: "Ask for a streamed response (stream: true, with include_usage) and measure time to first byte.")
    var stream = false

    @Option(help: "Also write the results as JSON to this file.")
    var output: String?

    @Option(
        help:
            "Also write every request to this file, one line each: when it ended (Unix ms), its latency (ms), and 1 or 0 for ok (to see what an event under load did, and when)."
    )
    var samples: String?

    @Option(help: "Seconds before a request counts as failed.")
    var timeout: Double = 120

    func validate() throws {
        guard requests > 0, concurrency > 0 else {
            throw ValidationError("--requests and --concurrency must be positive")
        }
        _ = try Target(baseURL: baseURL, endpoint: endpoint)
    }

    func run() async throws {
        let target = try Target(baseURL: baseURL, endpoint: endpoint)
        let body = try requestBody()
        let sslContext: NIOSSLContext? =
            try target.tls
            ? {
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.applicationProtocols = ["http/1.1"]
                return try NIOSSLContext(configuration: tls)
            }() : nil
        var headers = HTTPHeaders([
            ("host", target.authority), ("content-type", "application/json"), ("authorization", "Bearer \(token)"),
            ("content-length", "\(body.utf8.count)"), ("user-agent", "llmtap-bench"),
        ])
        if stream { headers.add(name: "accept", value: "text/event-stream") }
        let head = HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path, headers: headers)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: min(System.coreCount, concurrency))
        let remaining = RequestBudget(requests, until: duration.map { .now + .milliseconds(Int64($0 * 1000)) })
        let requestTimeout = TimeAmount.milliseconds(Int64(timeout * 1000))
        let started = ContinuousClock.now
        let results = try await withThrowingTaskGroup(of: [Sample].self) { tasks in
            for _ in 0..<concurrency {
                tasks.addTask {
                    try await Worker.run(
                        group: group, target: target, sslContext: sslContext, head: head,
                        body: ByteBuffer(string: body), remaining: remaining,
                        timeout: requestTimeout)
                }
            }
            var all: [Sample] = []
            for try await samples in tasks { all += samples }
            return all
        }
        let report = Report(
            samples: results, duration: started.duration(to: .now), concurrency: concurrency, stream: stream)
        try? await group.shutdownGracefully()
        print(report.text)
        if let samples {
            var text = "end_unix_ms,latency_ms,ok\n"
            for sample in results.sorted(by: { $0.endedUnixMs < $1.endedUnixMs }) {
                let ms =
                    Double(sample.latency.components.attoseconds) / 1e15 + Double(sample.latency.components.seconds)
                    * 1000
                text += String(format: "%.3f,%.3f,%d\n", sample.endedUnixMs, ms, sample.ok ? 1 : 0)
            }
            try text.write(toFile: samples, atomically: true, encoding: .utf8)
        }
        if let output {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: URL(fileURLWithPath: output))
        }
    }

    private func requestBody() throws -> String {
        if let payload {
            if payload.hasPrefix("@") {
                return try String(contentsOfFile: String(payload.dropFirst()), encoding: .utf8)
            }
            return payload
        }
        let streamFields = stream ? #","stream":true,"stream_options":{"include_usage":true}"# : ""
        return #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]\#(streamFields)}"#
    }
}

struct Target: Sendable {
    let tls: Bool
    let host: String
    let port: Int
    let path: String
    var authority: String { (tls && port == 443) || (!tls && port == 80) ? host : "\(host):\(port)" }

    init(baseURL: String, endpoint: String) throws {
        guard let url = URL(string: baseURL), let scheme = url.scheme?.lowercased(),
            ["http", "https"].contains(scheme), let host = url.host
        else {
            throw ValidationError("--base-url must be an http:// or https:// URL, not \(baseURL)")
        }
        tls = scheme == "https"
        self.host = host
        port = url.port ?? (tls ? 443 : 80)
        var base = url.path
        while base.hasSuffix("/") { base.removeLast() }
        path = base + (endpoint.hasPrefix("/") ? endpoint : "/" + endpoint)
    }
}

/// One request's outcome.
struct Sample: Sendable {
    var latency: Duration
    var timeToFirstByte: Duration?
    var ok: Bool
    /// The server will take another request on this connection.
    var keepAlive = true
    /// When it ended, Unix milliseconds.
    var endedUnixMs = Date().timeIntervalSince1970 * 1000
}

/// Requests left to send, shared by every connection.
final class RequestBudget: Sendable {
    private let left: Atomic<Int>
    private let until: ContinuousClock.Instant?

    init(_ count: Int, until: ContinuousClock.Instant? = nil) {
        left = Atomic(count)
        self.until = until
    }

    /// Takes one; false when none are left, or the time is up.
    func take() -> Bool {
        if let until, ContinuousClock.now >= until { return false }
        return left.subtract(1, ordering: .relaxed).oldValue > 0
    }
}
