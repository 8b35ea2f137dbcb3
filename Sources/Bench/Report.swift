import Foundation

/// What a run measured, as printed and as written to --output.
struct Report: Encodable {
    let requests: Int
    let concurrency: Int
    let stream: Bool
    let totalDurationSeconds: Double
    let throughputRequestsPerSecond: Double
    let errors: Int
    let errorRate: Double
    let latencyMs: Stats
    let timeToFirstByteMs: Stats?

    struct Stats: Encodable {
        let average: Double
        let p50: Double
        let p90: Double
        let p99: Double
        let max: Double

        init?(_ values: [Double]) {
            guard !values.isEmpty else { return nil }
            let sorted = values.sorted()
            func percentile(_ p: Double) -> Double {
                sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
            }
            average = sorted.reduce(0, +) / Double(sorted.count)
            p50 = percentile(0.50)
            p90 = percentile(0.90)
            p99 = percentile(0.99)
            max = sorted.last ?? 0
        }
    }

    init(samples: [Sample], duration: Duration, concurrency: Int, stream: Bool) {
        let milliseconds = { (duration: Duration) -> Double in
            Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
        }
        let ok = samples.filter(\.ok)
        requests = samples.count
        self.concurrency = concurrency
        self.stream = stream
        totalDurationSeconds = milliseconds(duration) / 1000
        throughputRequestsPerSecond = totalDurationSeconds > 0 ? Double(samples.count) / totalDurationSeconds : 0
        errors = samples.count - ok.count
        errorRate = samples.isEmpty ? 0 : Double(errors) / Double(samples.count)
        latencyMs = Stats(ok.map { milliseconds($0.latency) }) ?? Stats([0])!
        timeToFirstByteMs = stream ? Stats(ok.compactMap { $0.timeToFirstByte.map(milliseconds) }) : nil
    }

    var text: String {
        func row(_ name: String, _ stats: Stats) -> String {
            String(
                format: "%@  avg %.2f  p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms", name, stats.average, stats.p50,
                stats.p90, stats.p99, stats.max)
        }
        var lines = [
            String(
                format: "requests %d (concurrency %d) in %.2f s: %.1f req/s, %d errors (%.2f%%)",
                requests, concurrency, totalDurationSeconds, throughputRequestsPerSecond, errors, errorRate * 100),
            row("latency", latencyMs),
        ]
        if let timeToFirstByteMs { lines.append(row("TTFB   ", timeToFirstByteMs)) }
        return lines.joined(separator: "\n")
    }
}
