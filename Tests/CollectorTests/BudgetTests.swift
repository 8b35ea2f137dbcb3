import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest

@testable import Collector

/// Budgets as pure logic: periods, spend, the denial decision, and what the policy state
/// publishes. No thread, no socket, no database.
final class BudgetTests: XCTestCase {
    func ms(_ iso: String) -> Int64 {
        let formatter = ISO8601DateFormatter()
        return Int64(formatter.date(from: iso)!.timeIntervalSince1970 * 1000)
    }

    func project(
        _ period: BudgetPeriod?, usd: Double? = nil, tokens: Int64? = nil, lifted: Int64? = nil
    ) -> ProjectRecord {
        ProjectRecord(
            id: "p1", name: "billing", credentialRef: "default", createdAtMs: 0, budgetPeriod: period,
            budgetMaxUSD: usd, budgetMaxTokens: tokens, denialLiftedPeriodStartMs: lifted)
    }

    func spend(at now: Int64, _ events: [(Double, Int64, Int64)]) -> ProjectSpend {
        var spend = ProjectSpend()
        spend.roll(to: now)
        for (usd, tokens, at) in events {
            spend.add(SpendEvent(projectID: "p1", costUSD: usd, tokens: tokens, startedAtMs: at))
        }
        return spend
    }

    func testTheDayRollsOverAtUTCMidnight() {
        let before = ms("2026-03-14T23:59:59Z")
        var figures = spend(at: before, [(2.5, 100, before)])
        XCTAssertEqual(figures.figures(for: .day).usd, 2.5)
        figures.roll(to: ms("2026-03-15T00:00:00Z"))
        XCTAssertEqual(figures.figures(for: .day).usd, 0, "a new UTC day starts from nothing")
        XCTAssertEqual(figures.figures(for: .month).usd, 2.5, "the month goes on")
        XCTAssertEqual(figures.figures(for: .total).tokens, 100)
    }

    func testTheMonthRollsOverOnTheFirstAndALeapDayIsADay() {
        let leapDay = ms("2024-02-29T12:00:00Z")
        XCTAssertEqual(BudgetPeriod.day.bounds(containing: leapDay).start, ms("2024-02-29T00:00:00Z"))
        XCTAssertEqual(BudgetPeriod.month.bounds(containing: leapDay).end, ms("2024-03-01T00:00:00Z"))
        var figures = spend(at: leapDay, [(1, 10, leapDay)])
        figures.roll(to: ms("2024-03-01T00:00:00Z"))
        XCTAssertEqual(figures.figures(for: .month).usd, 0)
        XCTAssertEqual(figures.figures(for: .day).usd, 0)
        XCTAssertEqual(figures.figures(for: .total).usd, 1)
        // A late exchange that started last month counts toward the total only.
        figures.add(SpendEvent(projectID: "p1", costUSD: 3, tokens: 5, startedAtMs: leapDay))
        XCTAssertEqual(figures.figures(for: .month).usd, 0)
        XCTAssertEqual(figures.figures(for: .total).usd, 4)
    }

    func testDollarsAndTokensAreCheckedTogether() throws {
        let now = ms("2026-05-10T10:00:00Z")
        let both = project(.day, usd: 5, tokens: 1_000)
        XCTAssertNil(Budget.denial(of: both, spend: spend(at: now, [(4.99, 999, now)]), now: now))
        let byDollars = try XCTUnwrap(Budget.denial(of: both, spend: spend(at: now, [(5, 10, now)]), now: now))
        XCTAssertEqual(byDollars.reason, "day budget of $5.00 reached ($5.00 spent)")
        XCTAssertEqual(byDollars.until, ms("2026-05-11T00:00:00Z"))
        let byTokens = try XCTUnwrap(Budget.denial(of: both, spend: spend(at: now, [(0.01, 1_000, now)]), now: now))
        XCTAssertEqual(byTokens.reason, "day budget of 1000 tokens reached (1000 used)")
        let total = try XCTUnwrap(
            Budget.denial(of: project(.total, usd: 1), spend: spend(at: now, [(1, 1, now)]), now: now))
        XCTAssertNil(total.until, "a total budget never ends")
        XCTAssertEqual(Budget.dollars(0.0012345), "0.0012345")
    }

    func testARaisedOrRemovedBudgetEndsTheDenial() {
        let now = ms("2026-05-10T10:00:00Z")
        let spent = spend(at: now, [(12, 0, now)])
        XCTAssertNotNil(Budget.denial(of: project(.month, usd: 10), spend: spent, now: now))
        XCTAssertNil(Budget.denial(of: project(.month, usd: 20), spend: spent, now: now), "raised past the spend")
        XCTAssertNil(Budget.denial(of: project(nil, usd: 10), spend: spent, now: now), "removed")
        XCTAssertNil(Budget.denial(of: project(.month), spend: spent, now: now), "a period with no limit")
    }

    func testALiftedDenialHoldsForItsPeriodOnly() {
        let now = ms("2026-05-10T10:00:00Z")
        let day = BudgetPeriod.day.bounds(containing: now).start
        let lifted = project(.day, usd: 1, lifted: day)
        XCTAssertNil(Budget.denial(of: lifted, spend: spend(at: now, [(3, 0, now)]), now: now))
        let tomorrow = ms("2026-05-11T08:00:00Z")
        XCTAssertNotNil(
            Budget.denial(of: lifted, spend: spend(at: tomorrow, [(3, 0, tomorrow)]), now: tomorrow),
            "the next day's spend past the budget is denied again")
    }

    func testThePolicyStatePublishesADenialWhenSpendCrossesTheBudget() throws {
        let now = ms("2026-05-10T10:00:00Z")
        var state = PolicyState(projects: [project(.day, usd: 1)], keys: [], spend: [:], now: now)
        XCTAssertNil(state.takeChanges(now: now), "nothing changed since loading")
        state.account(SpendEvent(projectID: "p1", costUSD: 0.5, tokens: 1, startedAtMs: now), now: now)
        XCTAssertNil(state.takeChanges(now: now), "under budget: nothing to tell")
        state.account(SpendEvent(projectID: "p1", costUSD: 0.5, tokens: 1, startedAtMs: now), now: now)
        let denied = try XCTUnwrap(state.takeChanges(now: now))
        XCTAssertEqual(denied.version, 2)
        XCTAssertEqual(denied.projects.map(\.denied), [true])
        // The next UTC day lifts it by itself.
        let tomorrow = ms("2026-05-11T00:00:01Z")
        state.roll(to: tomorrow)
        let lifted = try XCTUnwrap(state.takeChanges(now: tomorrow))
        XCTAssertEqual(lifted.projects.map(\.denied), [false])
        XCTAssertEqual(lifted.version, 3)
        state.removeProject(id: "p1")
        XCTAssertEqual(state.takeChanges(now: tomorrow)?.removed, ["p1"])
        state.account(SpendEvent(projectID: "p1", costUSD: 9, tokens: 9, startedAtMs: tomorrow), now: tomorrow)
        XCTAssertNil(state.spend["p1"], "spend for a removed project is not kept")
    }
}

/// The management API's answer to a fault that is not the request's: 500, with the reason.
final class ManagementFaultTests: XCTestCase {
    struct Broken: Error, CustomStringConvertible {
        var description: String { "disk I/O error" }
    }

    /// Runs every command at once, on the caller's thread, and fails each with `Broken`.
    struct FailingPolicy: PolicyRunning, PolicyCommands {
        func submit(_ job: @escaping @Sendable (any PolicyCommands) -> Void) { job(self) }
        func projects() -> [ProjectView] { [] }
        func project(id: String) -> ProjectView? { nil }
        func createProject(name: String, credentialRef: String) throws -> ProjectView { throw Broken() }
        func deleteProject(id: String) throws { throw Broken() }
        func setBudget(projectID: String, period: BudgetPeriod?, maxUSD: Double?, maxTokens: Int64?) throws
            -> ProjectView
        { throw Broken() }
        func liftDenial(projectID: String) throws { throw Broken() }
        func createKey(_ request: NewKey) throws -> (secret: String, key: VirtualKeyRecord) { throw Broken() }
        func revokeKey(secret: String?, keyID: String?) throws -> VirtualKeyRecord { throw Broken() }
        func keyUsage(projectID: String, sinceMs: Int64) throws -> [KeyUsage] { throw Broken() }
    }

    func testAFaultIs500NotA405() throws {
        let token = try XCTUnwrap(AccessToken("management-token-for-tests"))
        let api = ManagementAPI(policy: FailingPolicy(), token: token)
        let loop = EmbeddedEventLoop()
        let headers = HTTPHeaders([("authorization", "Bearer management-token-for-tests")])
        let created = try api.handle(
            method: .POST, path: "/manage/projects", query: [:], headers: headers, body: Array(#"{"name":"x"}"#.utf8),
            eventLoop: loop
        ).wait()
        XCTAssertEqual(created.status, .internalServerError)
        XCTAssertTrue(String(decoding: created.body, as: UTF8.self).contains("disk I/O error"))
        let wrongMethod = try api.handle(
            method: .PATCH, path: "/manage/projects", query: [:], headers: headers, body: [], eventLoop: loop
        ).wait()
        XCTAssertEqual(wrongMethod.status, .methodNotAllowed, "a method a route does not serve is still 405")
    }
}
