import Foundation
import GRDB

/// The collector's SQLite database: WAL, migrations, and the queries the HTTP API serves.
/// A struct around any `DatabaseWriter`, as in GRDB's demo app: a `DatabasePool` on disk, a
/// `DatabaseQueue` in tests.
struct AppDatabase: Sendable {
    let writer: any DatabaseWriter

    init(_ writer: any DatabaseWriter) throws {
        self.writer = writer
        try Self.migrator.migrate(writer)
    }

    /// Opens (creating it and its directory if needed) the database at `path`, in WAL mode.
    static func open(path: String) throws -> AppDatabase {
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        var configuration = Configuration()
        // A busy database (another process holds a write lock) is retried, not failed at once.
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            // WAL: readers (the API) never wait for the writer; NORMAL is durable in WAL at every
            // committed transaction boundary against a process crash.
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        return try AppDatabase(DatabasePool(path: path, configuration: configuration))
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: exchanges") { db in
            try db.create(table: ExchangeRecord.databaseTableName) { t in
                t.column("sidecar_id", .text).notNull()
                t.column("exchange_id", .text).notNull()
                t.primaryKey(["sidecar_id", "exchange_id"], onConflict: .replace)
                t.column("boot_id", .text).notNull()
                t.column("app", .text).notNull()
                t.column("tenant", .text).notNull()
                t.column("provider", .text).notNull()
                t.column("endpoint", .text).notNull()
                t.column("method", .text).notNull()
                t.column("host", .text).notNull()
                t.column("path", .text).notNull()
                t.column("model_requested", .text).notNull()
                t.column("model_served", .text).notNull()
                t.column("stream", .boolean).notNull()
                t.column("status", .integer).notNull()
                t.column("outcome", .text).notNull()
                t.column("error_type", .text).notNull()
                t.column("parse_error", .text).notNull()
                t.column("started_at_ms", .integer).notNull().indexed()
                t.column("ended_at_ms", .integer)
                t.column("ttfb_ms", .double)
                t.column("duration_ms", .double)
                t.column("request_bytes", .integer).notNull()
                t.column("response_bytes", .integer).notNull()
                t.column("input_tokens", .integer).notNull()
                t.column("output_tokens", .integer).notNull()
                t.column("cached_input_tokens", .integer).notNull()
                t.column("cache_creation_tokens", .integer).notNull()
                t.column("reasoning_tokens", .integer).notNull()
                t.column("total_tokens", .integer).notNull()
                t.column("usage_source", .text).notNull()
                t.column("cost_usd", .double)
                t.column("priced", .boolean).notNull()
                t.column("capture_complete", .boolean).notNull()
                t.column("truncated", .boolean).notNull()
                t.column("request_body", .blob)
                t.column("response_body", .blob)
            }
            try db.create(
                index: "exchange_app_started", on: ExchangeRecord.databaseTableName, columns: ["app", "started_at_ms"])
            try db.create(
                index: "exchange_model_started", on: ExchangeRecord.databaseTableName,
                columns: ["model_served", "started_at_ms"])
        }
        migrator.registerMigration("v2: sequence streams") { db in
            // Where each sidecar boot's sequence stood, so that a restarted collector counts what it
            // missed as lost, and neither recounts what it received before nor a sidecar's drops.
            try db.create(table: "sequence_stream") { t in
                t.column("sidecar_id", .text).notNull()
                t.column("boot_id", .text).notNull()
                t.primaryKey(["sidecar_id", "boot_id"], onConflict: .replace)
                t.column("last_seq", .integer).notNull()
                t.column("last_dropped_before", .integer).notNull()
                t.column("heartbeat_dropped", .integer).notNull()
                t.column("updated_at_ms", .integer).notNull()
            }
        }
        migrator.registerMigration("v3: projects and virtual keys") { db in
            try db.alter(table: ExchangeRecord.databaseTableName) { t in
                t.add(column: "key_id", .text).notNull().defaults(to: "")
                t.add(column: "project_id", .text).notNull().defaults(to: "")
                t.add(column: "reject_reason", .text).notNull().defaults(to: "")
            }
            try db.create(
                index: "exchange_project_started", on: ExchangeRecord.databaseTableName,
                columns: ["project_id", "started_at_ms"])
            try db.create(table: ProjectRecord.databaseTableName) { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("credential_ref", .text).notNull()
                t.column("created_at_ms", .integer).notNull()
                t.column("budget_period", .text)
                t.column("budget_max_usd", .double)
                t.column("budget_max_tokens", .integer)
                // A denial lifted by hand holds until the period that started at this time ends.
                t.column("denial_lifted_period_start_ms", .integer)
            }
            try db.create(table: VirtualKeyRecord.databaseTableName) { t in
                t.primaryKey("id", .text)
                t.column("project_id", .text).notNull().indexed()
                    .references(ProjectRecord.databaseTableName, column: "id", onDelete: .cascade)
                // SHA-256 of the key: the key itself is shown once, at creation, and never stored.
                t.column("secret_sha256", .blob).notNull().unique()
                t.column("created_at_ms", .integer).notNull()
                t.column("expires_at_ms", .integer).notNull()
                t.column("revoked", .boolean).notNull().defaults(to: false)
                t.column("revoked_at_ms", .integer)
                t.column("rate_limit_per_hour", .integer)
                t.column("max_parallel", .integer)
                t.column("allowed_models", .text).notNull().defaults(to: "[]")
            }
        }
        migrator.registerMigration("v4: gateway providers and attempts") { db in
            try db.alter(table: ExchangeRecord.databaseTableName) { t in
                t.add(column: "gateway_provider", .text).notNull().defaults(to: "")
                t.add(column: "provider_key_id", .text).notNull().defaults(to: "")
                t.add(column: "attempts", .integer).notNull().defaults(to: 0)
            }
        }
        migrator.registerMigration("v5: the client's protocol") { db in
            try db.alter(table: ExchangeRecord.databaseTableName) { t in
                t.add(column: "protocol", .text).notNull().defaults(to: "http1")
            }
        }
        migrator.registerMigration("v6: WebSocket sessions and audio tokens") { db in
            try db.alter(table: ExchangeRecord.databaseTableName) { t in
                t.add(column: "audio_input_tokens", .integer).notNull().defaults(to: 0)
                t.add(column: "audio_cached_input_tokens", .integer).notNull().defaults(to: 0)
                t.add(column: "audio_output_tokens", .integer).notNull().defaults(to: 0)
                t.add(column: "close_code", .integer).notNull().defaults(to: 0)
                t.add(column: "client_messages", .integer).notNull().defaults(to: 0)
                t.add(column: "upstream_messages", .integer).notNull().defaults(to: 0)
                t.add(column: "realtime_responses", .text).notNull().defaults(to: "")
                t.add(column: "realtime_errors", .text).notNull().defaults(to: "")
            }
        }
        return migrator
    }

    /// Saves where streams stand (see `StreamCheckpoint`).
    func save(_ checkpoints: [StreamCheckpoint]) throws {
        try writer.write { db in
            for checkpoint in checkpoints { try checkpoint.insert(db) }
            // Boots not heard from in a week are over.
            let weekAgo = Int64(Date().timeIntervalSince1970 * 1000) - 7 * 86_400_000
            try StreamCheckpoint.filter(Column("updated_at_ms") < weekAgo).deleteAll(db)
        }
    }

    func loadCheckpoints() throws -> [StreamCheckpoint] {
        try writer.read { db in try StreamCheckpoint.fetchAll(db) }
    }

    /// Writes rows in one transaction.
    func insert(_ rows: [ExchangeRecord]) throws {
        try writer.write { db in
            for row in rows { try row.insert(db) }
        }
    }

    /// Deletes rows that started before `cutoffMs`; returns how many.
    func deleteRows(startedBefore cutoffMs: Int64) throws -> Int {
        try writer.write { db in
            try ExchangeRecord.filter(Column("started_at_ms") < cutoffMs).deleteAll(db)
        }
    }

    /// The newest rows first, bodies left out.
    func recentExchanges(sinceMs: Int64?, limit: Int, app: String?, model: String?) async throws -> [ExchangeRecord] {
        try await writer.read { db in
            var request = ExchangeRecord.all()
            if let sinceMs { request = request.filter(Column("started_at_ms") >= sinceMs) }
            if let app { request = request.filter(Column("app") == app) }
            if let model {
                request = request.filter(Column("model_served") == model || Column("model_requested") == model)
            }
            return try request.order(Column("started_at_ms").desc).limit(limit).fetchAll(db).map { row in
                var row = row
                row.requestBody = nil
                row.responseBody = nil
                return row
            }
        }
    }

    enum UsageGrouping: String, CaseIterable, Sendable {
        case app
        case model
        case tenant
    }

    struct UsageSum: Codable, Equatable, Sendable {
        var key: String
        var exchanges: Int
        var inputTokens: Int
        var outputTokens: Int
        var cachedInputTokens: Int
        var cacheCreationTokens: Int
        var reasoningTokens: Int
        var audioInputTokens: Int
        var audioCachedInputTokens: Int
        var audioOutputTokens: Int
        var totalTokens: Int
        var costUSD: Double
        var unpricedExchanges: Int

        enum CodingKeys: String, CodingKey {
            case key, exchanges
            case inputTokens = "input_tokens"
            case outputTokens = "output_tokens"
            case cachedInputTokens = "cached_input_tokens"
            case cacheCreationTokens = "cache_creation_tokens"
            case reasoningTokens = "reasoning_tokens"
            case audioInputTokens = "audio_input_tokens"
            case audioCachedInputTokens = "audio_cached_input_tokens"
            case audioOutputTokens = "audio_output_tokens"
            case totalTokens = "total_tokens"
            case costUSD = "cost_usd"
            case unpricedExchanges = "unpriced_exchanges"
        }
    }

    /// Sums per app, model (the one that answered, else the one asked for) or tenant.
    func usage(groupBy grouping: UsageGrouping, sinceMs: Int64?) async throws -> [UsageSum] {
        let key =
            switch grouping {
            case .app: "app"
            case .tenant: "tenant"
            case .model: "CASE WHEN model_served = '' THEN model_requested ELSE model_served END"
            }
        return try await writer.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT \(key) AS key, COUNT(*) AS exchanges,
                           SUM(input_tokens) AS input, SUM(output_tokens) AS output, SUM(cached_input_tokens) AS cached,
                           SUM(cache_creation_tokens) AS creation, SUM(reasoning_tokens) AS reasoning,
                           SUM(audio_input_tokens) AS audio_input, SUM(audio_cached_input_tokens) AS audio_cached,
                           SUM(audio_output_tokens) AS audio_output, SUM(total_tokens) AS total,
                           TOTAL(cost_usd) AS cost, SUM(CASE WHEN priced THEN 0 ELSE 1 END) AS unpriced
                    FROM exchange WHERE started_at_ms >= ? GROUP BY 1 ORDER BY cost DESC, total DESC
                    """, arguments: [sinceMs ?? 0])
            return rows.map { row in
                UsageSum(
                    key: row["key"], exchanges: row["exchanges"], inputTokens: row["input"],
                    outputTokens: row["output"],
                    cachedInputTokens: row["cached"], cacheCreationTokens: row["creation"],
                    reasoningTokens: row["reasoning"], audioInputTokens: row["audio_input"],
                    audioCachedInputTokens: row["audio_cached"], audioOutputTokens: row["audio_output"],
                    totalTokens: row["total"], costUSD: row["cost"], unpricedExchanges: row["unpriced"]
                )
            }
        }
    }

}

/// Where one sidecar boot's sequence stood when last saved.
struct StreamCheckpoint: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "sequence_stream"

    var sidecarID: String
    var bootID: String
    var lastSeq: Int64
    var lastDroppedBefore: Int64
    /// The `dropped` of the boot's last heartbeat: `records_dropped_by_sidecar_total` grows from there.
    var heartbeatDropped: Int64
    var updatedAtMs: Int64

    enum CodingKeys: String, CodingKey {
        case sidecarID = "sidecar_id"
        case bootID = "boot_id"
        case lastSeq = "last_seq"
        case lastDroppedBefore = "last_dropped_before"
        case heartbeatDropped = "heartbeat_dropped"
        case updatedAtMs = "updated_at_ms"
    }
}
