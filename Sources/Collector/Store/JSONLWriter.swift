import Foundation

/// Appends one JSON line per stored exchange to `--jsonl FILE`, in seed 003's format:
/// `{"timestamp", "tenant", "endpoint", "method", "status_code", "duration_ms", "metadata": {
/// "prompt_tokens", "completion_tokens", "total_tokens", "model", "created"}}`.
/// Used only by the storage thread.
final class JSONLWriter {
    // The properties spell the JSON's keys.
    // swift-format-ignore: AlwaysUseLowerCamelCase
    struct Line: Encodable {
        var timestamp: String
        var tenant: String
        var endpoint: String
        var method: String
        var status_code: Int
        var duration_ms: Double
        var metadata: Metadata

        struct Metadata: Encodable {
            var prompt_tokens: Int
            var completion_tokens: Int
            var total_tokens: Int
            var model: String
            /// When the exchange started, Unix seconds.
            var created: Int64
        }
    }

    let path: String
    private let handle: FileHandle
    private let encoder: JSONEncoder

    init(path: String) throws {
        self.path = path
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
            }
        }
        handle = try FileHandle(forWritingTo: url)
        try handle.seekToEnd()
        encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    }

    deinit {
        try? handle.close()
    }

    static func line(for row: ExchangeRecord) -> Line {
        Line(
            timestamp: Self.iso8601(milliseconds: row.startedAtMs), tenant: row.tenant, endpoint: row.path,
            method: row.method,
            status_code: row.status, duration_ms: row.durationMs ?? 0,
            metadata: Line.Metadata(
                // Provider-style counts: the prompt includes what was read from or written to the cache.
                prompt_tokens: row.inputTokens + row.cachedInputTokens + row.cacheCreationTokens,
                completion_tokens: row.outputTokens, total_tokens: row.totalTokens, model: row.model,
                created: row.startedAtMs / 1000
            )
        )
    }

    func append(_ rows: [ExchangeRecord]) throws {
        var data = Data()
        for row in rows {
            data.append(try encoder.encode(Self.line(for: row)))
            data.append(0x0A)
        }
        try handle.write(contentsOf: data)
    }

    static func iso8601(milliseconds: Int64) -> String {
        let date = Date(timeIntervalSince1970: Double(milliseconds) / 1000)
        return date.formatted(
            .iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(
                .colon
            ).timeZone(separator: .omitted))
    }
}
