import Foundation
import Wire

/// A project's spend in each of its periods: the UTC day, the UTC month, and all time. Pure.
struct ProjectSpend: Sendable, Equatable {
    var dayStartMs: Int64 = 0
    var dayUSD = 0.0
    var dayTokens: Int64 = 0
    var monthStartMs: Int64 = 0
    var monthUSD = 0.0
    var monthTokens: Int64 = 0
    var totalUSD = 0.0
    var totalTokens: Int64 = 0

    func figures(for period: BudgetPeriod) -> (usd: Double, tokens: Int64) {
        switch period {
        case .day: (dayUSD, dayTokens)
        case .month: (monthUSD, monthTokens)
        case .total: (totalUSD, totalTokens)
        }
    }

    /// Starts new periods when `nowMs` has left the current ones.
    mutating func roll(to nowMs: Int64) {
        let day = BudgetPeriod.day.bounds(containing: nowMs).start
        if day != dayStartMs { (dayStartMs, dayUSD, dayTokens) = (day, 0, 0) }
        let month = BudgetPeriod.month.bounds(containing: nowMs).start
        if month != monthStartMs { (monthStartMs, monthUSD, monthTokens) = (month, 0, 0) }
    }

    /// Counts an exchange in every period it started in (one that started before the current day
    /// or month counts only toward the longer periods).
    mutating func add(_ event: SpendEvent) {
        totalUSD += event.costUSD
        totalTokens = totalTokens.addingClamped(event.tokens)
        if event.startedAtMs >= monthStartMs {
            monthUSD += event.costUSD
            monthTokens = monthTokens.addingClamped(event.tokens)
        }
        if event.startedAtMs >= dayStartMs {
            dayUSD += event.costUSD
            dayTokens = dayTokens.addingClamped(event.tokens)
        }
    }
}

/// The budget decision, pure: whether a project is over its budget now, why, and until when.
enum Budget {
    struct Denial: Equatable, Sendable {
        var reason: String
        /// When the period ends (nil for a total budget, which never does).
        var until: Int64?
    }

    /// Why `project` is over its budget at `now`, given its spend; nil when it is not (no budget,
    /// under it, or its denial was lifted for the period under way). Dollars and tokens are
    /// checked together: either reached denies.
    static func denial(of project: ProjectRecord, spend: ProjectSpend, now: Int64) -> Denial? {
        guard let period = project.budgetPeriod, project.hasBudget else { return nil }
        let bounds = period.bounds(containing: now)
        if let lifted = project.denialLiftedPeriodStartMs, lifted == bounds.start { return nil }
        let figures = spend.figures(for: period)
        if let max = project.budgetMaxUSD, figures.usd >= max {
            return Denial(
                reason: "\(period.rawValue) budget of $\(dollars(max)) reached ($\(dollars(figures.usd)) spent)",
                until: bounds.end)
        }
        if let max = project.budgetMaxTokens, figures.tokens >= max {
            return Denial(
                reason: "\(period.rawValue) budget of \(max) tokens reached (\(figures.tokens) used)", until: bounds.end
            )
        }
        return nil
    }

    /// Dollars to the cent, or to six significant digits below a cent.
    static func dollars(_ value: Double) -> String {
        value >= 0.01 ? String(format: "%.2f", value) : String(format: "%.6g", value)
    }
}

/// What an exchange spent, for budgets.
struct SpendEvent: Sendable {
    var projectID: String
    var costUSD: Double
    var tokens: Int64
    var startedAtMs: Int64
}
