import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Wire

@main
struct SidecarCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-sidecar",
        abstract: "Runs next to an app: forwards its LLM API traffic and copies what it sees to the LLMTap collector.",
        discussion: """
            Point the app's base URL at the sidecar (base_url=http://localhost:3000/v1) and it forwards
            every request to the upstream, streaming included, while a copy goes to the collector.
            Every option can also be set by the environment variable named in its help; the flag wins.
            SIGTERM or SIGINT stops accepting, lets exchanges under way finish within --drain-timeout,
            delivers what is queued for the collector, and exits 0.
            """,
        version: LLMTapVersion.current
    )

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case reverse, mitm, both
    }

    private static let environment = ProcessInfo.processInfo.environment

    @Option(help: "reverse (the app's base URL points here); mitm and both come with the HTTPS-proxy mode. Env: LLMTAP_MODE.")
    var mode = Mode(rawValue: environment["LLMTAP_MODE"] ?? "") ?? .reverse

    @Option(help: "host:port of the reverse listener. Env: LISTEN_ADDR.")
    var listen = environment["LISTEN_ADDR"] ?? "0.0.0.0:3000"

    @Option(help: "Where requests go: http:// or https://, with an optional path prefix. Env: UPSTREAM.")
    var upstream = environment["UPSTREAM"] ?? "https://api.openai.com"

    @Option(help: "A PEM file of extra trust roots for the upstream's TLS certificate, besides the system's. Env: UPSTREAM_CA_FILE.")
    var upstreamCaFile: String?

    @Option(help: "The collector's analysis socket. Env: LLMTAP_COLLECTOR.")
    var collector = environment["LLMTAP_COLLECTOR"] ?? "tcp://127.0.0.1:7101"

    @Option(help: "A label for the app this sidecar serves. Env: LLMTAP_APP.")
    var app = environment["LLMTAP_APP"] ?? "default"

    @Option(help: "This sidecar's id in every record. Env: LLMTAP_SIDECAR_ID. Default: the hostname.")
    var sidecarId = environment["LLMTAP_SIDECAR_ID"] ?? ProcessInfo.processInfo.hostName

    @Option(help: "Body bytes copied to the collector per direction and exchange; forwarding is never capped. Past it, the response's last 16 KiB still go (streams report usage at their end). Env: LLMTAP_MAX_CAPTURE_BYTES.")
    var maxCaptureBytes = Int(environment["LLMTAP_MAX_CAPTURE_BYTES"] ?? "") ?? 1 << 20

    @Option(help: "Largest request head accepted; larger gets 431. Env: LLMTAP_MAX_HEADER_BYTES.")
    var maxHeaderBytes = Int(environment["LLMTAP_MAX_HEADER_BYTES"] ?? "") ?? 64 << 10

    @Option(help: "Seconds the upstream may stay silent, before answering or mid-stream; then 504 (or a closed stream). Env: LLMTAP_UPSTREAM_TIMEOUT.")
    var upstreamTimeout = Double(environment["LLMTAP_UPSTREAM_TIMEOUT"] ?? "") ?? 600

    @Option(help: "Seconds to connect to the upstream; then 502. Env: LLMTAP_CONNECT_TIMEOUT.")
    var connectTimeout = Double(environment["LLMTAP_CONNECT_TIMEOUT"] ?? "") ?? 10

    @Option(help: "Seconds exchanges under way get to finish on SIGTERM. Env: LLMTAP_DRAIN_TIMEOUT.")
    var drainTimeout = Double(environment["LLMTAP_DRAIN_TIMEOUT"] ?? "") ?? 30

    @Option(help: "Key of the HMAC-SHA256 that turns credentials into tenant ids. Give every sidecar of a fleet the same one. Env: LLMTAP_TENANT_KEY. Default: a built-in key, so tenant ids are stable but computable by anyone who knows the credential.")
    var tenantKey = environment["LLMTAP_TENANT_KEY"] ?? TenantHasher.defaultKey

    @Option(help: "Event-loop threads. Env: LLMTAP_THREADS. Default: one per core.")
    var threads = Int(environment["LLMTAP_THREADS"] ?? "") ?? System.coreCount

    @Option(help: "Seconds between heartbeats to the collector. Env: LLMTAP_HEARTBEAT_INTERVAL.")
    var heartbeatInterval = Double(environment["LLMTAP_HEARTBEAT_INTERVAL"] ?? "") ?? 5

    @Option(help: "Records the publisher may queue while the collector is slow or away; past it they are dropped and counted. Env: LLMTAP_MAX_QUEUED_RECORDS.")
    var maxQueuedRecords = Int(environment["LLMTAP_MAX_QUEUED_RECORDS"] ?? "") ?? 65_536

    @Option(help: "Bytes the publisher may queue. Env: LLMTAP_MAX_QUEUED_BYTES.")
    var maxQueuedBytes = Int(environment["LLMTAP_MAX_QUEUED_BYTES"] ?? "") ?? 64 << 20

    @Option(help: "trace, debug, info, notice, warning, error or critical. Env: LOG_LEVEL.")
    var logLevel = environment["LOG_LEVEL"] ?? "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard mode == .reverse else {
            throw ValidationError("--mode \(mode.rawValue) is not available yet: this build runs the reverse listener only")
        }
        guard heartbeatInterval > 0 else { throw ValidationError("--heartbeat-interval must be more than 0 seconds") }
        guard maxQueuedRecords > 0, maxQueuedBytes > 0 else { throw ValidationError("the queue limits must be positive") }
        guard maxCaptureBytes >= 0 else { throw ValidationError("--max-capture-bytes must not be negative") }
        guard (1024...(16 << 20)).contains(maxHeaderBytes) else { throw ValidationError("--max-header-bytes must be between 1024 and 16777216") }
        guard upstreamTimeout > 0, connectTimeout > 0, drainTimeout >= 0 else { throw ValidationError("timeouts must be positive") }
        guard threads > 0 else { throw ValidationError("--threads must be at least 1") }
        do {
            _ = try UpstreamTarget(url: upstream)
            _ = try ListenAddress(listen)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "llmtap.sidecar")
        let target = try UpstreamTarget(url: upstream)
        let listenAddress = try ListenAddress(listen)

        var sslContext: NIOSSLContext?
        if target.isTLS {
            do {
                sslContext = try Self.makeUpstreamTLS(caFile: upstreamCaFile ?? Self.environment["UPSTREAM_CA_FILE"])
            } catch {
                throw ValidationError("cannot set up TLS to the upstream: \(error)")
            }
        }

        var publisherConfiguration = AnalysisPublisherConfiguration(endpoint: collector, sidecarID: sidecarId)
        publisherConfiguration.maxQueuedRecords = maxQueuedRecords
        publisherConfiguration.maxQueuedBytes = maxQueuedBytes
        let publisher: AnalysisPublisher
        do {
            publisher = try AnalysisPublisher(configuration: publisherConfiguration, logger: logger)
        } catch {
            throw ValidationError("cannot use --collector \(collector): \(error)")
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let counters = SidecarCounters(bootID: publisherConfiguration.bootID)
        let pools = try await UpstreamPools.make(group: group, settings: .init(
            target: target, sslContext: sslContext, connectTimeout: .seconds(Self.seconds(connectTimeout)),
            maxIdle: 64, idleTimeout: .seconds(30)
        ))
        let settings = ProxySettings(
            target: target,
            tap: TapSettings(app: app, ingress: .reverse, maxCaptureBytes: maxCaptureBytes, tailBytes: 16 << 10),
            tenantHasher: TenantHasher(key: tenantKey),
            upstreamTimeout: .milliseconds(Int64(upstreamTimeout * 1000)),
            maxHeaderBytes: maxHeaderBytes
        )
        logger.info("llmtap-sidecar started", metadata: [
            "sidecar_id": "\(sidecarId)", "app": "\(app)", "collector": "\(collector)", "upstream": "\(target)",
            "boot_id": "\(publisherConfiguration.bootID)", "version": "\(LLMTapVersion.current)",
        ])
        if tenantKey == TenantHasher.defaultKey {
            logger.notice("tenant ids use the built-in key; set LLMTAP_TENANT_KEY to keep them private")
        }

        let server = ReverseProxyServer(
            listen: listenAddress, group: group, settings: settings, pools: pools, publisher: publisher,
            counters: counters, drainTimeout: .milliseconds(Int64(drainTimeout * 1000)), logger: logger
        )
        let heartbeat = HeartbeatService(
            publisher: publisher, counters: counters,
            interval: .milliseconds(Int64(heartbeatInterval * 1000)), app: app, mode: mode.rawValue
        )
        let services = ServiceGroup(configuration: .init(
            services: [
                .init(service: heartbeat),
                // The sidecar is no use without its listener: if it stops, everything stops.
                .init(service: server, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        var failure: (any Error)?
        do {
            try await services.run()
        } catch {
            failure = error
        }
        // Closing what is left settles its exchanges (their records go out) before the publisher's flush.
        try? await group.shutdownGracefully()
        await publisher.shutdownGracefully()
        let stats = publisher.stats
        logger.info("llmtap-sidecar stopped", metadata: ["published": "\(stats.published)", "dropped": "\(stats.dropped)"])
        if let failure { throw failure }
    }

    static func seconds(_ value: Double) -> Int64 { Int64(value.rounded(.up)) }

    /// System trust roots, plus the extra ones; built once, off any event loop.
    static func makeUpstreamTLS(caFile: String?) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.applicationProtocols = ["http/1.1"]
        if let caFile {
            let certificates = try NIOSSLCertificate.fromPEMFile(caFile)
            guard !certificates.isEmpty else { throw ConfigurationError("\(caFile) holds no PEM certificate") }
            configuration.additionalTrustRoots = [.certificates(certificates)]
        }
        return try NIOSSLContext(configuration: configuration)
    }
}
