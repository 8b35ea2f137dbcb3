import Foundation
import Prometheus
import Synchronization
import Wire

/// Every metric the collector serves on `/metrics`, registered here and nowhere else (a name
/// registered twice with different labels would crash swift-prometheus). Prefix `llmtap_`.
///
/// Labels come from bounded sets: app, sidecar and model are folded past their limits into
/// "other"; provider, status class, outcome, stream and token type are closed sets. The tenant is
/// never a label: per-key detail lives in SQLite.
final class CollectorMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let models: LabelBounds
    let apps: LabelBounds
    let sidecars: LabelBounds
    /// Gateway provider names (a sidecar configuration's), across sidecars.
    let providers = LabelBounds(limit: 200)
    /// Each sidecar's provider labels in its last heartbeat: one a reload removed loses its gauge.
    private let providerLabels = Mutex<[String: Set<String>]>([:])
    /// Providers one heartbeat may put on `/metrics`; more are left out.
    static let maxProvidersPerSidecar = 64
    private let links = Mutex<[String: LinkState]>([:])
    /// The receiver's refusal counts as last turned into counter increments.
    private let receiverSeen = Mutex<[String: UInt64]>([:])
    static let handshakeFailed = "handshake_failed"

    static let durationBuckets: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
    static let ttfbBuckets: [Double] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

    private struct LinkState {
        var lastHeartbeatUnix: Double = 0
        var intervalSeconds: Double = 5
    }

    struct BootKey: Hashable, Sendable {
        let sidecarID: String
        let bootID: String
    }

    /// `dropped` of each boot's last heartbeat: `records_dropped_by_sidecar_total` grows by the difference.
    private let droppedByBoot = Mutex<[BootKey: UInt64]>([:])
    /// The since-boot counts of each boot's last heartbeat that become `sidecar_*_total` counters:
    /// malformed requests, refused connections, stalled clients.
    private let countsByBoot = Mutex<[BootKey: [UInt64]]>([:])
    /// Boots whose counts are remembered; past it one is forgotten for each new one (a forged stream of boot
    /// ids must not grow the collector without bound).
    static let maxRememberedBoots = 10_000

    init(maxModelLabels: Int, maxAppLabels: Int = 100, maxSidecarLabels: Int = 1_000) {
        models = LabelBounds(limit: maxModelLabels)
        apps = LabelBounds(limit: maxAppLabels)
        sidecars = LabelBounds(limit: maxSidecarLabels)
        // Metrics without labels exist from the start, so a scrape shows them at zero.
        _ = inFlight
        for reason in FrameRejection.allCases { _ = decodeErrors(reason.rawValue) }
        _ = decodeErrors(Self.handshakeFailed)
    }

    private func descriptor(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "llmtap", metricName: name, unitName: unit, helpText: help)
    }

    // MARK: Traffic

    /// Counts one exchange everywhere it belongs.
    func record(_ row: ExchangeRecord) {
        let app = apps.label(row.app)
        let sidecar = sidecars.label(row.sidecarID)
        let model = models.label(row.model)
        let provider = row.provider
        registry.makeCounter(
            descriptor: descriptor(
                "requests", "total",
                "Exchanges seen, by app, sidecar, provider, model, status class, outcome, stream and the client's protocol (http1, h2, websocket: a WebSocket session is one exchange)."
            ),
            labels: [
                ("app", app), ("sidecar", sidecar), ("provider", provider), ("model", model),
                ("status_class", row.statusClass), ("outcome", row.outcome), ("stream", row.stream ? "true" : "false"),
                ("protocol", row.clientProtocol),
            ]
        ).increment()
        if row.usageSource == UsageSource.reported.rawValue {
            for (type, count) in [
                ("input", row.inputTokens), ("output", row.outputTokens), ("cached_input", row.cachedInputTokens),
                ("cache_creation", row.cacheCreationTokens), ("reasoning", row.reasoningTokens),
                ("audio_input", row.audioInputTokens), ("audio_cached_input", row.audioCachedInputTokens),
                ("audio_output", row.audioOutputTokens),
            ] where count > 0 {
                registry.makeCounter(
                    descriptor: descriptor(
                        "tokens", "total",
                        "Tokens reported by the providers. input, cached_input, cache_creation, output and the Realtime API's audio_input, audio_cached_input and audio_output are disjoint; reasoning is part of output."
                    ),
                    labels: [
                        ("app", app), ("sidecar", sidecar), ("provider", provider), ("model", model), ("type", type),
                    ]
                ).increment(by: Int64(count))
            }
        }
        if let cost = row.costUSD, cost > 0 {
            registry.makeCounter(
                descriptor: descriptor(
                    "cost_usd", "total", "Cost in USD from the price table, of exchanges with reported usage."),
                labels: [
                    ("app", app), ("sidecar", sidecar), ("provider", provider), ("model", model),
                ]
            ).increment(by: cost)
        }
        if !row.priced && !row.model.isEmpty {
            registry.makeCounter(
                descriptor: descriptor(
                    "unpriced_exchanges", "total",
                    "Exchanges whose model is not in the price table (they cost nothing here)."),
                labels: [
                    ("provider", provider), ("model", model),
                ]
            ).increment()
        }
        if !row.parseError.isEmpty {
            registry.makeCounter(
                descriptor: descriptor(
                    "parse_errors", "total", "Exchanges whose bodies could not be read (invalid JSON, broken streams)."),
                labels: [
                    ("provider", provider)
                ]
            ).increment()
        }
        if !row.rejectReason.isEmpty {
            let reason = Self.rejectReasons.contains(row.rejectReason) ? row.rejectReason : "other"
            registry.makeCounter(
                descriptor: descriptor(
                    "policy_rejections", "total", "Requests the sidecars refused by policy, by reason."),
                labels: [
                    ("reason", reason)
                ]
            ).increment()
        }
        if let duration = row.durationMs {
            registry.makeValueHistogram(
                descriptor: descriptor(
                    "request_duration", "seconds", "From the request's arrival at the sidecar to the response's end."),
                labels: [
                    ("app", app), ("provider", provider), ("model", model),
                ], buckets: Self.durationBuckets
            ).record(duration / 1000)
        }
        if let ttfb = row.ttfbMs {
            registry.makeValueHistogram(
                descriptor: descriptor(
                    "time_to_first_byte", "seconds",
                    "From the request's arrival at the sidecar to the upstream's first response byte."),
                labels: [
                    ("app", app), ("provider", provider), ("model", model),
                ], buckets: Self.ttfbBuckets
            ).record(ttfb / 1000)
        }
    }

    var inFlight: Gauge {
        registry.makeGauge(
            descriptor: descriptor(
                "in_flight_exchanges", "", "Exchanges begun and not yet ended, as the collector sees them."))
    }

    func anomaly(_ kind: ExchangeAssembler.Anomaly, sidecar: String) {
        registry.makeCounter(
            descriptor: descriptor(
                "assembly_anomalies", "total", "Records that fit no exchange: for an unknown exchange, or repeated."),
            labels: [
                ("sidecar", sidecars.label(sidecar)), ("kind", kind.rawValue),
            ]
        ).increment()
    }

    // MARK: Link health

    func recordsReceived(sidecar: String, count: Int = 1) {
        registry.makeCounter(
            descriptor: descriptor("records_received", "total", "Wire records received and decoded, per sidecar."),
            labels: [
                ("sidecar", sidecars.label(sidecar))
            ]
        ).increment(by: Int64(count))
    }

    /// A sequence gap: records lost between the sockets.
    func recordsLost(sidecar: String, count: UInt64) {
        guard count > 0 else { return }
        registry.makeCounter(
            descriptor: descriptor(
                "records_lost", "total",
                "Wire records missing from a sidecar's sequence and not dropped by the sidecar itself."),
            labels: [
                ("sidecar", sidecars.label(sidecar))
            ]
        ).increment(by: Int64(clamping: count))
    }

    /// Brings `decode_errors_total` up to the receiver's own counts (refused frames by reason, and
    /// peers that failed the ZeroMQ handshake: garbage on the port).
    func sync(receiver stats: ReceiverStats) {
        var current = Dictionary(uniqueKeysWithValues: stats.rejected.map { ($0.key.rawValue, $0.value) })
        current[Self.handshakeFailed] = stats.handshakeFailures
        let increases = receiverSeen.withLock { seen -> [(String, UInt64)] in
            defer { seen = current }
            return current.compactMap { reason, count in
                count > (seen[reason] ?? 0) ? (reason, count - (seen[reason] ?? 0)) : nil
            }
        }
        for (reason, increase) in increases { decodeErrors(reason).increment(by: Int64(clamping: increase)) }
    }

    func decodeErrors(_ reason: String) -> Counter {
        registry.makeCounter(
            descriptor: descriptor("decode_errors", "total", "Frames refused on the analysis socket, by reason."),
            labels: [("reason", reason)])
    }

    func heartbeat(sidecar: String, bootID: String, beat: WireHeartbeat, nowUnix: Double) {
        let label = sidecars.label(sidecar)
        links.withLock { links in
            var link = links[label] ?? LinkState()
            link.lastHeartbeatUnix = nowUnix
            link.intervalSeconds = beat.intervalMs > 0 ? Double(beat.intervalMs) / 1000 : 5
            links[label] = link
        }
        let key = BootKey(sidecarID: sidecar, bootID: bootID)
        let increase = droppedByBoot.withLock { dropped -> UInt64 in
            if dropped[key] == nil && dropped.count >= Self.maxRememberedBoots, let any = dropped.keys.first {
                dropped[any] = nil
            }
            let before = dropped[key] ?? 0
            dropped[key] = max(before, beat.dropped)
            return beat.dropped > before ? beat.dropped - before : 0
        }
        // What the sidecar says of itself, so an operator sees its load and any attack on it.
        let counted: [(String, String)] = [
            (
                "sidecar_malformed_requests",
                "Requests each sidecar refused as malformed HTTP (400, 431), from its heartbeats."
            ),
            (
                "sidecar_refused_connections",
                "Connections each sidecar refused at --max-connections (503), from its heartbeats."
            ),
            (
                "sidecar_stalled_clients",
                "Exchanges each sidecar ended because the client stopped reading, from its heartbeats."
            ),
        ]
        let now = [beat.malformedRequests, beat.refusedConnections, beat.stalledClients]
        let increases = countsByBoot.withLock { counts -> [UInt64] in
            if counts[key] == nil && counts.count >= Self.maxRememberedBoots, let any = counts.keys.first {
                counts[any] = nil
            }
            let before = counts[key] ?? Array(repeating: 0, count: now.count)
            counts[key] = zip(before, now).map { max($0, $1) }
            return zip(before, now).map { $1 > $0 ? $1 - $0 : 0 }
        }
        for ((name, help), increase) in zip(counted, increases) {
            registry.makeCounter(descriptor: descriptor(name, "total", help), labels: [("sidecar", label)]).increment(
                by: Int64(clamping: increase))
        }
        for (name, help, value) in [
            ("sidecar_in_flight_exchanges", "Exchanges under way on each sidecar, from its heartbeats.", beat.inFlight),
            (
                "sidecar_open_connections", "Client connections open on each sidecar, from its heartbeats.",
                beat.openConnections
            ),
            (
                "sidecar_queue_depth", "Records waiting in each sidecar's publisher queue, from its heartbeats.",
                beat.queueDepth
            ),
            (
                "sidecar_queue_bytes", "Bytes waiting in each sidecar's publisher queue, from its heartbeats.",
                beat.queueBytes
            ),
            (
                "sidecar_published_records",
                "Records each sidecar has handed to ZeroMQ since it started, from its heartbeats.", beat.published
            ),
        ] {
            registry.makeGauge(descriptor: descriptor(name, "", help), labels: [("sidecar", label)]).set(
                to: Double(value))
        }
        registry.makeGauge(
            descriptor: descriptor("sidecar_uptime", "seconds", "Each sidecar's uptime, from its heartbeats."),
            labels: [
                ("sidecar", label)
            ]
        ).set(to: Double(beat.uptimeMs) / 1000)
        registry.makeGauge(
            descriptor: descriptor(
                "last_heartbeat_timestamp", "seconds", "When each sidecar's last heartbeat arrived, Unix seconds."),
            labels: [
                ("sidecar", label)
            ]
        ).set(to: nowUnix)
        let dropped = registry.makeCounter(
            descriptor: descriptor(
                "records_dropped_by_sidecar", "total",
                "Wire records each sidecar dropped itself (queue full, collector away), from its heartbeats."),
            labels: [
                ("sidecar", label)
            ])
        if increase > 0 { dropped.increment(by: Int64(clamping: increase)) }
        providerStates(sidecar: label, beat.providers)
        updateSidecarUp(nowUnix: nowUnix)
    }

    /// `provider_up{sidecar, provider}` from a heartbeat: 1 while the sidecar sends to it, 0
    /// while it is out after failures. A provider the sidecar no longer names loses its series.
    private func providerStates(sidecar: String, _ states: [WireProviderState]) {
        let descriptor = descriptor(
            "provider_up", "",
            "1 while a sidecar's gateway provider takes requests, 0 while it is out after failures, from its heartbeats."
        )
        var named: Set<String> = []
        var values: [String: Bool] = [:]
        for state in states.prefix(Self.maxProvidersPerSidecar) {
            let label = providers.label(state.name)
            named.insert(label)
            // Two names folded into "other": up only if both are.
            values[label] = (values[label] ?? true) && state.up
        }
        for (label, up) in values {
            registry.makeGauge(descriptor: descriptor, labels: [("sidecar", sidecar), ("provider", label)]).set(
                to: up ? 1 : 0)
        }
        let gone = providerLabels.withLock { labels -> Set<String> in
            defer { labels[sidecar] = named }
            return (labels[sidecar] ?? []).subtracting(named)
        }
        for label in gone {
            registry.unregisterGauge(
                registry.makeGauge(descriptor: descriptor, labels: [("sidecar", sidecar), ("provider", label)]))
        }
    }

    /// Continues from the heartbeat counts a previous run saved, so its drops are not counted again.
    func resume(heartbeatDropped: [BootKey: UInt64]) {
        droppedByBoot.withLock { $0.merge(heartbeatDropped) { max($0, $1) } }
    }

    var heartbeatDropped: [BootKey: UInt64] {
        droppedByBoot.withLock { $0 }
    }

    /// `sidecar_up` is 1 while heartbeats arrive within three intervals.
    func updateSidecarUp(nowUnix: Double) {
        let states = links.withLock { $0 }
        for (sidecar, link) in states {
            let up = nowUnix - link.lastHeartbeatUnix <= 3 * link.intervalSeconds
            registry.makeGauge(
                descriptor: descriptor("sidecar_up", "", "1 while a sidecar's heartbeats arrive on time, else 0."),
                labels: [
                    ("sidecar", sidecar)
                ]
            ).set(to: up ? 1 : 0)
        }
    }

    // MARK: Storage

    func storage(_ health: ExchangeWriter.Health) {
        registry.makeGauge(
            descriptor: descriptor("storage_queue_depth", "", "Exchange rows waiting to be written to SQLite.")
        ).set(to: Double(health.pending))
        registry.makeGauge(
            descriptor: descriptor("storage_rows_written", "", "Exchange rows written to SQLite since start.")
        ).set(to: Double(health.written))
        registry.makeGauge(
            descriptor: descriptor(
                "storage_rows_dropped", "", "Exchange rows dropped because the storage queue was full.")
        ).set(to: Double(health.dropped))
        registry.makeGauge(descriptor: descriptor("storage_write_failures", "", "Failed database writes since start."))
            .set(to: Double(health.failures))
        registry.makeGauge(descriptor: descriptor("storage_healthy", "", "1 when the last database write succeeded."))
            .set(to: health.healthy ? 1 : 0)
    }

    // MARK: Policy

    /// The reasons a sidecar gives (analysis.proto, ResponseDone.reject_reason); others are "other".
    static let rejectReasons: Set<String> = [
        "unknown_key", "expired_key", "revoked_key", "rate_limited", "parallel_limit", "budget_exceeded",
        "model_not_allowed",
        "key_required", "policy_unavailable", "credential_missing",
    ]

    func policySnapshotsRefused(_ count: Int) {
        registry.makeCounter(
            descriptor: descriptor(
                "policy_snapshots_refused", "total",
                "Snapshot subscriptions refused past the snapshot budget (the sidecar asks again).")
        ).increment(by: Int64(count))
    }

    func policySnapshotSent() {
        registry.makeCounter(
            descriptor: descriptor(
                "policy_snapshots_sent", "total",
                "Full policy snapshots sent to sidecars that joined, rejoined or fell behind.")
        ).increment()
    }

    func policyState(version: UInt64, keys: Int) {
        registry.makeGauge(
            descriptor: descriptor("policy_version", "", "The policy state's version; it grows with every change sent.")
        ).set(to: Double(version))
        registry.makeGauge(
            descriptor: descriptor("policy_keys", "", "Virtual keys known, revoked and expired included.")
        ).set(to: Double(keys))
    }

    /// A project's budget state. Projects are few (operators create them), so they are labels; keys are not.
    func budget(
        project: String, spentUSD: Double, limitUSD: Double?, spentTokens: Int64, limitTokens: Int64?, denied: Bool
    ) {
        let gauges = budgetGauges(project: project)
        gauges[0].set(to: spentUSD)
        gauges[1].set(to: Double(spentTokens))
        // A limit that is not set has no series, so spend / limit only exists where a limit does.
        if let limitUSD { gauges[2].set(to: limitUSD) } else { registry.unregisterGauge(gauges[2]) }
        if let limitTokens { gauges[3].set(to: Double(limitTokens)) } else { registry.unregisterGauge(gauges[3]) }
        gauges[4].set(to: denied ? 1 : 0)
    }

    func removeBudget(project: String) {
        for gauge in budgetGauges(project: project) { registry.unregisterGauge(gauge) }
    }

    private func budgetGauges(project: String) -> [Gauge] {
        let labels = [("project", project)]
        return [
            registry.makeGauge(
                descriptor: descriptor("budget_spend", "usd", "Spend in the project's budget period, USD."),
                labels: labels),
            registry.makeGauge(
                descriptor: descriptor("budget_spend", "tokens", "Tokens in the project's budget period."),
                labels: labels),
            registry.makeGauge(
                descriptor: descriptor(
                    "budget_limit", "usd", "The project's USD budget for its period; absent when none."), labels: labels
            ),
            registry.makeGauge(
                descriptor: descriptor(
                    "budget_limit", "tokens", "The project's token budget for its period; absent when none."),
                labels: labels),
            registry.makeGauge(
                descriptor: descriptor(
                    "budget_denied", "", "1 while the project is over its budget and its requests get 429."),
                labels: labels),
        ]
    }

    func emit() -> [UInt8] {
        updateSidecarUp(nowUnix: Date().timeIntervalSince1970)
        return registry.emitToBuffer()
    }
}
