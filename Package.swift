// swift-tools-version:6.0
import PackageDescription

/// SwiftNIO's HTTP/1.1 and TLS, for every target that speaks HTTP.
let nioHTTP: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOHTTP1", package: "swift-nio"),
    .product(name: "NIOSSL", package: "swift-nio-ssl"),
]
let argumentParser: Target.Dependency = .product(name: "ArgumentParser", package: "swift-argument-parser")

/// A fuzz build (scripts/fuzz): LLMTap's own targets compiled with AddressSanitizer and libFuzzer's
/// coverage, LLMTAP_FUZZ defined so the tests can hand a parser to it, and libFuzzer without its
/// `main` linked into whatever uses TestSupport. The packages it depends on are not instrumented:
/// the fuzz build reuses the debug build's copies of them in `.build` and recompiles only this
/// package's modules. Normal builds see none of it.
let fuzzRuntime = Context.environment["LLMTAP_FUZZ_RUNTIME"]
let fuzzing = fuzzRuntime != nil
let instrumented: [SwiftSetting] =
    fuzzing
    ? [.unsafeFlags(["-sanitize=address", "-sanitize-coverage=edge,trace-cmp,inline-8bit-counters,pc-table"])] : []
/// lld links, as gold fails on ASan's symbols.
let sanitizerLinking: [LinkerSetting] = fuzzing ? [.unsafeFlags(["-sanitize=address", "-use-ld=lld"])] : []
let fuzzSwiftSettings: [SwiftSetting] = fuzzing ? [.define("LLMTAP_FUZZ")] + instrumented : []
let fuzzLinkerSettings: [LinkerSetting] =
    sanitizerLinking + (fuzzRuntime.map { [.unsafeFlags(["-Xlinker", $0, "-lstdc++"])] } ?? [])

let package = Package(
    name: "LLMTap",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "llmtap-sidecar", targets: ["Sidecar"]),
        .executable(name: "llmtap-collector", targets: ["Collector"]),
        .executable(name: "llmtap-wire-bench", targets: ["WireBench"]),
        .executable(name: "llmtap-collector-bench", targets: ["CollectorBench"]),
        .executable(name: "llmtap-mock-upstream", targets: ["MockUpstream"]),
        .executable(name: "llmtap-bench", targets: ["Bench"]),
        .library(name: "Wire", targets: ["Wire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CZeroMQ",
            pkgConfig: "libzmq",
            providers: [.apt(["libzmq3-dev"])]
        ),
        .target(
            name: "Wire",
            dependencies: [
                "CZeroMQ",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["analysis.proto"],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        .executableTarget(
            name: "Sidecar",
            dependencies: nioHTTP + [
                "Wire",
                argumentParser,
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "Crypto", package: "swift-crypto"),
                // MITM mode: the local CA and the leaf certificates it signs.
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                // `llmtap-sidecar bench-parsers` runs llhttp the way a NIO pipeline does.
                .product(name: "NIOEmbedded", package: "swift-nio"),
                // The gateway's configuration file (--config), reloaded on SIGHUP.
                .product(name: "Yams", package: "Yams"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                // HTTP/2 from clients (h2c on the reverse listener), each stream an exchange; HPACK
                // for the header blocks of WebSocket over HTTP/2 (extended CONNECT).
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        // A stand-in for the LLM providers, for tests, benchmarks and demos: OpenAI, Anthropic and
        // Gemini wire formats, streaming included.
        .executableTarget(
            name: "MockUpstream",
            dependencies: nioHTTP + [
                argumentParser, .product(name: "Crypto", package: "swift-crypto"),
                // The Realtime API's WebSocket (/v1/realtime), and HTTP/2 over TLS (--http2).
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            ],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        .executableTarget(
            name: "Collector",
            dependencies: [
                "Wire",
                argumentParser,
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            // The shipped price table; --prices replaces it.
            resources: [.copy("Resources/prices.json")],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        // A load generator for LLM endpoints: latency, TTFB, throughput, errors.
        .executableTarget(
            name: "Bench",
            dependencies: nioHTTP + [argumentParser],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        // Throughput of the wire against raw libzmq: benchmarks/wire.sh runs it in release.
        .executableTarget(
            name: "WireBench",
            dependencies: [
                "Wire", "CZeroMQ", "TestSupport",
                argumentParser,
            ],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        // Load for the collector: synthetic exchanges over the wire, and /metrics delay probes.
        .executableTarget(
            name: "CollectorBench",
            dependencies: ["Wire", argumentParser, .product(name: "Logging", package: "swift-log")],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        // Helpers the tests (and the benchmark's sample records) share: starting the real binaries,
        // free ports, waiting for a condition.
        .target(
            name: "TestSupport",
            dependencies: ["Wire", "CZeroMQ", .product(name: "Logging", package: "swift-log")],
            path: "Tests/TestSupport",
            swiftSettings: fuzzSwiftSettings,
            linkerSettings: fuzzLinkerSettings
        ),
        .testTarget(
            name: "WireTests",
            dependencies: [
                "Wire", "CZeroMQ", "TestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["Golden"],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        .testTarget(
            name: "SidecarTests",
            dependencies: [
                "Wire", "TestSupport", "Sidecar",
                // llhttp, through NIO's decoder, is the reference the sidecar's own parser is held against.
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                // NIO's frame decoder, the reference the sidecar's WebSocket frame scanner is held against.
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
        .testTarget(
            name: "CollectorTests", dependencies: ["Wire", "TestSupport", "Collector"], exclude: ["Fixtures"],
            swiftSettings: instrumented, linkerSettings: sanitizerLinking
        ),
    ]
)
