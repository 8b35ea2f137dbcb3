import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import Wire

@main
struct CollectorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-collector",
        abstract: "Receives what LLMTap sidecars see and turns it into usage, cost, metrics and stored exchanges.",
        discussion: """
            Every option can also be set by the environment variable named in its help; the flag wins.
            It serves /metrics (Prometheus), /healthz, /readyz, /api/exchanges and /api/usage on --http, and
            /manage (projects, virtual keys, budgets) when MANAGEMENT_TOKEN (16 characters or more) is set.
            The collector stops on SIGTERM or SIGINT, storing what it holds.
            """,
        version: LLMTapVersion.current
    )

    private static let environment = ProcessInfo.processInfo.environment

    @Option(
        help:
            "Where sidecars send analysis records (a ZeroMQ PULL socket the collector binds). Env: LLMTAP_LISTEN_ANALYSIS."
    )
    var listenAnalysis = environment["LLMTAP_LISTEN_ANALYSIS"] ?? "tcp://*:7101"

    @Option(
        help:
            "Where sidecars get keys, limits and budget denials (a ZeroMQ PUB socket the collector binds). Env: LLMTAP_LISTEN_POLICY."
    )
    var listenPolicy = environment["LLMTAP_LISTEN_POLICY"] ?? "tcp://*:7102"

    @Option(
        help:
            "A file holding the management token, instead of the MANAGEMENT_TOKEN variable. Without either, /manage answers 503."
    )
    var managementTokenFile: String? = environment["LLMTAP_MANAGEMENT_TOKEN_FILE"]

    @Option(help: "host:port of the HTTP server: /metrics, /healthz, /readyz and /api. Env: LLMTAP_HTTP.")
    var http = environment["LLMTAP_HTTP"] ?? "0.0.0.0:9464"

    @Option(help: "The SQLite database (WAL); its directory is created if missing. Env: LLMTAP_DB.")
    var db = environment["LLMTAP_DB"] ?? "./llmtap-data/llmtap.sqlite"

    @Option(
        help:
            "Seconds an exchange may wait for its end before it is stored as incomplete. Env: LLMTAP_EXCHANGE_TIMEOUT.")
    var exchangeTimeout = EnvironmentSettings.int("LLMTAP_EXCHANGE_TIMEOUT", 600, environment: environment)

    @Option(
        help:
            "A price table (JSON, the format of the shipped Resources/prices.json) to use instead of the shipped one. Env: LLMTAP_PRICES."
    )
    var prices: String? = environment["LLMTAP_PRICES"]

    @Flag(
        help:
            "Store request and response bodies with each exchange, capped by --max-stored-body-bytes. Env: LLMTAP_STORE_BODIES=1."
    )
    var storeBodies = EnvironmentSettings.flag("LLMTAP_STORE_BODIES", environment: environment)

    @Option(help: "Bytes of each body kept with --store-bodies. Env: LLMTAP_MAX_STORED_BODY_BYTES.")
    var maxStoredBodyBytes = EnvironmentSettings.int("LLMTAP_MAX_STORED_BODY_BYTES", 64 << 10, environment: environment)

    @Option(
        help:
            "Delete stored exchanges older than this many days (checked hourly); keep everything when unset. Env: LLMTAP_RETENTION_DAYS."
    )
    var retentionDays: Int? = EnvironmentSettings.optionalInt("LLMTAP_RETENTION_DAYS", environment: environment)

    @Option(help: "Also append every stored exchange to this JSON Lines file (seed 003's format). Env: LLMTAP_JSONL.")
    var jsonl: String? = environment["LLMTAP_JSONL"]

    @Option(
        help:
            "Models that get their own metrics label; later ones are labelled \"other\" (SQLite keeps them all). Env: LLMTAP_MAX_MODEL_LABELS."
    )
    var maxModelLabels = EnvironmentSettings.int("LLMTAP_MAX_MODEL_LABELS", 20, environment: environment)

    @Option(
        help:
            "Body bytes held per exchange while it is read; past it the exchange is marked truncated. Env: LLMTAP_MAX_EXCHANGE_BYTES."
    )
    var maxExchangeBytes = EnvironmentSettings.int("LLMTAP_MAX_EXCHANGE_BYTES", 8 << 20, environment: environment)

    @Option(help: "Body bytes held by all open exchanges together. Env: LLMTAP_MAX_HELD_BYTES.")
    var maxHeldBytes = EnvironmentSettings.int("LLMTAP_MAX_HELD_BYTES", 512 << 20, environment: environment)

    @Option(
        help:
            "A bearer token /api/* requires (the management token is accepted too); without one /api is open to anyone who reaches --http. /metrics, /healthz and /readyz stay open. Env: LLMTAP_API_TOKEN."
    )
    var apiToken: String? = environment["LLMTAP_API_TOKEN"]

    @Option(help: "trace, debug, info, notice, warning, error or critical. Env: LOG_LEVEL.")
    var logLevel = environment["LOG_LEVEL"] ?? "info"

    func validate() throws {
        do {
            try EnvironmentSettings.check()
        } catch {
            throw ValidationError("\(error)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError(
                "--log-level must be one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")); \(named("--log-level", "LOG_LEVEL", logLevel)) is \"\(logLevel)\""
            )
        }
        // Bounded so that every product made of them (nanoseconds, bytes) stays inside Int64.
        guard (1...Int(EnvironmentSettings.maximumSeconds)).contains(exchangeTimeout) else {
            throw ValidationError(
                "--exchange-timeout must be 1 to \(Int(EnvironmentSettings.maximumSeconds)) seconds, not \(exchangeTimeout)"
            )
        }
        guard (1...10_000).contains(maxModelLabels) else {
            throw ValidationError("--max-model-labels must be 1 to 10000, not \(maxModelLabels)")
        }
        guard (64 << 10...1 << 40).contains(maxExchangeBytes), (maxExchangeBytes...1 << 40).contains(maxHeldBytes)
        else {
            throw ValidationError(
                "--max-exchange-bytes must be at least 65536, and --max-held-bytes at least as large (both at most 2^40)"
            )
        }
        guard (0...1 << 40).contains(maxStoredBodyBytes) else {
            throw ValidationError("--max-stored-body-bytes must be 0 to 2^40, not \(maxStoredBodyBytes)")
        }
        guard (1...100_000).contains(retentionDays ?? 1) else {
            throw ValidationError("--retention-days must be 1 to 100000, not \(retentionDays ?? 0)")
        }
        if let apiToken, AccessToken(apiToken) == nil {
            throw ValidationError(
                "--api-token (LLMTAP_API_TOKEN) must be at least \(AccessToken.minimumLength) characters")
        }
        do {
            _ = try ListenAddress(http)
        } catch {
            throw ValidationError("\(named("--http", "LLMTAP_HTTP", http)): \(error)")
        }
    }

    /// How an option with an environment default is named in an error about its value.
    private func named(_ flag: String, _ variable: String, _ value: String) -> String {
        EnvironmentSettings.optionName(flag, variable, value: value, environment: Self.environment)
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "llmtap.collector")

        let priceTable: PriceTable
        do {
            priceTable = try prices.map { try PriceTable.load(path: $0) } ?? PriceTable.shipped()
        } catch {
            throw ValidationError("\(error)")
        }
        let database: AppDatabase
        do {
            database = try AppDatabase.open(path: db)
        } catch {
            throw ValidationError("cannot open the database --db \(db): \(error)")
        }
        let jsonlWriter: JSONLWriter?
        do {
            jsonlWriter = try jsonl.map { try JSONLWriter(path: $0) }
        } catch {
            throw ValidationError("cannot open --jsonl \(jsonl ?? ""): \(error)")
        }

        let management = try Self.managementToken(file: managementTokenFile)
        if management == nil {
            logger.warning(
                "the management API is off: set MANAGEMENT_TOKEN (or --management-token-file) to manage projects and keys"
            )
        }

        let metrics = CollectorMetrics(maxModelLabels: maxModelLabels)
        let policy: PolicyEngine
        do {
            policy = try PolicyEngine(
                database: database, settings: PolicyEngine.Settings(endpoint: listenPolicy), metrics: metrics,
                logger: logger)
        } catch {
            throw ValidationError(
                "cannot listen on \(named("--listen-policy", "LLMTAP_LISTEN_POLICY", listenPolicy)) \(listenPolicy): \(error)"
            )
        }
        let checkpoints = (try? database.loadCheckpoints()) ?? []
        metrics.resume(
            heartbeatDropped: Dictionary(
                checkpoints.map {
                    (
                        CollectorMetrics.BootKey(sidecarID: $0.sidecarID, bootID: $0.bootID),
                        UInt64(bitPattern: $0.heartbeatDropped)
                    )
                },
                uniquingKeysWith: max
            ))
        let writer = ExchangeWriter(
            database: database, jsonl: jsonlWriter,
            settings: ExchangeWriter.Settings(retentionDays: retentionDays), logger: logger
        )
        var limits = ExchangeAssembler.Limits()
        limits.exchangeTimeoutNanos = Int64(exchangeTimeout) * 1_000_000_000 // validate() bounds it
        limits.maxExchangeBytes = maxExchangeBytes
        limits.maxTotalBytes = maxHeldBytes
        limits.storedBodyBytes = storeBodies ? maxStoredBodyBytes : 0

        let links = SidecarLinks(logger: logger)
        let receiverBox = ReceiverBox()
        let lastCheckpoint = Atomic<Int64>(0)
        let pipeline = IngestPipeline(
            settings: IngestPipeline.Settings(limits: limits), prices: priceTable, metrics: metrics, writer: writer,
            links: links, policy: policy,
            logger: logger,
            onCycle: { [receiverBox, lastCheckpoint] in
                if let stats = receiverBox.receiver?.stats {
                    metrics.sync(receiver: stats)
                    let now = WallClock.nowUnixNanos()
                    if now - lastCheckpoint.load(ordering: .relaxed) >= 5_000_000_000 {
                        lastCheckpoint.store(now, ordering: .relaxed)
                        writer.checkpoint(Self.checkpoints(stats, metrics))
                    }
                }
                metrics.storage(writer.health)
            }
        )
        let receiver: AnalysisReceiver
        do {
            var configuration = AnalysisReceiverConfiguration(endpoint: listenAnalysis)
            // Per sidecar: past it, records wait in the sidecar's own (bounded, counted) queue
            // instead of here, which keeps this process's memory bounded with many sidecars.
            configuration.receiveHighWaterMark = 10_000
            configuration.resumeFrom = checkpoints.map {
                SequenceResumePoint(
                    sidecarID: $0.sidecarID, bootID: $0.bootID,
                    lastSeq: UInt64(bitPattern: $0.lastSeq), lastDroppedBefore: UInt64(bitPattern: $0.lastDroppedBefore)
                )
            }
            receiver = try AnalysisReceiver(
                configuration: configuration,
                logger: logger,
                handler: { pipeline.receive($0) }
            )
        } catch {
            pipeline.shutdown()
            writer.shutdown()
            policy.shutdown()
            throw ValidationError(
                "cannot listen on \(named("--listen-analysis", "LLMTAP_LISTEN_ANALYSIS", listenAnalysis)) \(listenAnalysis): \(error)"
            )
        }
        receiverBox.receiver = receiver

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let address = try ListenAddress(http)
        var api = APIContext(
            metrics: metrics, database: database, writer: writer, isReceiving: { receiverBox.receiver != nil })
        api.management = ManagementAPI(policy: policy, token: management, logger: logger)
        api.apiAccess = APIAccess(apiToken: apiToken.flatMap(AccessToken.init), managementToken: management)
        if api.apiAccess.isOpen {
            logger.warning(
                "/api is open to anyone who reaches --http: set --api-token (LLMTAP_API_TOKEN) to require a bearer token"
            )
        }
        let httpChannel: any Channel
        do {
            httpChannel = try await CollectorHTTPServer.bind(
                host: address.host, port: address.port, group: group, api: api, logger: logger)
        } catch {
            receiver.shutdown()
            pipeline.shutdown()
            writer.shutdown()
            policy.shutdown()
            try? await group.shutdownGracefully()
            throw ValidationError("cannot listen on --http \(http): \(error)")
        }
        logger.info(
            "llmtap-collector started",
            metadata: [
                "analysis": "\(receiver.boundEndpoint)", "policy": "\(policy.boundEndpoint)",
                "http": "\(httpChannel.localAddress.map { "\($0)" } ?? http)",
                "db": "\(db)", "prices": "\(prices ?? "shipped, as of \(priceTable.asOf)")",
                "version": "\(LLMTapVersion.current)",
            ])

        // Every long-lived part, in the order they depend on each other: SIGTERM or SIGINT stops
        // them one at a time from the last. The HTTP server first, then the receiver; what it
        // delivered is then assembled, open exchanges stored as incomplete, the checkpoints and the
        // storage queue written out, and the policy channel closed.
        let services = ServiceGroup(
            configuration: .init(
                services: [
                    StopOnShutdown("event loops", async: { try? await group.shutdownGracefully() }),
                    StopOnShutdown("policy engine", blocking: { policy.shutdown() }),
                    StopOnShutdown(
                        "store",
                        blocking: {
                            writer.checkpoint(Self.checkpoints(receiver.stats, metrics))
                            writer.shutdown()
                        }),
                    StopOnShutdown("assembly", blocking: { pipeline.shutdown() }),
                    StopOnShutdown("analysis receiver", blocking: { receiver.shutdown() }),
                    BoundHTTPServer(channel: httpChannel),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
        try await services.run()
        let stats = receiver.stats
        let health = writer.health
        logger.info(
            "llmtap-collector stopped",
            metadata: [
                "received": "\(stats.received)", "rejected": "\(stats.totalRejected)",
                "missing": "\(stats.totalMissing)",
                "stored": "\(health.written)", "unstored": "\(health.pending)",
            ])
    }

    /// The management token from --management-token-file or MANAGEMENT_TOKEN; nil when neither is set.
    static func managementToken(file: String?) throws -> AccessToken? {
        var text = environment["MANAGEMENT_TOKEN"]
        if let file {
            do {
                text = try String(contentsOfFile: file, encoding: .utf8)
            } catch {
                throw ValidationError("cannot read --management-token-file \(file): \(error)")
            }
        }
        guard let text = text?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty else { return nil }
        guard let token = AccessToken(text) else {
            throw ValidationError(
                "the management token must be at least \(AccessToken.minimumLength) characters; refusing to serve /manage with a guessable one"
            )
        }
        return token
    }

    /// Where every stream stands now, for the next run.
    static func checkpoints(_ stats: ReceiverStats, _ metrics: CollectorMetrics) -> [StreamCheckpoint] {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let dropped = metrics.heartbeatDropped
        // Only boots heard from in this run: the others keep the time they were last heard of.
        return stats.streams.filter { $0.received > 0 }.map { stream in
            StreamCheckpoint(
                // SQLite's integers are signed; a wire value past Int64.max keeps its bits.
                sidecarID: stream.sidecarID, bootID: stream.bootID, lastSeq: Int64(bitPattern: stream.lastSeq),
                lastDroppedBefore: Int64(bitPattern: stream.lastDroppedBefore),
                heartbeatDropped: Int64(
                    bitPattern: dropped[CollectorMetrics.BootKey(sidecarID: stream.sidecarID, bootID: stream.bootID)]
                        ?? 0),
                updatedAtMs: now
            )
        }
    }
}

/// The receiver, once it exists: the pipeline's refresh reads its stats.
final class ReceiverBox: Sendable {
    private let stored = Mutex<AnalysisReceiver?>(nil)

    var receiver: AnalysisReceiver? {
        get { stored.withLock { $0 } }
        set { stored.withLock { $0 = newValue } }
    }
}
