import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Wire

@main
struct CollectorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-collector",
        abstract: "Receives what LLMTap sidecars see and turns it into usage, cost and metrics.",
        discussion: """
            Every option can also be set by the environment variable named in its help; the flag wins.
            The collector stops on SIGTERM or SIGINT.
            """,
        version: LLMTapVersion.current
    )

    @Option(help: "Where sidecars send analysis records (a ZeroMQ PULL socket the collector binds). Env: LLMTAP_LISTEN_ANALYSIS.")
    var listenAnalysis = ProcessInfo.processInfo.environment["LLMTAP_LISTEN_ANALYSIS"] ?? "tcp://*:7101"

    @Option(help: "trace, debug, info, notice, warning, error or critical. Env: LOG_LEVEL.")
    var logLevel = ProcessInfo.processInfo.environment["LOG_LEVEL"] ?? "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "llmtap.collector")

        let links = SidecarLinks(logger: logger)
        let receiver: AnalysisReceiver
        do {
            receiver = try AnalysisReceiver(
                configuration: AnalysisReceiverConfiguration(endpoint: listenAnalysis),
                logger: logger,
                handler: { links.observe($0) }
            )
        } catch {
            throw ValidationError("cannot listen on --listen-analysis \(listenAnalysis): \(error)")
        }
        logger.info("llmtap-collector started", metadata: [
            "analysis": "\(receiver.boundEndpoint)", "version": "\(LLMTapVersion.current)",
        ])

        let group = ServiceGroup(configuration: .init(
            services: [ReceiverService(receiver: receiver)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
        let stats = receiver.stats
        logger.info("llmtap-collector stopped", metadata: [
            "received": "\(stats.received)", "rejected": "\(stats.totalRejected)", "missing": "\(stats.totalMissing)",
        ])
    }
}

/// Keeps the receiver running until graceful shutdown, then stops it off the cooperative pool.
struct ReceiverService: Service {
    let receiver: AnalysisReceiver

    func run() async throws {
        try? await gracefulShutdown()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                receiver.shutdown()
                continuation.resume()
            }
        }
    }
}
