import ArgumentParser
import CZeroMQ
import Dispatch
import Foundation
import Logging
import Synchronization
import TestSupport
import Wire

/// Measures the analysis wire against raw libzmq in one run, on tcp loopback:
/// - raw: a PUSH thread sends N frames of the payload size to a PULL thread, no protobuf, no queue;
/// - wire: a producer thread calls `AnalysisPublisher.publish` N times, an `AnalysisReceiver` decodes them.
/// benchmarks/wire.sh builds it in release and runs it.
@main
struct WireBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-wire-bench",
        abstract: "Analysis-wire throughput against raw libzmq PUSH/PULL on tcp loopback."
    )

    @Option(help: "Records per run for 1 KiB stream chunks.")
    var chunkRecords = 1_000_000

    @Option(help: "Records per run for 4 KiB requests.")
    var requestRecords = 300_000

    @Option(help: "Runs of each case; medians are reported.")
    var runs = 5

    @Option(help: "Write the results as JSON here too.")
    var output: String?

    @Flag(help: "Instead: the per-record cost of encoding, decoding and sequence tracking on one thread.")
    var micro = false

    @Flag(help: "Leave out the raw libzmq runs (for profiling the wire alone).")
    var skipRaw = false

    func run() throws {
        if micro {
            try microBenchmarks()
            return
        }
        var rows: [Row] = []
        for workload in [Workload.chunk1KiB(records: chunkRecords), .request4KiB(records: requestRecords)] {
            // Raw and wire alternate, so that drifting load on a shared machine hits both alike.
            var raws: [Double] = []
            var wires: [Double] = []
            for _ in 0..<runs {
                raws.append(skipRaw ? 1 : try measureRaw(workload))
                wires.append(try measureWire(workload))
            }
            rows.append(
                Row(
                    workload: workload.name, payloadBytes: workload.payloadBytes, records: workload.records,
                    rawRecordsPerSecond: median(raws), wireRecordsPerSecond: median(wires),
                    ratio: median(zip(wires, raws).map { $0 / $1 })))
        }
        print("")
        print(
            "| workload | raw libzmq rec/s | raw MB/s | LLMTap wire rec/s | wire MB/s | wire / raw (median of paired runs) |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for row in rows {
            print(
                "| \(row.workload) | \(Int(row.rawRecordsPerSecond)) | \(format(row.rawMBPerSecond)) | \(Int(row.wireRecordsPerSecond)) | \(format(row.wireMBPerSecond)) | \(format(row.ratio)) |"
            )
        }
        if let output {
            let data = try JSONEncoder().encode(rows)
            try data.write(to: URL(fileURLWithPath: output))
        }
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted[sorted.count / 2]
    }

    private func format(_ value: Double) -> String { String(format: "%.2f", value) }

    // MARK: raw libzmq

    private func measureRaw(_ workload: Workload) throws -> Double {
        // One context per side, as the sidecar and the collector each have their own.
        let context = try ZMQContext()
        let senderContext = try ZMQContext()
        let pull = try ZMQSocket(context: context, kind: .pull)
        try pull.set(.receiveHighWaterMark(100_000))
        try pull.bind("tcp://127.0.0.1:*")
        let endpoint = try pull.lastEndpoint()
        let records = workload.records
        let payload = [UInt8](repeating: 0x61, count: workload.payloadBytes)

        let senderDone = DispatchSemaphore(value: 0)
        let cpuStart = cpuNanos()
        let start = ContinuousClock.now
        let sender = Thread {
            do {
                let push = try ZMQSocket(context: senderContext, kind: .push)
                try push.set(.sendHighWaterMark(10_000))
                try push.connect(endpoint)
                for _ in 0..<records { try push.send(payload) }
                try push.set(.linger(milliseconds: -1))
                push.close()
            } catch {
                fatalError("raw sender: \(error)")
            }
            senderDone.signal()
        }
        sender.start()
        var received = 0
        while received < records {
            if try pull.receiveFrame({ bytes, _ in bytes.count }) != nil { received += 1 }
        }
        let elapsed = start.duration(to: .now)
        senderDone.wait()
        pull.close()
        let rate = Double(records) / elapsed.seconds
        FileHandle.standardError.write(
            "raw  \(workload.name): \(Int(rate)) rec/s, \(Int(cpuNanos() - cpuStart) / records) ns CPU per record\n"
                .data(using: .utf8)!)
        return rate
    }

    // MARK: the LLMTap wire

    private func measureWire(_ workload: Workload) throws -> Double {
        var logger = Logger(label: "llmtap.bench")
        logger.logLevel = .error
        let received = Atomic<Int>(0)
        let done = DispatchSemaphore(value: 0)
        let records = workload.records
        let receiver = try AnalysisReceiver(
            configuration: AnalysisReceiverConfiguration(endpoint: "tcp://127.0.0.1:*"),
            logger: logger
        ) { _ in
            if received.add(1, ordering: .relaxed).newValue == records { done.signal() }
        }
        var configuration = AnalysisPublisherConfiguration(endpoint: receiver.boundEndpoint, sidecarID: "bench-sidecar")
        configuration.maxQueuedRecords = 65_536
        configuration.maxQueuedBytes = 256 << 20
        let publisher = try AnalysisPublisher(configuration: configuration, logger: logger)
        let record = workload.record()
        let pauseAbove = configuration.maxQueuedRecords / 2

        let cpuStart = cpuNanos()
        let start = ContinuousClock.now
        let producer = Thread {
            // Paced so the queue never overflows: this measures what the wire sustains without loss.
            for index in 0..<records {
                if index & 1023 == 0 {
                    while publisher.stats.queueDepth > pauseAbove { usleep(200) }
                }
                publisher.publish(record)
            }
        }
        producer.start()
        done.wait()
        let elapsed = start.duration(to: .now)
        publisher.shutdown()
        receiver.shutdown()
        let stats = publisher.stats
        precondition(
            stats.dropped == 0, "the paced producer should never overflow the queue (dropped \(stats.dropped))")
        precondition(receiver.stats.totalMissing == 0 && receiver.stats.totalRejected == 0)
        let rate = Double(records) / elapsed.seconds
        FileHandle.standardError.write(
            "wire \(workload.name): \(Int(rate)) rec/s, \(Int(cpuNanos() - cpuStart) / records) ns CPU per record\n"
                .data(using: .utf8)!)
        return rate
    }
}

struct Row: Encodable {
    let workload: String
    let payloadBytes: Int
    let records: Int
    let rawRecordsPerSecond: Double
    let wireRecordsPerSecond: Double
    var rawMBPerSecond: Double { rawRecordsPerSecond * Double(payloadBytes) / 1_000_000 }
    var wireMBPerSecond: Double { wireRecordsPerSecond * Double(payloadBytes) / 1_000_000 }
    /// The median of each run's wire / raw, the two measured back to back.
    let ratio: Double
}

enum Workload {
    case chunk1KiB(records: Int)
    case request4KiB(records: Int)

    var name: String {
        switch self {
        case .chunk1KiB: "StreamChunk, 1 KiB data"
        case .request4KiB: "Request, 4 KiB body"
        }
    }

    var records: Int {
        switch self {
        case .chunk1KiB(let records), .request4KiB(let records): records
        }
    }

    var payloadBytes: Int {
        switch self {
        case .chunk1KiB: 1024
        case .request4KiB: 4096
        }
    }

    /// The test suite's sample record of the kind, with the payload made the measured size.
    func record() -> WireRecord {
        switch (self, SampleRecords.streamChunk, SampleRecords.request) {
        case (.chunk1KiB, .streamChunk(var chunk), _):
            chunk.data = Data(repeating: 0x61, count: payloadBytes)
            return .streamChunk(chunk)
        case (.request4KiB, _, .request(var request)):
            request.body = Data(repeating: 0x62, count: payloadBytes)
            request.bodySize = UInt64(payloadBytes)
            request.bodyTruncated = false
            return .request(request)
        default:
            preconditionFailure("the sample records changed kind")
        }
    }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// What one record costs on one thread, without sockets: encoding, decoding, sequence tracking.
/// For finding where the time goes; the throughput table is what the wire is judged by.
func microBenchmarks() throws {
    let record = Workload.chunk1KiB(records: 0).record()
    let encoder = try EnvelopeEncoder(sidecarID: "bench-sidecar", bootID: BootID.random())
    let iterations = 500_000
    func nanosecondsPerRecord(_ body: () throws -> Void) rethrows -> Int {
        let start = ContinuousClock.now
        try body()
        return Int(start.duration(to: .now).seconds / Double(iterations) * 1e9)
    }

    let sample = try encoder.encode(seq: 1, sentUnixNanos: 1, droppedBefore: 0, record: record)
    let frame = sample.bytes
    sample.release()
    let encode = try nanosecondsPerRecord {
        for index in 0..<iterations {
            try encoder.encode(seq: UInt64(index + 1), sentUnixNanos: 1, droppedBefore: 0, record: record).release()
        }
    }
    var decoder = EnvelopeDecoder()
    var decoded = 0
    let decode = nanosecondsPerRecord {
        for _ in 0..<iterations {
            if case .success = frame.withUnsafeBytes({ decoder.decode($0) }) { decoded += 1 }
        }
    }
    precondition(decoded == iterations)
    var tracker = SequenceTracker()
    let track = nanosecondsPerRecord {
        for index in 0..<iterations {
            _ = tracker.observe(
                sidecarID: "bench-sidecar", bootID: encoder.bootID, seq: UInt64(index + 1), droppedBefore: 0)
        }
    }
    print("per 1 KiB StreamChunk, one thread: encode \(encode) ns, decode \(decode) ns, sequence tracking \(track) ns")
}

/// CPU time of the whole process (all threads), user plus system.
func cpuNanos() -> UInt64 {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let user = UInt64(usage.ru_utime.tv_sec) * 1_000_000_000 + UInt64(usage.ru_utime.tv_usec) * 1000
    let system = UInt64(usage.ru_stime.tv_sec) * 1_000_000_000 + UInt64(usage.ru_stime.tv_usec) * 1000
    return user + system
}
