import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOWebSocket

/// A stand-in for the LLM providers, speaking their wire formats exactly, streaming included:
/// OpenAI chat completions (JSON, SSE with and without `include_usage`), completions, embeddings,
/// models; Anthropic messages (JSON, SSE); Gemini generateContent and streamGenerateContent (SSE with CRLF).
///
/// Request headers steer it, for tests: `x-mock-events` (content events per stream),
/// `x-mock-event-delay-ms`, `x-mock-status` (answer with that error status in the provider's shape),
/// `x-mock-fail` (`reset-after:N` closes the connection after N events, `hang` never answers,
/// `hang-after:N` stops after N events), `x-mock-response-header` ("name: value", added to the
/// answer). `/echo` answers with what it received.
@main
struct MockUpstreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-mock-upstream",
        abstract:
            "A mock LLM provider (OpenAI, Anthropic, Gemini wire formats, streaming included) for tests, benchmarks and demos."
    )

    @Option(help: "host:port to listen on; port 0 picks a free one (printed on stdout).")
    var listen = "127.0.0.1:8081"

    @Option(help: "PEM certificate chain: serve HTTPS with it.")
    var tlsCert: String?

    @Option(help: "PEM private key for --tls-cert.")
    var tlsKey: String?

    @Flag(
        name: .customLong("http2"),
        help: "With --tls-cert: offer h2 before http/1.1 in ALPN, and serve HTTP/2 (NIOHTTP2) to clients that pick it.")
    var http2 = false

    @Option(help: "Milliseconds between streamed events (x-mock-event-delay-ms overrides it per request).")
    var eventDelayMs = 20

    @Option(help: "Content events per streamed response (x-mock-events overrides it per request).")
    var events = 6

    @Option(help: "Append one JSON line per finished request and per streamed event to this file.")
    var requestLog: String?

    @Option(
        help:
            "A key the provider accepts (repeatable): with any, a request without one of them in Authorization: Bearer, x-api-key or x-goog-api-key gets 401 in its provider's shape."
    )
    var acceptKey: [String] = []

    @Option(help: "Answer every request with this status, in its provider's error shape (x-mock-status overrides it).")
    var status: Int?

    @Option(
        help:
            "Serve this many requests on a connection, then close it on the next one without answering (an upstream that dropped a keep-alive connection as a request came)."
    )
    var requestsPerConnection: Int?

    func validate() throws {
        guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
        guard !http2 || tlsCert != nil else { throw ValidationError("--http2 needs --tls-cert: h2 is offered by ALPN") }
        guard eventDelayMs >= 0, events >= 0 else {
            throw ValidationError("--event-delay-ms and --events must not be negative")
        }
    }

    func run() async throws {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
            throw ValidationError("--listen must be host:port, not \(listen)")
        }
        let host = String(listen[..<colon])
        var sslContext: NIOSSLContext?
        if let tlsCert, let tlsKey {
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(tlsCert).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: tlsKey, format: .pem))
            )
            if http2 { configuration.applicationProtocols = ["h2", "http/1.1"] }
            sslContext = try NIOSSLContext(configuration: configuration)
        }
        let log = try requestLog.map { try RequestLog(path: $0) }
        let settings = MockSettings(
            eventDelayMs: eventDelayMs, events: events, acceptedKeys: Set(acceptKey), status: status,
            requestsPerConnection: requestsPerConnection)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard let sslContext, http2 else {
                    return channel.eventLoop.makeCompletedFuture {
                        if let sslContext {
                            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                        }
                        try Self.configureHTTP1(channel, settings: settings, log: log)
                    }
                }
                do {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
                return channel.configureHTTP2SecureUpgrade(
                    h2ChannelConfigurator: { channel in
                        // One log line per connection, as HTTP/1.1 connections get: streams are not connections.
                        channel.pipeline.addHandler(ConnectionLogger(log: log, protocolName: "h2")).flatMap {
                            channel.configureHTTP2Pipeline(mode: .server) { stream in
                                stream.pipeline.addHandlers([
                                    HTTP2FramePayloadToHTTP1ServerCodec(),
                                    MockProviderHandler(settings: settings, log: log, logsConnections: false),
                                ])
                            }.map { _ in }
                        }
                    },
                    http1ChannelConfigurator: { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try Self.configureHTTP1(channel, settings: settings, log: log)
                        }
                    })
            }
            .bind(host: host, port: port).get()
        let actual = channel.localAddress?.port ?? port
        // Tests read the port from this line, so it goes out unbuffered.
        FileHandle.standardOutput.write(
            Data("llmtap-mock-upstream listening on \(sslContext == nil ? "http" : "https")://\(host):\(actual)\n".utf8)
        )
        try await channel.closeFuture.get()
    }
}

extension MockUpstreamCommand {
    /// HTTP/1.1, with the Realtime API's WebSocket upgrade at /v1/realtime.
    static func configureHTTP1(_ channel: any Channel, settings: MockSettings, log: RequestLog?) throws {
        let provider = MockProviderHandler(settings: settings, log: log)
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withServerUpgrade: (
                upgraders: [MockRealtimeHandler.upgrader(settings: settings, log: log)],
                completionHandler: { _ in }
            ))
        try channel.pipeline.syncOperations.addHandler(provider)
    }
}

/// Logs an HTTP/2 connection's opening and closing, with its protocol.
final class ConnectionLogger: ChannelInboundHandler, Sendable {
    typealias InboundIn = Any
    private let log: RequestLog?
    private let protocolName: String

    init(log: RequestLog?, protocolName: String) {
        self.log = log
        self.protocolName = protocolName
    }

    func handlerAdded(context: ChannelHandlerContext) {
        log?.append([
            "event": "connection_opened", "peer": context.remoteAddress.map { "\($0)" } ?? "", "protocol": protocolName,
        ])
    }

    func channelInactive(context: ChannelHandlerContext) {
        log?.append(["event": "connection_closed", "protocol": protocolName])
        context.fireChannelInactive()
    }
}

struct MockSettings: Sendable {
    let eventDelayMs: Int
    let events: Int
    /// Empty: any key, or none.
    var acceptedKeys: Set<String> = []
    var status: Int?
    var requestsPerConnection: Int?
}

/// Appends JSON lines off the event loop.
final class RequestLog: Sendable {
    private let handle: FileHandle
    private let queue = DispatchQueue(label: "llmtap.mock.request-log")

    init(path: String) throws {
        if !FileManager.default.fileExists(atPath: path) {
            FileManager.default.createFile(atPath: path, contents: nil)
        }
        handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        handle.seekToEndOfFile()
    }

    func append(_ entry: [String: Any]) {
        var entry = entry
        entry["time_unix_nanos"] = Int64(Date().timeIntervalSince1970 * 1e9)
        guard let data = try? JSONSerialization.data(withJSONObject: entry, options: [.sortedKeys]) else { return }
        queue.async { [handle] in
            handle.write(data + Data("\n".utf8))
        }
    }
}
