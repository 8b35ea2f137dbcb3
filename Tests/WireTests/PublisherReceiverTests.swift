import Foundation
import TestSupport
import XCTest

@testable import Wire

/// The publisher and the receiver over real libzmq sockets on loopback.
final class PublisherReceiverTests: XCTestCase {
    private func receiver(_ endpoint: String = "tcp://127.0.0.1:*", into collected: Collected<ReceivedRecord>) throws
        -> AnalysisReceiver
    {
        try AnalysisReceiver(configuration: AnalysisReceiverConfiguration(endpoint: endpoint), logger: testLogger()) {
            collected.append($0)
        }
    }

    private func publisher(_ endpoint: String, sidecarID: String = "sidecar-a", maxRecords: Int = 65_536) throws
        -> AnalysisPublisher
    {
        var configuration = AnalysisPublisherConfiguration(endpoint: endpoint, sidecarID: sidecarID)
        configuration.maxQueuedRecords = maxRecords
        configuration.shutdownLinger = .seconds(5)
        return try AnalysisPublisher(configuration: configuration, logger: testLogger())
    }

    func testEveryKindRoundTripsOverTCPAndIPC() throws {
        let ipcPath = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-\(UUID().uuidString).sock")
            .path
        defer { try? FileManager.default.removeItem(atPath: ipcPath) }
        for endpoint in ["tcp://127.0.0.1:*", "ipc://\(ipcPath)"] {
            let collected = Collected<ReceivedRecord>()
            let receiver = try receiver(endpoint, into: collected)
            let publisher = try publisher(receiver.boundEndpoint)
            for record in SampleRecords.all { XCTAssertTrue(publisher.publish(record)) }
            XCTAssertTrue(eventually { collected.count == SampleRecords.all.count }, endpoint)
            publisher.shutdown()
            receiver.shutdown()

            let received = collected.all
            XCTAssertEqual(received.map(\.envelope.record), SampleRecords.all, endpoint)
            XCTAssertEqual(received.map(\.envelope.seq), [1, 2, 3, 4])
            XCTAssertTrue(
                received.allSatisfy {
                    $0.envelope.sidecarID == "sidecar-a" && $0.envelope.bootID == publisher.configuration.bootID
                })
            XCTAssertTrue(received.allSatisfy { $0.gap == nil && $0.envelope.sentUnixNanos > 0 })
            XCTAssertEqual(receiver.stats.received, 4)
            XCTAssertEqual(publisher.stats.published, 4)
        }
    }

    func testWithNobodyListeningPublishNeverWaitsAndTheReceiverLaterSeesExactlyTheDrops() throws {
        let endpoint = "tcp://127.0.0.1:\(try freeTCPPort())"
        let publisher = try publisher(endpoint, maxRecords: 1_000)
        var dropped: Set<UInt64> = []
        for seq in 1...100_000 where !publisher.publish(SampleRecords.streamChunk) {
            dropped.insert(UInt64(seq))
        }
        // Every call came back (we are here), most were dropped, and each drop was counted.
        let before = publisher.stats
        XCTAssertEqual(before.accepted + before.dropped, 100_000)
        XCTAssertEqual(before.dropped, UInt64(dropped.count))
        XCTAssertGreaterThanOrEqual(dropped.count, 100_000 - 1_000)
        XCTAssertLessThanOrEqual(before.queueDepth, 1_000)
        XCTAssertEqual(before.published, 0, "no collector, nothing handed to ZeroMQ")

        let collected = Collected<ReceivedRecord>()
        let receiver = try receiver(endpoint, into: collected)
        // Once the queue has drained to the collector, later records all get through.
        XCTAssertTrue(eventually { publisher.stats.published == before.accepted })
        for _ in 1...100 { XCTAssertTrue(publisher.publish(SampleRecords.heartbeat)) }
        let lastSeq = publisher.stats.lastSeq
        XCTAssertTrue(eventually { collected.all.last?.envelope.seq == lastSeq }, "the later records arrive")
        publisher.shutdown()
        receiver.shutdown()

        let received = collected.all
        var reportedMissing: Set<UInt64> = []
        for gap in received.compactMap(\.gap) {
            reportedMissing.formUnion(gap.firstMissing...gap.lastMissing)
            XCTAssertEqual(gap.lostInTransit, 0, "every missing record was one the sidecar dropped: \(gap)")
        }
        XCTAssertEqual(reportedMissing.count, dropped.count)
        XCTAssertTrue(
            reportedMissing.symmetricDifference(dropped).isEmpty,
            "the receiver must name exactly the sequence numbers the publisher dropped; these differ: \(reportedMissing.symmetricDifference(dropped).sorted().prefix(20))"
        )
        XCTAssertEqual(UInt64(received.count) + UInt64(reportedMissing.count), lastSeq)
        let stream = receiver.stats.streams.first!
        XCTAssertEqual(stream.droppedBySender, UInt64(dropped.count))
        XCTAssertEqual(stream.lostInTransit, 0)
    }

    func testTwoSidecarsKeepTheirOwnOrderAndGaps() throws {
        let endpoint = "tcp://127.0.0.1:\(try freeTCPPort())"
        // Sidecar a starts while the collector is away, and drops; sidecar b starts after it is back.
        let a = try publisher(endpoint, sidecarID: "sidecar-a", maxRecords: 10)
        var aDropped = 0
        for _ in 0..<50 where !a.publish(SampleRecords.streamChunk) { aDropped += 1 }
        XCTAssertEqual(aDropped, 40)

        let collected = Collected<ReceivedRecord>()
        let receiver = try receiver(endpoint, into: collected)
        let b = try publisher(endpoint, sidecarID: "sidecar-b")
        XCTAssertTrue(eventually { a.stats.published == 10 })
        var aPublished = 0
        for index in 0..<2_000 {
            XCTAssertTrue(b.publish(SampleRecords.responseDone))
            if index % 2 == 0 {
                // Publish to a only when its small queue has room, so that its later records are not dropped.
                XCTAssertTrue(eventually { a.stats.queueDepth < 10 })
                XCTAssertTrue(a.publish(SampleRecords.streamChunk))
                aPublished += 1
            }
        }
        let expected = 10 + aPublished + 2_000
        XCTAssertTrue(eventually { collected.count == expected }, "\(collected.count) of \(expected)")
        a.shutdown()
        b.shutdown()
        receiver.shutdown()

        for sidecar in ["sidecar-a", "sidecar-b"] {
            let seqs = collected.all.filter { $0.envelope.sidecarID == sidecar }.map(\.envelope.seq)
            XCTAssertEqual(seqs, seqs.sorted(), "\(sidecar) arrives in order")
        }
        let streams = Dictionary(uniqueKeysWithValues: receiver.stats.streams.map { ($0.sidecarID, $0) })
        XCTAssertEqual(streams["sidecar-a"]?.gaps, 1)
        XCTAssertEqual(streams["sidecar-a"]?.missing, 40)
        XCTAssertEqual(streams["sidecar-a"]?.droppedBySender, 40)
        XCTAssertEqual(streams["sidecar-b"]?.gaps, 0)
        XCTAssertEqual(streams["sidecar-b"]?.received, 2_000)
    }

    func testGarbageIsCountedByReasonAndValidRecordsKeepFlowing() throws {
        let collected = Collected<ReceivedRecord>()
        let receiver = try receiver(into: collected)
        let context = try ZMQContext()
        let push = try ZMQSocket(context: context, kind: .push)
        try push.set(.linger(milliseconds: 2_000))
        try push.connect(receiver.boundEndpoint)

        let encoder = try EnvelopeEncoder(sidecarID: "raw-peer", bootID: "boot")
        var seq: UInt64 = 0
        func sendValid() throws {
            seq += 1
            let frame = try encoder.encode(
                seq: seq, sentUnixNanos: 1, droppedBefore: 0, record: SampleRecords.heartbeat)
            try push.send(frame.bytes)
            frame.release()
        }
        let valid = try WireFrame.encode(SampleRecords.envelope(SampleRecords.request))
        var wrongVersion = valid
        wrongVersion[3] = 9

        try sendValid()
        try push.send(Array("\u{0}\u{1}garbage that is not ours".utf8))
        try sendValid()
        try push.send([UInt8]())
        try sendValid()
        try push.send(Array(valid.prefix(valid.count / 2)))
        try sendValid()
        try push.send(wrongVersion)
        try sendValid()
        try push.send(multipart: [WireFrame.header, Array(valid.dropFirst(4))])
        try sendValid()
        try push.send(WireFrame.header) // a marker and nothing else
        try sendValid()

        XCTAssertTrue(eventually { collected.count == 7 && receiver.stats.totalRejected == 6 })
        receiver.shutdown()
        XCTAssertEqual(collected.all.map(\.envelope.seq), Array(1...7))
        XCTAssertTrue(collected.all.allSatisfy { $0.gap == nil })
        XCTAssertEqual(
            receiver.stats.rejected,
            [
                .badMarker: 1, .emptyFrame: 1, .undecodable: 1, .unsupportedVersion: 1,
                .unexpectedMultipart: 1, .incompleteEnvelope: 1,
            ])
    }

    func testAPeerThatIsNotZeroMQIsCountedAndDoesNotDisturbOthers() throws {
        let collected = Collected<ReceivedRecord>()
        let receiver = try receiver(into: collected)
        let port = Int(receiver.boundEndpoint.split(separator: ":").last!)!

        // Plain HTTP at the analysis port, as a confused scraper would send.
        let fd = try connectTCP(port: port)
        let request = Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8) + [UInt8](repeating: 0xFF, count: 64)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }

        let publisher = try publisher(receiver.boundEndpoint)
        XCTAssertTrue(publisher.publish(SampleRecords.heartbeat))
        XCTAssertTrue(eventually { collected.count == 1 })
        XCTAssertTrue(
            eventually { receiver.stats.handshakeFailures + receiver.stats.disconnects >= 1 }, "\(receiver.stats)")
        close(fd)
        XCTAssertTrue(publisher.publish(SampleRecords.heartbeat))
        XCTAssertTrue(eventually { collected.count == 2 })
        publisher.shutdown()
        receiver.shutdown()
        XCTAssertGreaterThanOrEqual(receiver.stats.connectionsAccepted, 2)
    }

    func testShutdownDeliversWhatIsQueued() throws {
        let collected = Collected<ReceivedRecord>()
        let receiver = try receiver(into: collected)
        let publisher = try publisher(receiver.boundEndpoint)
        for _ in 0..<20_000 { XCTAssertTrue(publisher.publish(SampleRecords.streamChunk)) }
        publisher.shutdown()
        XCTAssertEqual(publisher.stats.published, 20_000)
        XCTAssertEqual(publisher.stats.dropped, 0)
        XCTAssertTrue(eventually { collected.count == 20_000 })
        receiver.shutdown()
        XCTAssertFalse(publisher.publish(SampleRecords.heartbeat), "a stopped publisher refuses, and counts it")
        XCTAssertEqual(publisher.stats.dropped, 1)
    }

    func testShutdownWithTheCollectorAwayGivesUpAfterTheLingerAndCountsIt() throws {
        var configuration = AnalysisPublisherConfiguration(
            endpoint: "tcp://127.0.0.1:\(try freeTCPPort())", sidecarID: "s")
        configuration.shutdownLinger = .milliseconds(200)
        let publisher = try AnalysisPublisher(configuration: configuration, logger: testLogger())
        for _ in 0..<100 { XCTAssertTrue(publisher.publish(SampleRecords.heartbeat)) }
        publisher.shutdown()
        publisher.shutdown() // a second call returns too
        XCTAssertEqual(
            publisher.stats,
            PublisherStats(accepted: 100, published: 0, dropped: 100, queueDepth: 0, queueBytes: 0, lastSeq: 100))
    }

    func testAMalformedEndpointIsRefusedAtStart() {
        XCTAssertThrowsError(
            try AnalysisPublisher(
                configuration: AnalysisPublisherConfiguration(endpoint: "tcp//nowhere", sidecarID: "s"),
                logger: testLogger()
            )
        ) { XCTAssertTrue("\($0)".contains("zmq_connect(tcp//nowhere)"), "\($0)") }
        XCTAssertThrowsError(
            try AnalysisReceiver(
                configuration: AnalysisReceiverConfiguration(endpoint: "tcp://256.0.0.1:1"), logger: testLogger(),
                handler: { _ in }
            ))
    }

    func testPublishIsSafeFromManyThreadsAtOnce() throws {
        let collected = Collected<ReceivedRecord>()
        let receiver = try receiver(into: collected)
        let publisher = try publisher(receiver.boundEndpoint)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<2_000 { publisher.publish(SampleRecords.streamChunk) }
        }
        publisher.shutdown()
        XCTAssertTrue(eventually { collected.count == 16_000 })
        receiver.shutdown()
        XCTAssertEqual(Set(collected.all.map(\.envelope.seq)), Set(1...16_000))
        XCTAssertEqual(collected.all.map(\.envelope.seq), Array(1...16_000), "sequence order is send order")
    }
}
