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
            In MITM mode the app sets HTTPS_PROXY=http://sidecar:8080 and trusts LLMTap's CA (see
            `llmtap-sidecar ca export`); only allowlisted hosts are decrypted, others pass through untouched.
            SIGTERM or SIGINT stops accepting, lets exchanges under way finish within --drain-timeout,
            delivers what is queued for the collector, and exits 0. SIGHUP reloads the --config file.
            SIGUSR2 is a hot upgrade: the binary at the same path starts with the same arguments and
            takes over the listening sockets; once it is ready this process drains and exits, and
            --pid-file names the new one. If the new one fails, this one keeps serving.
            """,
        version: LLMTapVersion.current,
        subcommands: [CACommand.self, CheckConfigCommand.self, ParserBenchCommand.self]
    )

    /// A configuration file, when one is named, is read before the command line: its `llmtap:`
    /// settings are where the options take their defaults from, under the environment's.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let subcommands = Set(configuration.subcommands.map { $0._commandName })
        if arguments.first.map({ !subcommands.contains($0) }) ?? true,
            let path = SidecarEnvironment.configPath(in: arguments, environment: ProcessInfo.processInfo.environment)
        {
            do {
                SidecarEnvironment.install(
                    try GatewayConfigParser.load(path: path, environment: ProcessInfo.processInfo.environment),
                    path: path)
            } catch {
                FileHandle.standardError.write(
                    Data("llmtap-sidecar: the configuration can't be used:\n\(error)\n".utf8))
                Foundation.exit(78)
            }
        }
        do {
            var command = try parseAsRoot(arguments)
            if var command = command as? AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case reverse, mitm, both
    }

    private static var environment: [String: String] { SidecarEnvironment.current }

    @Option(
        name: [.customShort("c"), .long],
        help:
            "A YAML configuration file (openproxy's keys, and LLMTap's: see deploy/examples/sidecar.yml). Its llmtap: section sets these options; a flag or variable wins. Env: LLMTAP_CONFIG."
    )
    var config: String? = environment["LLMTAP_CONFIG"]

    @Option(
        help:
            "reverse (the app's base URL points here), mitm (the app's HTTPS_PROXY points here), or both. Env: LLMTAP_MODE."
    )
    var mode = EnvironmentSettings.choice("LLMTAP_MODE", Mode.reverse, environment: environment)

    @Option(help: "host:port of the MITM (HTTPS proxy) listener. Env: MITM_LISTEN_ADDR.")
    var mitmListen = environment["MITM_LISTEN_ADDR"] ?? "0.0.0.0:8080"

    @Option(
        help:
            "Hosts MITM mode decrypts and analyses: names and *.suffix patterns, comma-separated. Env: LLMTAP_ALLOWLIST."
    )
    var allowlist = environment["LLMTAP_ALLOWLIST"] ?? Allowlist.defaultHosts

    @Flag(
        help:
            "Refuse (403) hosts not on the allowlist instead of tunnelling them untouched. Env: LLMTAP_DENY_UNLISTED=1."
    )
    var denyUnlisted = EnvironmentSettings.flag("LLMTAP_DENY_UNLISTED", environment: environment)

    @Option(help: "Ports MITM clients may CONNECT to, comma-separated. Env: LLMTAP_MITM_PORTS.")
    var mitmPorts = environment["LLMTAP_MITM_PORTS"] ?? "443"

    @OptionGroup var ca: CACommand.Options

    @Option(
        help:
            "host:port of the reverse listener. Env: LISTEN_ADDR. Default: 0.0.0.0:3000, or none when a configuration serves only https_port."
    )
    var listen: String? = environment["LISTEN_ADDR"]

    /// The plain reverse listener's address; nil when a configuration serves HTTPS alone.
    private var plainListen: String? {
        if let listen { return listen }
        if let (file, _) = SidecarEnvironment.config, file.httpsPort != nil, file.httpPort == nil { return nil }
        return "0.0.0.0:3000"
    }

    @Option(help: "Where requests go: http:// or https://, with an optional path prefix. Env: UPSTREAM.")
    var upstream = environment["UPSTREAM"] ?? "https://api.openai.com"

    @Option(
        help:
            "A PEM file of extra trust roots for the upstream's TLS certificate, besides the system's. Env: UPSTREAM_CA_FILE."
    )
    var upstreamCaFile: String?

    @Option(help: "The collector's analysis socket. Env: LLMTAP_COLLECTOR.")
    var collector = environment["LLMTAP_COLLECTOR"] ?? "tcp://127.0.0.1:7101"

    @Option(
        help:
            "The collector's policy socket (virtual keys, limits, budgets), e.g. tcp://collector:7102. Without it, no policy applies. Env: LLMTAP_POLICY."
    )
    var policy: String? = environment["LLMTAP_POLICY"]

    @Flag(
        help:
            "Accept only LLMTap virtual keys (needs --policy): any other credential, or none, gets 401. Env: LLMTAP_REQUIRE_VIRTUAL_KEY=1."
    )
    var requireVirtualKey = EnvironmentSettings.flag("LLMTAP_REQUIRE_VIRTUAL_KEY", environment: environment)

    @Option(
        help:
            "A file of upstream credentials for projects, one name=secret per line; LLMTAP_CREDENTIAL_<NAME> variables work too. Env: LLMTAP_CREDENTIALS_FILE."
    )
    var credentialsFile: String? = environment["LLMTAP_CREDENTIALS_FILE"]

    @Option(help: "A label for the app this sidecar serves. Env: LLMTAP_APP.")
    var app = environment["LLMTAP_APP"] ?? "default"

    @Option(help: "This sidecar's id in every record. Env: LLMTAP_SIDECAR_ID. Default: the hostname.")
    var sidecarId = environment["LLMTAP_SIDECAR_ID"] ?? ProcessInfo.processInfo.hostName

    @Option(
        help:
            "Body bytes copied to the collector per direction and exchange; forwarding is never capped. Past it, the response's last 16 KiB still go (streams report usage at their end). Env: LLMTAP_MAX_CAPTURE_BYTES."
    )
    var maxCaptureBytes = EnvironmentSettings.int("LLMTAP_MAX_CAPTURE_BYTES", 1 << 20, environment: environment)

    @Option(help: "Largest request head accepted; larger gets 431. Env: LLMTAP_MAX_HEADER_BYTES.")
    var maxHeaderBytes = EnvironmentSettings.int("LLMTAP_MAX_HEADER_BYTES", 64 << 10, environment: environment)

    @Option(
        help:
            "Seconds the upstream may stay silent, before answering or mid-stream; then 504 (or a closed stream). Env: LLMTAP_UPSTREAM_TIMEOUT."
    )
    var upstreamTimeout = EnvironmentSettings.seconds("LLMTAP_UPSTREAM_TIMEOUT", 600, environment: environment)

    @Option(help: "Seconds to connect to the upstream; then 502. Env: LLMTAP_CONNECT_TIMEOUT.")
    var connectTimeout = EnvironmentSettings.seconds("LLMTAP_CONNECT_TIMEOUT", 10, environment: environment)

    @Option(help: "Seconds exchanges under way get to finish on SIGTERM or after SIGUSR2. Env: LLMTAP_DRAIN_TIMEOUT.")
    var drainTimeout = EnvironmentSettings.seconds("LLMTAP_DRAIN_TIMEOUT", 30, environment: environment)

    @Option(
        name: [.customShort("p"), .long],
        help:
            "A file to write the process id to (atomically, by rename), written again by the process a hot upgrade starts. Env: LLMTAP_PID_FILE."
    )
    var pidFile: String? = environment["LLMTAP_PID_FILE"]

    @Option(
        help:
            "Seconds the process a hot upgrade (SIGUSR2) starts has to be ready; then it is stopped and this one keeps serving. Env: LLMTAP_UPGRADE_TIMEOUT."
    )
    var upgradeTimeout = EnvironmentSettings.seconds("LLMTAP_UPGRADE_TIMEOUT", 60, environment: environment)

    @Option(
        help:
            "Seconds a client connection may stay idle between requests, or take to send a request head (then 408). Env: LLMTAP_CLIENT_TIMEOUT."
    )
    var clientTimeout = EnvironmentSettings.seconds("LLMTAP_CLIENT_TIMEOUT", 75, environment: environment)

    @Option(
        help:
            "Key of the HMAC-SHA256 that turns credentials into tenant ids. Give every sidecar of a fleet the same one. Env: LLMTAP_TENANT_KEY. Default: a built-in key, so tenant ids are stable but computable by anyone who knows the credential."
    )
    var tenantKey = environment["LLMTAP_TENANT_KEY"] ?? TenantHasher.defaultKey

    @Option(help: "Event-loop threads. Env: LLMTAP_THREADS. Default: one per core.")
    var threads = EnvironmentSettings.int("LLMTAP_THREADS", System.coreCount, environment: environment)

    @Option(help: "Seconds between heartbeats to the collector. Env: LLMTAP_HEARTBEAT_INTERVAL.")
    var heartbeatInterval = EnvironmentSettings.seconds("LLMTAP_HEARTBEAT_INTERVAL", 5, environment: environment)

    @Option(
        help:
            "Records the publisher may queue while the collector is slow or away; past it they are dropped and counted. A full queue of the default size holds about 25 MB. Env: LLMTAP_MAX_QUEUED_RECORDS."
    )
    var maxQueuedRecords = EnvironmentSettings.int("LLMTAP_MAX_QUEUED_RECORDS", 16_384, environment: environment)

    @Option(help: "Bytes the publisher may queue. Env: LLMTAP_MAX_QUEUED_BYTES.")
    var maxQueuedBytes = EnvironmentSettings.int("LLMTAP_MAX_QUEUED_BYTES", 64 << 20, environment: environment)

    @Option(
        help:
            "Client connections open at once, both listeners together; one more gets 503 and is closed. Env: LLMTAP_MAX_CONNECTIONS."
    )
    var maxConnections = EnvironmentSettings.int("LLMTAP_MAX_CONNECTIONS", 10_000, environment: environment)

    @Option(
        help:
            "Streams an HTTP/2 client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); one more is refused with RST_STREAM. Env: LLMTAP_MAX_CONCURRENT_STREAMS."
    )
    var maxConcurrentStreams = EnvironmentSettings.int(
        "LLMTAP_MAX_CONCURRENT_STREAMS", 100, environment: environment)

    @Option(
        name: .customLong("max-websocket-message-bytes"),
        help:
            "The largest WebSocket message (all its frames) the sidecar passes; one larger ends its session with close code 1009. Env: LLMTAP_MAX_WEBSOCKET_MESSAGE_BYTES."
    )
    var maxWebSocketMessageBytes = EnvironmentSettings.int(
        "LLMTAP_MAX_WEBSOCKET_MESSAGE_BYTES", 16 << 20, environment: environment)

    @Option(help: "trace, debug, info, notice, warning, error or critical. Env: LOG_LEVEL.")
    var logLevel = environment["LOG_LEVEL"] ?? "info"

    func validate() throws {
        guard heartbeatInterval > 0 else { throw ValidationError("--heartbeat-interval must be more than 0 seconds") }
        guard maxQueuedRecords > 0, maxQueuedBytes > 0 else {
            throw ValidationError("the queue limits must be positive")
        }
        do {
            try EnvironmentSettings.check()
            _ = try durations()
        } catch {
            throw ValidationError("\(error)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError(
                "--log-level must be one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")); \(named("--log-level", "LOG_LEVEL", logLevel)) is \"\(logLevel)\""
            )
        }
        guard (1...100_000_000).contains(maxQueuedRecords), (1...1 << 40).contains(maxQueuedBytes) else {
            throw ValidationError(
                "the queue limits are too large: --max-queued-records at most 100000000, --max-queued-bytes at most 2^40"
            )
        }
        guard (0...1 << 30).contains(maxCaptureBytes) else {
            throw ValidationError("--max-capture-bytes must be 0 to 1073741824, not \(maxCaptureBytes)")
        }
        guard (1024...(16 << 20)).contains(maxHeaderBytes) else {
            throw ValidationError("--max-header-bytes must be between 1024 and 16777216")
        }
        guard (1...1024).contains(threads) else { throw ValidationError("--threads must be 1 to 1024, not \(threads)") }
        guard (1...1_000_000).contains(maxConnections) else {
            throw ValidationError("--max-connections must be 1 to 1000000, not \(maxConnections)")
        }
        guard (1...10_000).contains(maxConcurrentStreams) else {
            throw ValidationError("--max-concurrent-streams must be 1 to 10000, not \(maxConcurrentStreams)")
        }
        guard (125...(1 << 30)).contains(maxWebSocketMessageBytes) else {
            throw ValidationError(
                "--max-websocket-message-bytes must be 125 to 1073741824, not \(maxWebSocketMessageBytes)")
        }
        guard !requireVirtualKey || policy != nil else {
            throw ValidationError(
                "--require-virtual-key needs --policy: without the collector's policy no key could be checked")
        }
        func check(_ flag: String, _ variable: String, _ value: String, _ parse: (String) throws -> Void) throws {
            do {
                try parse(value)
            } catch {
                throw ValidationError("\(named(flag, variable, value)): \(error)")
            }
        }
        try check("--upstream", "UPSTREAM", upstream) { _ = try UpstreamTarget(url: $0) }
        if let listen { try check("--listen", "LISTEN_ADDR", listen) { _ = try ListenAddress($0) } }
        try check("--mitm-listen", "MITM_LISTEN_ADDR", mitmListen) { _ = try ListenAddress($0) }
        try check("--allowlist", "LLMTAP_ALLOWLIST", allowlist) { _ = try Allowlist($0) }
        try check("--mitm-ports", "LLMTAP_MITM_PORTS", mitmPorts) { _ = try Self.ports($0) }
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
        let logger = Logger(label: "llmtap.sidecar")
        // SIGUSR2 is a hot upgrade and SIGHUP a reload: ignored until their services trap them,
        // rather than ending the process.
        signal(SIGUSR2, SIG_IGN)
        let startup = Startup(pidFile: pidFile, environment: ProcessInfo.processInfo.environment, logger: logger)
        // With a configuration file: its routes and certificate, which SIGHUP reloads.
        var gateway: GatewayState?
        if let (file, path) = SidecarEnvironment.config {
            signal(SIGHUP, SIG_IGN)
            do {
                let routes = try GatewayRoutes.make(
                    file, environment: Self.environment, keyHasher: TenantHasher(key: tenantKey), logger: logger)
                var tls: ServerTLS?
                if let httpsPort = file.httpsPort {
                    do {
                        tls = try ServerTLS(certificate: file.certFile ?? "", key: file.privateKeyFile ?? "")
                    } catch {
                        throw ConfigurationError("cannot serve HTTPS on https_port \(httpsPort): \(error)")
                    }
                }
                gateway = GatewayState(routes: routes, tls: tls)
            } catch {
                throw ValidationError("\(path): \(error)")
            }
        }
        let target = try UpstreamTarget(url: upstream)

        // https upstreams (reverse mode's, and every MITM host) are verified against the system
        // roots plus --upstream-ca-file.
        let sslContext: NIOSSLContext
        do {
            sslContext = try Self.makeUpstreamTLS(caFile: upstreamCaFile ?? Self.environment["UPSTREAM_CA_FILE"])
        } catch {
            throw ValidationError("cannot set up TLS to the upstream: \(error)")
        }
        var authority: CertificateAuthority?
        if mode != .reverse {
            do {
                let (loaded, created) = try CertificateAuthority.loadOrCreate(directory: ca.caDir)
                authority = loaded
                logger.info(
                    created ? "created the LLMTap CA; clients must trust it" : "loaded the LLMTap CA",
                    metadata: ["certificate": "\(loaded.certificatePath)"])
            } catch {
                throw ValidationError("\(error)")
            }
        }

        var publisherConfiguration = AnalysisPublisherConfiguration(endpoint: collector, sidecarID: sidecarId)
        publisherConfiguration.maxQueuedRecords = maxQueuedRecords
        publisherConfiguration.maxQueuedBytes = maxQueuedBytes
        let publisher: AnalysisPublisher
        do {
            publisher = try AnalysisPublisher(configuration: publisherConfiguration, logger: logger)
        } catch {
            throw ValidationError(
                "cannot use \(named("--collector", "LLMTAP_COLLECTOR", collector)) \(collector): \(error)")
        }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let counters = SidecarCounters(bootID: publisherConfiguration.bootID)
        let durations = try durations()
        let pools = try await UpstreamPools.make(
            group: group,
            settings: .init(
                sslContext: sslContext, connectTimeout: durations.connect,
                maxIdle: 64, idleTimeout: .seconds(30)
            ))
        var settings = ProxySettings(
            tap: TapSettings(app: app, maxCaptureBytes: maxCaptureBytes, tailBytes: 16 << 10),
            tenantHasher: TenantHasher(key: tenantKey),
            upstreamTimeout: durations.upstream,
            clientTimeout: durations.client,
            maxHeaderBytes: maxHeaderBytes
        )
        settings.maxConnections = Self.raiseFileLimit(for: maxConnections, logger: logger)
        settings.maxConcurrentStreams = maxConcurrentStreams
        settings.maxWebSocketMessageBytes = maxWebSocketMessageBytes
        var subscriber: PolicySubscriber?
        if let policy {
            let credentials: UpstreamCredentials
            do {
                credentials = try UpstreamCredentials.load(file: credentialsFile, environment: Self.environment)
            } catch {
                throw ValidationError("cannot read the upstream credentials: \(error)")
            }
            let gate = PolicyGate(requireVirtualKey: requireVirtualKey)
            do {
                subscriber = try PolicySubscriber(
                    endpoint: policy, bootID: publisherConfiguration.bootID, gate: gate, credentials: credentials,
                    firstSnapshot: { startup.policyReady() }, logger: logger)
            } catch {
                throw ValidationError("cannot use \(named("--policy", "LLMTAP_POLICY", policy)) \(policy): \(error)")
            }
            settings.policy = gate
            logger.info(
                "policy on: virtual keys are checked; requests with them get 503 until the first snapshot",
                metadata: [
                    "policy": "\(policy)", "require_virtual_key": "\(requireVirtualKey)",
                    "credentials": "\(credentials.names)",
                ])
        }
        logger.info(
            "llmtap-sidecar started",
            metadata: [
                "sidecar_id": "\(sidecarId)", "app": "\(app)", "collector": "\(collector)", "upstream": "\(target)",
                "boot_id": "\(publisherConfiguration.bootID)", "version": "\(LLMTapVersion.current)",
            ])
        if tenantKey == TenantHasher.defaultKey {
            logger.notice("tenant ids use the built-in key; set LLMTAP_TENANT_KEY to keep them private")
        }

        // The gateway's routes serve the reverse listener; MITM connections go where they asked.
        var reverseSettings = settings
        reverseSettings.gateway = gateway
        if let routes = gateway?.routes, !routes.isEmpty {
            logger.info(
                "routing to the configuration's providers",
                metadata: [
                    "providers": "\(routes.providers.map { "\($0.name)=\($0.target)" }.joined(separator: ", "))"
                ])
        }
        var listeners: [ServiceGroupConfiguration.ServiceConfiguration] = []
        let drain = durations.drain
        // connect_tunnel_enabled: the gateway's listeners also open blind CONNECT tunnels (to --mitm-ports).
        var tunnels: MITMSettings?
        if let (file, _) = SidecarEnvironment.config, file.connectTunnelEnabled {
            tunnels = MITMSettings(
                proxy: reverseSettings, allowlist: try Allowlist(allowlist), ports: try Self.ports(mitmPorts),
                denyUnlisted: false, connectTimeout: durations.connect)
        }
        if mode != .mitm, let plainListen {
            listeners.append(
                .init(
                    service: ReverseProxyServer(
                        listen: try ListenAddress(plainListen), group: group, target: target, settings: reverseSettings,
                        pools: pools,
                        publisher: publisher,
                        counters: counters, drainTimeout: drain, startup: startup, logger: logger, tunnels: tunnels
                    ), successTerminationBehavior: .gracefullyShutdownGroup,
                    failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        if let (file, _) = SidecarEnvironment.config, let httpsPort = file.httpsPort, let gateway {
            let host = file.httpsBindAddress.contains(":") ? "[\(file.httpsBindAddress)]" : file.httpsBindAddress
            listeners.append(
                .init(
                    service: ReverseProxyServer(
                        listen: try ListenAddress("\(host):\(httpsPort)"), group: group, target: target,
                        settings: reverseSettings, pools: pools, publisher: publisher, counters: counters,
                        drainTimeout: drain, startup: startup, logger: logger, tls: { gateway.tls }, tunnels: tunnels
                    ), successTerminationBehavior: .gracefullyShutdownGroup,
                    failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        let mintingPool = NIOThreadPool(numberOfThreads: 1)
        mintingPool.start()
        if mode != .reverse, let authority {
            let mitm = MITMSettings(
                proxy: settings, allowlist: try Allowlist(allowlist), ports: try Self.ports(mitmPorts),
                denyUnlisted: denyUnlisted,
                connectTimeout: durations.connect
            )
            listeners.append(
                .init(
                    service: MITMProxyServer(
                        listen: try ListenAddress(mitmListen), group: group, settings: mitm, pools: pools,
                        leaves: LeafContextCache(authority: authority, pool: mintingPool, logger: logger),
                        publisher: publisher, counters: counters, drainTimeout: drain, startup: startup, logger: logger
                    ), successTerminationBehavior: .gracefullyShutdownGroup,
                    failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        var checks: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let gateway, let (file, path) = SidecarEnvironment.config {
            if file.healthCheck.enabled {
                if !gateway.routes.providers.contains(where: { $0.probe != nil }) {
                    logger.notice("health_check is enabled, but no provider has a health_check request yet")
                }
                checks.append(
                    .init(
                        service: HealthChecker(
                            state: gateway, pools: pools, eventLoop: group.next(),
                            interval: .milliseconds(Int64(file.healthCheck.intervalSeconds * 1000)), logger: logger)))
            }
            checks.append(
                .init(
                    service: ConfigReloader(
                        path: path, state: gateway, servesHTTPS: file.httpsPort != nil,
                        environment: ProcessInfo.processInfo.environment, keyHasher: TenantHasher(key: tenantKey),
                        logger: logger)))
        }
        startup.expect(listeners: listeners.count, policy: subscriber != nil)
        // Once the process a SIGUSR2 starts is ready, the upgrader returns: everything stops as on SIGTERM.
        let upgrader = ServiceGroupConfiguration.ServiceConfiguration(
            service: HotUpgrader(
                executable: HotUpgrader.currentExecutable(), arguments: CommandLine.arguments, startup: startup,
                readyTimeout: .nanoseconds(durations.upgrade.nanoseconds), logger: logger),
            successTerminationBehavior: .gracefullyShutdownGroup)
        let heartbeat = HeartbeatService(
            publisher: publisher, counters: counters,
            interval: .nanoseconds(durations.heartbeat.nanoseconds), app: app, mode: mode.rawValue, gateway: gateway
        )
        // Every long-lived part, in the order they depend on each other: SIGTERM or SIGINT stops
        // them one at a time from the last. The listeners drain first, then the heartbeat stops;
        // closing the upstream connections left settles their exchanges (their records go out),
        // and the publisher flushes last.
        let stops: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: StopOnShutdown("analysis publisher", async: { await publisher.shutdownGracefully() })),
            .init(
                service: StopOnShutdown("certificate minting", async: { try? await mintingPool.shutdownGracefully() })),
            .init(service: StopOnShutdown("event loops", async: { try? await group.shutdownGracefully() })),
            .init(service: StopOnShutdown("policy subscriber", blocking: { [subscriber] in subscriber?.shutdown() })),
            .init(service: StopOnShutdown("upstream pools", async: { await pools.closeAll() })),
        ]
        do {
            try startup.writePIDFileAtStart()
        } catch {
            throw ValidationError("cannot write \(named("--pid-file", "LLMTAP_PID_FILE", pidFile ?? "")): \(error)")
        }
        let services = ServiceGroup(
            configuration: .init(
                // The sidecar is no use without its listeners: if one stops, everything stops.
                services: stops + [.init(service: heartbeat), upgrader] + checks + listeners,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            ))
        var failure: (any Error)?
        do {
            try await services.run()
        } catch {
            failure = error
        }
        startup.stopped()
        let stats = publisher.stats
        logger.info(
            "llmtap-sidecar stopped", metadata: ["published": "\(stats.published)", "dropped": "\(stats.dropped)"])
        if let failure { throw failure }
    }

    /// Each client connection may hold an upstream one too: the soft limit on open files is raised
    /// to the hard one, and where it is still too low for --max-connections, the limit used is what
    /// the open files allow (said at start), so the sidecar refuses with 503 before accept fails.
    static func raiseFileLimit(for maxConnections: Int, logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return maxConnections }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        // Two descriptors a connection (client and upstream), and some for everything else.
        let allowed = max(1, (Int(clamping: limit.rlim_cur) - 256) / 2)
        guard allowed < maxConnections else { return maxConnections }
        logger.notice(
            "--max-connections is more than the open-file limit allows; using the lower figure (raise ulimit -n for more)",
            metadata: [
                "open_file_limit": "\(limit.rlim_cur)", "max_connections": "\(maxConnections)", "using": "\(allowed)",
            ])
        return allowed
    }

    /// The timeouts and intervals, checked: finite, positive, and at most `EnvironmentSettings.maximumSeconds`.
    func durations() throws(ConfigurationError) -> (
        upstream: TimeAmount, connect: TimeAmount, client: TimeAmount, drain: TimeAmount, heartbeat: TimeAmount,
        upgrade: TimeAmount
    ) {
        (
            upstream: .nanoseconds(
                try EnvironmentSettings.nanoseconds(
                    upstreamTimeout, option: "--upstream-timeout (LLMTAP_UPSTREAM_TIMEOUT)")),
            connect: .nanoseconds(
                try EnvironmentSettings.nanoseconds(
                    connectTimeout, option: "--connect-timeout (LLMTAP_CONNECT_TIMEOUT)")),
            client: .nanoseconds(
                try EnvironmentSettings.nanoseconds(clientTimeout, option: "--client-timeout (LLMTAP_CLIENT_TIMEOUT)")),
            drain: .nanoseconds(
                try EnvironmentSettings.nanoseconds(
                    drainTimeout, option: "--drain-timeout (LLMTAP_DRAIN_TIMEOUT)", allowZero: true)),
            heartbeat: .nanoseconds(
                try EnvironmentSettings.nanoseconds(
                    heartbeatInterval, option: "--heartbeat-interval (LLMTAP_HEARTBEAT_INTERVAL)")),
            upgrade: .nanoseconds(
                try EnvironmentSettings.nanoseconds(
                    upgradeTimeout, option: "--upgrade-timeout (LLMTAP_UPGRADE_TIMEOUT)"))
        )
    }

    static func ports(_ list: String) throws(ConfigurationError) -> Set<Int> {
        var ports: Set<Int> = []
        for entry in list.split(separator: ",") {
            guard let port = Int(entry.trimmingCharacters(in: .whitespaces)), (1...65535).contains(port) else {
                throw ConfigurationError("--mitm-ports takes port numbers, comma-separated, not \(list)")
            }
            ports.insert(port)
        }
        guard !ports.isEmpty else { throw ConfigurationError("--mitm-ports needs at least one port") }
        return ports
    }

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
