import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Wire

@main
struct SidecarCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-sidecar",
        abstract: "Runs next to an app and copies its LLM traffic to the LLMTap collector.",
        discussion: """
            Every option can also be set by the environment variable named in its help; the flag wins.
            The sidecar stops on SIGTERM or SIGINT, delivering what it has queued for the collector first.
            """,
        version: LLMTapVersion.current
    )

    @Option(help: "The collector's analysis socket. Env: LLMTAP_COLLECTOR.")
    var collector = ProcessInfo.processInfo.environment["LLMTAP_COLLECTOR"] ?? "tcp://127.0.0.1:7101"

    @Option(help: "This sidecar's id in every record. Env: LLMTAP_SIDECAR_ID. Default: the hostname.")
    var sidecarId = ProcessInfo.processInfo.environment["LLMTAP_SIDECAR_ID"] ?? ProcessInfo.processInfo.hostName

    @Option(help: "A label for the app this sidecar serves. Env: LLMTAP_APP.")
    var app = ProcessInfo.processInfo.environment["LLMTAP_APP"] ?? "default"

    @Option(help: "Seconds between heartbeats to the collector. Env: LLMTAP_HEARTBEAT_INTERVAL.")
    var heartbeatInterval = Double(ProcessInfo.processInfo.environment["LLMTAP_HEARTBEAT_INTERVAL"] ?? "") ?? 5

    @Option(help: "Records the publisher may queue while the collector is slow or away; past it they are dropped and counted. Env: LLMTAP_MAX_QUEUED_RECORDS.")
    var maxQueuedRecords = Int(ProcessInfo.processInfo.environment["LLMTAP_MAX_QUEUED_RECORDS"] ?? "") ?? 65_536

    @Option(help: "Bytes the publisher may queue. Env: LLMTAP_MAX_QUEUED_BYTES.")
    var maxQueuedBytes = Int(ProcessInfo.processInfo.environment["LLMTAP_MAX_QUEUED_BYTES"] ?? "") ?? 64 << 20

    @Option(help: "trace, debug, info, notice, warning, error or critical. Env: LOG_LEVEL.")
    var logLevel = ProcessInfo.processInfo.environment["LOG_LEVEL"] ?? "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard heartbeatInterval > 0 else { throw ValidationError("--heartbeat-interval must be more than 0 seconds") }
        guard maxQueuedRecords > 0, maxQueuedBytes > 0 else { throw ValidationError("the queue limits must be positive") }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "llmtap.sidecar")

        var publisherConfiguration = AnalysisPublisherConfiguration(endpoint: collector, sidecarID: sidecarId)
        publisherConfiguration.maxQueuedRecords = maxQueuedRecords
        publisherConfiguration.maxQueuedBytes = maxQueuedBytes
        let publisher: AnalysisPublisher
        do {
            publisher = try AnalysisPublisher(configuration: publisherConfiguration, logger: logger)
        } catch {
            throw ValidationError("cannot use --collector \(collector): \(error)")
        }
        logger.info("llmtap-sidecar started", metadata: [
            "sidecar_id": "\(sidecarId)", "app": "\(app)", "collector": "\(collector)",
            "boot_id": "\(publisherConfiguration.bootID)", "version": "\(LLMTapVersion.current)",
        ])

        let heartbeat = HeartbeatService(
            publisher: publisher, interval: .milliseconds(Int64(heartbeatInterval * 1000)),
            app: app, mode: "reverse"
        )
        let group = ServiceGroup(configuration: .init(
            services: [heartbeat],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
        await publisher.shutdownGracefully()
        let stats = publisher.stats
        logger.info("llmtap-sidecar stopped", metadata: [
            "published": "\(stats.published)", "dropped": "\(stats.dropped)",
        ])
    }
}
