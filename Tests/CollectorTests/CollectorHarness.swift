import Foundation
import GRDB
import TestSupport
import XCTest

@testable import Collector

/// A real llmtap-collector, started as a user starts it, in a folder of its own, on free ports.
final class CollectorHarness: @unchecked Sendable {
    let folder: URL
    let analysisEndpoint: String
    let httpPort: Int
    private(set) var process: RunningProcess
    private let arguments: [String]
    private let environment: [String: String]

    var databasePath: String { folder.appendingPathComponent("data/llmtap.sqlite").path }
    var jsonlPath: String { folder.appendingPathComponent("exchanges.jsonl").path }

    init(arguments: [String] = [], analysisPort: Int? = nil, environment: [String: String] = [:]) throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-collector-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        analysisEndpoint = "tcp://127.0.0.1:\(try analysisPort ?? freeTCPPort())"
        httpPort = try freeTCPPort()
        self.arguments = arguments
        self.environment = environment
        process = try Self.start(
            folder: folder, analysisEndpoint: analysisEndpoint, httpPort: httpPort, arguments: arguments,
            environment: environment)
    }

    private static func start(
        folder: URL, analysisEndpoint: String, httpPort: Int, arguments: [String], environment: [String: String]
    ) throws -> RunningProcess {
        let process = try RunningProcess(
            product: "llmtap-collector",
            arguments: [
                "--listen-analysis", analysisEndpoint, "--listen-policy", "tcp://127.0.0.1:*", "--http",
                "127.0.0.1:\(httpPort)",
                "--db", folder.appendingPathComponent("data/llmtap.sqlite").path,
                "--jsonl", folder.appendingPathComponent("exchanges.jsonl").path,
            ] + arguments, environment: environment)
        guard eventually({ process.stderr.contains("llmtap-collector started") || !process.process.isRunning }),
            process.process.isRunning
        else {
            throw TestFailure("the collector did not start: \(process.stderr)")
        }
        return process
    }

    /// Starts it again after a stop, on the same ports and database.
    func restart() throws {
        process = try Self.start(
            folder: folder, analysisEndpoint: analysisEndpoint, httpPort: httpPort, arguments: arguments,
            environment: environment)
    }

    func get(_ path: String) throws -> (status: Int, body: String) {
        let result = try curlWithStatus(["http://127.0.0.1:\(httpPort)\(path)"])
        guard result.status > 0 else { throw TestFailure("no answer from \(path)") }
        return (result.status, String(decoding: result.body, as: UTF8.self))
    }

    func getJSON(_ path: String) throws -> Any {
        let (status, body) = try get(path)
        guard status == 200 else { throw TestFailure("\(path) answered \(status): \(body)") }
        return try JSONSerialization.jsonObject(with: Data(body.utf8))
    }

    /// `/metrics` as "name{labels}" -> value.
    func metrics() throws -> [String: Double] {
        let (status, body) = try get("/metrics")
        guard status == 200 else { throw TestFailure("/metrics answered \(status)") }
        var values: [String: Double] = [:]
        for line in body.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            values[String(line[..<space])] = value
        }
        return values
    }

    /// The sum of every series of `name` whose labels include all of `labels`.
    func metric(_ name: String, _ labels: [String: String] = [:]) throws -> Double {
        try metrics().filter { key, _ in
            guard key == name || key.hasPrefix(name + "{") else { return false }
            return labels.allSatisfy { key.contains("\($0.key)=\"\($0.value)\"") }
        }.values.reduce(0, +)
    }

    /// The exchanges stored so far, read from its SQLite file as any reader would.
    func rows() throws -> [ExchangeRecord] {
        var configuration = Configuration()
        configuration.readonly = true
        return try DatabaseQueue(path: databasePath, configuration: configuration).read { db in
            try ExchangeRecord.fetchAll(db)
        }
    }

    func stop(_ signal: Int32 = SIGTERM) -> Int32? {
        process.signal(signal)
        return process.waitForExit(timeout: .seconds(30))
    }
}
