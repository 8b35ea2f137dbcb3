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
            try db.create(index: "exchange_app_started", on: ExchangeRecord.databaseTableName, columns: ["app", "started_at_ms"])
            try db.create(index: "exchange_model_started", on: ExchangeRecord.databaseTableName, columns: ["model_served", "started_at_ms"])
        }
        return migrator
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
            if let model { request = request.filter(Column("model_served") == model || Column("model_requested") == model) }
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
        var totalTokens: Int
        var costUSD: Double
        var unpricedExchanges: Int

        enum CodingKeys: String, CodingKey {
            case key, exchanges, inputTokens = "input_tokens", outputTokens = "output_tokens", cachedInputTokens = "cached_input_tokens"
            case cacheCreationTokens = "cache_creation_tokens", reasoningTokens = "reasoning_tokens", totalTokens = "total_tokens"
            case costUSD = "cost_usd", unpricedExchanges = "unpriced_exchanges"
        }
    }

    /// Sums per app, model (the one that answered, else the one asked for) or tenant.
    func usage(groupBy grouping: UsageGrouping, sinceMs: Int64?) async throws -> [UsageSum] {
        let key = switch grouping {
        case .app: "app"
        case .tenant: "tenant"
        case .model: "CASE WHEN model_served = '' THEN model_requested ELSE model_served END"
        }
        return try await writer.read { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT \(key) AS key, COUNT(*) AS exchanges,
                       SUM(input_tokens) AS input, SUM(output_tokens) AS output, SUM(cached_input_tokens) AS cached,
                       SUM(cache_creation_tokens) AS creation, SUM(reasoning_tokens) AS reasoning, SUM(total_tokens) AS total,
                       TOTAL(cost_usd) AS cost, SUM(CASE WHEN priced THEN 0 ELSE 1 END) AS unpriced
                FROM exchange WHERE started_at_ms >= ? GROUP BY 1 ORDER BY cost DESC, total DESC
                """, arguments: [sinceMs ?? 0])
            return rows.map { row in
                UsageSum(
                    key: row["key"], exchanges: row["exchanges"], inputTokens: row["input"], outputTokens: row["output"],
                    cachedInputTokens: row["cached"], cacheCreationTokens: row["creation"], reasoningTokens: row["reasoning"],
                    totalTokens: row["total"], costUSD: row["cost"], unpricedExchanges: row["unpriced"]
                )
            }
        }
    }

    /// Whether a write goes through now (for /readyz).
    func canWrite() -> Bool {
        (try? writer.write { db in try db.execute(sql: "CREATE TEMP TABLE IF NOT EXISTS readyz_probe(x); DELETE FROM readyz_probe") }) != nil
    }
}
