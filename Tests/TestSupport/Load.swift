import Foundation

/// llmtap-bench as a test's load: `requests` chat completions at `concurrency` against the
/// OpenAI-style base URL of `port`, its JSON report written in `folder` (read it with
/// `benchReport(of:)` once it exited).
public func startBench(
    port: Int, requests: Int, concurrency: Int, token: String? = nil, in folder: URL
) throws -> RunningProcess {
    try RunningProcess(
        product: "llmtap-bench",
        arguments: [
            "--base-url", "http://127.0.0.1:\(port)/v1", "--requests", "\(requests)", "--concurrency",
            "\(concurrency)", "--output", folder.appendingPathComponent("bench-\(UUID()).json").path,
        ] + (token.map { ["--token", $0] } ?? []))
}

/// The report of a finished `startBench` load: `requests`, `errors` and the rest.
public func benchReport(of bench: RunningProcess) throws -> [String: Any] {
    guard let arguments = bench.process.arguments, let index = arguments.firstIndex(of: "--output"),
        index + 1 < arguments.count
    else { throw TestFailure("not a startBench load: \(bench.process.arguments ?? [])") }
    let data = try Data(contentsOf: URL(fileURLWithPath: arguments[index + 1]))
    guard let report = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
        throw TestFailure("llmtap-bench's report is not a JSON object: \(String(decoding: data, as: UTF8.self))")
    }
    return report
}

/// The pid a PID file names, once it names another than `previous` (a hot upgrade's new
/// process); nil if none does within `timeout`.
public func pid(inFile file: String, other previous: pid_t? = nil, timeout: Duration = .seconds(20)) -> pid_t? {
    var found: pid_t?
    _ = eventually(timeout: timeout) {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid != previous
        else { return false }
        found = pid
        return true
    }
    return found
}
