import Foundation
import GRDB
import Wire

/// The policy's SQL: projects, virtual keys, and the spend the budgets start from. Called on the
/// policy engine's thread only, never on an event loop.
struct PolicyStore {
    let database: AppDatabase

    /// Everything, with each project's spend in the day and month holding `now` and in all.
    func load(now: Int64) throws -> (projects: [ProjectRecord], keys: [VirtualKeyRecord], spend: [String: ProjectSpend])
    {
        let day = BudgetPeriod.day.bounds(containing: now).start
        let month = BudgetPeriod.month.bounds(containing: now).start
        return try database.writer.read { db in
            let projects = try ProjectRecord.fetchAll(db)
            let keys = try VirtualKeyRecord.fetchAll(db)
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT project_id,
                           TOTAL(cost_usd) AS usd, TOTAL(total_tokens) AS tokens,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN cost_usd END) AS month_usd,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN total_tokens END) AS month_tokens,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN cost_usd END) AS day_usd,
                           TOTAL(CASE WHEN started_at_ms >= ? THEN total_tokens END) AS day_tokens
                    FROM exchange WHERE project_id != '' GROUP BY project_id
                    """, arguments: [month, month, day, day])
            var spend: [String: ProjectSpend] = [:]
            for row in rows {
                let id: String = row["project_id"]
                spend[id] = ProjectSpend(
                    dayStartMs: day, dayUSD: row["day_usd"],
                    dayTokens: Int64(clampingFinite: row["day_tokens"] as Double),
                    monthStartMs: month, monthUSD: row["month_usd"],
                    monthTokens: Int64(clampingFinite: row["month_tokens"] as Double),
                    totalUSD: row["usd"], totalTokens: Int64(clampingFinite: row["tokens"] as Double)
                )
            }
            return (projects, keys, spend)
        }
    }

    func insert(_ project: ProjectRecord) throws {
        try database.writer.write { db in try project.insert(db) }
    }

    func update(_ project: ProjectRecord) throws {
        try database.writer.write { db in try project.update(db) }
    }

    func deleteProject(id: String) throws {
        _ = try database.writer.write { db in try ProjectRecord.deleteOne(db, key: id) }
    }

    func insert(_ key: VirtualKeyRecord) throws {
        try database.writer.write { db in try key.insert(db) }
    }

    func update(_ key: VirtualKeyRecord) throws {
        try database.writer.write { db in try key.update(db) }
    }

    /// Requests and spend per key of a project since `sinceMs`.
    func keyUsage(projectID: String, sinceMs: Int64) throws -> [KeyUsage] {
        try database.writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT key_id, COUNT(*) AS requests, SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END) AS rejected,
                           TOTAL(cost_usd) AS cost_usd, TOTAL(total_tokens) AS tokens
                    FROM exchange WHERE project_id = ? AND started_at_ms >= ? GROUP BY key_id ORDER BY cost_usd DESC
                    """, arguments: [projectID, sinceMs]
            ).map { row in
                KeyUsage(
                    keyID: row["key_id"], requests: row["requests"], rejected: row["rejected"],
                    costUSD: row["cost_usd"], tokens: Int64(clampingFinite: row["tokens"] as Double))
            }
        }
    }
}

/// One key's requests and spend over a while.
struct KeyUsage: Sendable, Equatable {
    var keyID: String
    var requests: Int
    var rejected: Int
    var costUSD: Double
    var tokens: Int64
}
