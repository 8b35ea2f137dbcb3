import ArgumentParser
import Foundation
import Logging
import Synchronization
import Wire

/// Load for llmtap-collector: synthetic OpenAI exchanges (one Request, `--chunks` StreamChunks of
/// `--chunk-bytes` SSE events, one ResponseDone, with usage in the last event), published as fast
/// as the collector takes them; and probes, one exchange a second from another sidecar id, timed
/// from their ResponseDone to their appearance in /metrics.
@main
struct CollectorBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llmtap-collector-bench",
        abstract: "Loads an llmtap-collector with synthetic exchanges and times how soon they show in /metrics."
    )

    @Option(help: "The collector's analysis endpoint.")
    var endpoint = "tcp://127.0.0.1:7101"

    @Option(help: "The collector's HTTP address (host:port), for /metrics.")
    var http = "127.0.0.1:9464"

    @Option(help: "Exchanges to send.")
    var exchanges = 50_000

    @Option(help: "StreamChunks per exchange.")
    var chunks = 20

    @Option(help: "Bytes per StreamChunk (one SSE event each).")
    var chunkBytes = 200

    @Option(help: "Sidecars to spread the exchanges over (one publisher each).")
    var sidecars = 2

    @Option(
        help:
            "Instead: be a bare live receiver on this endpoint (decode and sequence-check every record, nothing more) until SIGTERM, then print received= and missing=. benchmarks/proxy.sh uses it so that the sidecar is measured, not a collector sharing its cores."
    )
    var receiveOnly: String?

    func run() throws {
        if let receiveOnly { return try Self.receive(on: receiveOnly) }
        let address = try ListenAddress(http)
        var logger = Logger(label: "llmtap.collector-bench")
        logger.logLevel = .warning
        let publishers = try (0..<sidecars).map { index in
            var configuration = AnalysisPublisherConfiguration(endpoint: endpoint, sidecarID: "bench-\(index)")
            configuration.maxQueuedRecords = 200_000
            configuration.maxQueuedBytes = 256 << 20
            return try AnalysisPublisher(configuration: configuration, logger: logger)
        }
        let prober = try AnalysisPublisher(
            configuration: AnalysisPublisherConfiguration(endpoint: endpoint, sidecarID: "probe"), logger: logger)
        let events = Self.events(count: chunks, bytes: chunkBytes)
        let probeDelays = Mutex<[Double]>([])
        let loadDone = Atomic<Bool>(false)

        // Probes: one exchange a second, timed until /metrics counts it.
        let probes = Thread {
            var sent = 0
            while !loadDone.load(ordering: .relaxed) {
                sent += 1
                let id = "probe-\(sent)"
                for record in Self.exchange(id: id, events: Array(events.suffix(2))) { prober.publish(record) }
                let start = ContinuousClock.now
                while ContinuousClock.now - start < .seconds(10) {
                    if let count = Self.probeCount(address), count >= sent {
                        probeDelays.withLock {
                            $0.append(
                                Double((ContinuousClock.now - start).components.attoseconds) / 1e18
                                    + Double((ContinuousClock.now - start).components.seconds))
                        }
                        break
                    }
                    usleep(5_000)
                }
                usleep(1_000_000)
            }
        }
        probes.start()

        let start = ContinuousClock.now
        var published = 0
        for index in 0..<exchanges {
            let publisher = publishers[index % publishers.count]
            for record in Self.exchange(id: "ex-\(index)", events: events) {
                // Never drop: wait while the publisher's queue is deep (the collector sets the pace).
                while publisher.stats.queueDepth > 100_000 { usleep(200) }
                publisher.publish(record)
                published += 1
            }
        }
        for publisher in publishers { publisher.shutdown() }
        let sendSeconds = Self.seconds(ContinuousClock.now - start)
        let dropped = publishers.reduce(0) { $0 + $1.stats.dropped }
        print(
            "published \(published) records (\(exchanges) exchanges) in \(String(format: "%.2f", sendSeconds)) s, dropped \(dropped)"
        )
        Thread.sleep(forTimeInterval: 1.5)
        loadDone.store(true, ordering: .relaxed)
        Thread.sleep(forTimeInterval: 1.2)
        prober.shutdown()
        let delays = probeDelays.withLock { $0 }.sorted()
        if !delays.isEmpty {
            print(
                String(
                    format: "probe delay from ResponseDone to /metrics: median %.0f ms, max %.0f ms over %d probes",
                    delays[delays.count / 2] * 1000, delays.last! * 1000, delays.count))
        }
    }

    static func receive(on endpoint: String) throws {
        var logger = Logger(label: "llmtap.receiver")
        logger.logLevel = .warning
        let receiver = try AnalysisReceiver(
            configuration: AnalysisReceiverConfiguration(endpoint: endpoint), logger: logger, handler: { _ in })
        let stop = DispatchSemaphore(value: 0)
        // Kept alive until the wait ends.
        let sources = [SIGTERM, SIGINT].map { signal in
            Foundation.signal(signal, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signal)
            source.setEventHandler { stop.signal() }
            source.resume()
            return source
        }
        defer { for source in sources { source.cancel() } }
        print("receiving on \(receiver.boundEndpoint)")
        stop.wait()
        receiver.shutdown()
        let stats = receiver.stats
        print("received=\(stats.received) missing=\(stats.totalMissing) rejected=\(stats.totalRejected)")
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// `count` SSE events of about `bytes` each, OpenAI's shape, usage in the last.
    static func events(count: Int, bytes: Int) -> [Data] {
        (0..<count).map { index in
            var event =
                index == count - 1
                ? #"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":120,"completion_tokens":19,"total_tokens":139}}"#
                : #"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"tok"#
            if index != count - 1 {
                event += String(repeating: "x", count: max(0, bytes - event.utf8.count - 20)) + #""}}]}"#
            }
            return Data((event + "\n\n").utf8)
        }
    }

    static func exchange(id: String, events: [Data]) -> [WireRecord] {
        let now = WallClock.nowUnixNanos()
        var request = WireRequest()
        request.exchangeID = id
        request.ingress = .reverse
        request.method = "POST"
        request.scheme = "https"
        request.host = "api.openai.com"
        request.path = "/v1/chat/completions"
        request.app = "bench"
        request.tenant = "0123456789abcdef"
        request.startUnixNanos = now
        request.body = Data(
            #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello"}]}"#
                .utf8)
        request.bodySize = UInt64(request.body.count)
        var records: [WireRecord] = [.request(request)]
        var offset: UInt64 = 0
        for (index, data) in events.enumerated() {
            var chunk = WireStreamChunk()
            chunk.exchangeID = id
            chunk.direction = .response
            chunk.index = UInt64(index)
            chunk.offset = offset
            chunk.data = data
            chunk.unixNanos = now
            offset += UInt64(data.count)
            records.append(.streamChunk(chunk))
        }
        var done = WireResponseDone()
        done.exchangeID = id
        done.status = 200
        done.outcome = .completed
        done.upstreamFirstByteUnixNanos = now + 1_000_000
        done.endUnixNanos = now + 2_000_000
        done.responseBytes = offset
        done.responseChunks = UInt64(events.count)
        records.append(.responseDone(done))
        return records
    }

    /// `llmtap_requests_total` of the probe sidecar, from /metrics.
    static func probeCount(_ address: ListenAddress) -> Int? {
        guard let body = httpGet(address, "/metrics") else { return nil }
        var total = 0
        for line in body.split(separator: "\n")
        where line.hasPrefix("llmtap_requests_total{") && line.contains("sidecar=\"probe\"") {
            total += Int(Double(line.split(separator: " ").last ?? "") ?? 0)
        }
        return total
    }

    static func httpGet(_ address: ListenAddress, _ path: String) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(address.port).bigEndian)
        inet_pton(AF_INET, address.host, &addr.sin_addr)
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { return nil }
        let request = "GET \(path) HTTP/1.1\r\nHost: \(address.host)\r\nConnection: close\r\n\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
        var response = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            response += buffer[0..<count]
        }
        return String(decoding: response, as: UTF8.self)
    }
}
