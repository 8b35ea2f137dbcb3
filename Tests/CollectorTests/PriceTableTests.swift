import Foundation
import XCTest

@testable import Collector

final class PriceTableTests: XCTestCase {
    func testSnapshotsAreNormalisedToTheirFamily() {
        let cases = [
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("gpt-4o-2024-08-06", "gpt-4o"),
            ("GPT-4.1-2025-04-14", "gpt-4.1"),
            ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"), ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
            ("claude-sonnet-4-20250514", "claude-sonnet-4"), ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
            ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet-v2"), ("gemini-2.0-flash-001", "gemini-2.0-flash"),
            ("models/gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"), ("openai/gpt-4o", "gpt-4o"),
            ("o3-mini", "o3-mini"),
            ("o1", "o1"), ("gpt-4o-mini-audio-preview", "gpt-4o-mini-audio"),
        ]
        for (model, family) in cases {
            XCTAssertEqual(PriceTable.normalise(model), family, model)
        }
    }

    func testTheShippedTableLoadsAndPricesEveryProvider() throws {
        let table = try PriceTable.shipped()
        XCTAssertGreaterThan(table.count, 30)
        // 9 input and 12 output tokens of gpt-4o-mini at 0.15 and 0.60 per million.
        let mini = try XCTUnwrap(table.price(for: "gpt-4o-mini-2024-07-18"))
        XCTAssertEqual(mini.cost(of: TokenUsage(input: 9, output: 12)), (9 * 0.15 + 12 * 0.6) / 1e6, accuracy: 1e-15)
        // Anthropic: cache reads and writes at their own prices.
        let sonnet = try XCTUnwrap(table.price(for: "claude-sonnet-4-20250514"))
        XCTAssertEqual(
            sonnet.cost(of: TokenUsage(input: 25, output: 15, cachedInput: 10, cacheCreation: 100)),
            (25 * 3.0 + 10 * 0.3 + 100 * 3.75 + 15 * 15.0) / 1e6, accuracy: 1e-15)
        XCTAssertNotNil(table.price(for: "gemini-2.0-flash"))
        XCTAssertNotNil(table.price(for: "anthropic/claude-3.5-sonnet"))
        XCTAssertNil(table.price(for: "my-finetune"), "an unknown model is unpriced, not guessed")
        XCTAssertNil(
            table.price(for: "gpt-4o-audio-preview"), "a different model of the same family is not guessed either")
        // Without a cache price, cached tokens cost what input does.
        let turbo = try XCTUnwrap(table.price(for: "gpt-4-turbo-2024-04-09"))
        XCTAssertEqual(turbo.cost(of: TokenUsage(cachedInput: 1_000_000)), 10.0, accuracy: 1e-9)
    }

    func testAnOverrideFileReplacesTheTableAndBadOnesAreRefused() throws {
        let custom = try PriceTable(
            json: Data(#"{"models":[{"provider":"openai","model":"my-finetune","input":1,"output":2}]}"#.utf8))
        XCTAssertEqual(custom.price(for: "my-finetune")?.output, 2)
        XCTAssertNil(custom.price(for: "gpt-4o"))
        XCTAssertThrowsError(try PriceTable(json: Data("{".utf8)))
        XCTAssertThrowsError(
            try PriceTable(json: Data(#"{"models":[{"provider":"x","model":"a","input":-1,"output":1}]}"#.utf8)))
        XCTAssertThrowsError(
            try PriceTable(
                json: Data(
                    #"{"models":[{"provider":"x","model":"a","input":1,"output":1},{"provider":"x","model":"a-2024-01-01","input":1,"output":1}]}"#
                        .utf8)))
    }
}
