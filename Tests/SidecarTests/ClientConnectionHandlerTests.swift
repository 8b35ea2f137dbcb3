import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Wire
import XCTest

@testable import Sidecar

/// The client connection's handler on `EmbeddedChannel`s: the client's bytes go in with
/// `writeInbound`, what reaches the upstream comes out of a second embedded channel (an
/// `UpstreamHandler` in the pool), and its answer goes back the same way. No socket, no clock.
final class ClientConnectionHandlerTests: XCTestCase {
    /// Counts `read()` calls that reach a channel's socket: back-pressure holds them.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    final class Records: RecordPublishing, @unchecked Sendable {
        private let lock = NIOLock()
        private var kinds: [EncodedRecord.Kind] = []
        var published: [EncodedRecord.Kind] { lock.withLock { kinds } }
        func publish(_ record: EncodedRecord) -> Bool {
            lock.withLock { kinds.append(record.kind) }
            return true
        }
    }

    struct Rig {
        let loop: EmbeddedEventLoop
        let client: EmbeddedChannel
        let clientReads: ReadCounter
        let upstream: EmbeddedChannel
        let upstreamReads: ReadCounter
        let records: Records
        let counters: SidecarCounters

        /// Everything written to the client so far, as text.
        func clientReceived() throws -> String { try Self.drain(client) }
        /// Everything written to the upstream so far, as text.
        func upstreamReceived() throws -> String { try Self.drain(upstream) }

        static func drain(_ channel: EmbeddedChannel) throws -> String {
            var text = ""
            while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
                text += buffer.readString(length: buffer.readableBytes) ?? ""
            }
            return text
        }

        func send(_ text: String) throws {
            try client.writeInbound(ByteBuffer(string: text))
        }

        func answer(_ text: String) throws {
            try upstream.writeInbound(ByteBuffer(string: text))
        }
    }

    func rig(policy: PolicyGate? = nil) throws -> Rig {
        let loop = EmbeddedEventLoop()
        var settings = ProxySettings(
            tap: TapSettings(app: "test", maxCaptureBytes: 1 << 20, tailBytes: 16 << 10),
            tenantHasher: TenantHasher(key: "test"), upstreamTimeout: .seconds(600), clientTimeout: .seconds(75),
            maxHeaderBytes: 64 << 10)
        settings.policy = policy
        let pools = UpstreamPools.single(
            loop: loop,
            settings: UpstreamConnectionPool.Settings(
                sslContext: nil, connectTimeout: .seconds(1), maxIdle: 8, idleTimeout: .seconds(90)))
        let target = try UpstreamTarget(url: "http://127.0.0.1:9")
        let upstream = EmbeddedChannel(loop: loop)
        let upstreamReads = ReadCounter()
        let upstreamHandler = UpstreamHandler(maxHeadBytes: 64 << 10)
        try upstream.pipeline.syncOperations.addHandler(upstreamReads)
        try upstream.pipeline.syncOperations.addHandler(upstreamHandler)
        try upstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        pools.pool(for: loop, target: target).release(UpstreamConnection(channel: upstream, handler: upstreamHandler))

        let records = Records()
        let counters = SidecarCounters(bootID: "test")
        let client = EmbeddedChannel(loop: loop)
        let clientReads = ReadCounter()
        try client.pipeline.syncOperations.addHandler(clientReads)
        try client.pipeline.syncOperations.addHandler(
            ClientConnectionHandler(
                settings: settings, target: target, pools: pools, publisher: records, counters: counters,
                logger: Logger(label: "test")))
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        return Rig(
            loop: loop, client: client, clientReads: clientReads, upstream: upstream, upstreamReads: upstreamReads,
            records: records, counters: counters)
    }

    let chat = #"{"model":"gpt-4o","messages":[]}"#

    func request(_ body: String, extra: String = "") -> String {
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sidecar\r\ncontent-type: application/json\r\n\(extra)content-length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    func response(_ body: String) -> String {
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    func testAFullExchange() throws {
        let rig = try rig()
        try rig.send(request(chat))
        let sent = try rig.upstreamReceived()
        XCTAssertTrue(sent.hasPrefix("POST /v1/chat/completions HTTP/1.1\r\n"), sent)
        XCTAssertTrue(sent.contains("\r\nhost: 127.0.0.1:9\r\n"), sent)
        XCTAssertTrue(sent.hasSuffix("\r\n\r\n" + chat), sent)

        try rig.answer(response(#"{"id":"a"}"#))
        let received = try rig.clientReceived()
        XCTAssertTrue(received.hasPrefix("HTTP/1.1 200 OK\r\n"), received)
        XCTAssertTrue(received.lowercased().contains("x-llmtap-exchange-id: "), received)
        XCTAssertTrue(received.hasSuffix(#"{"id":"a"}"#), received)
        XCTAssertEqual(rig.records.published, [.request, .streamChunk, .responseDone])
        XCTAssertEqual(rig.counters.inFlight.load(ordering: .relaxed), 0)
        XCTAssertTrue(rig.client.isActive, "a keep-alive connection stays")
        XCTAssertNoThrow(try rig.client.finish())
    }

    func testAPipelinedPairIsAnsweredInOrderOverOneUpstreamConnection() throws {
        let rig = try rig()
        try rig.send(request(chat) + request(#"{"model":"second"}"#))
        let first = try rig.upstreamReceived()
        XCTAssertTrue(first.hasSuffix(chat), first)
        XCTAssertFalse(first.contains("second"), "the second request waits for the first's response")
        try rig.answer(response("one"))
        XCTAssertTrue(try rig.clientReceived().hasSuffix("one"))
        // The first exchange's end starts the second, on the connection just given back.
        let second = try rig.upstreamReceived()
        XCTAssertTrue(second.hasSuffix(#"{"model":"second"}"#), second)
        try rig.answer(response("two"))
        XCTAssertTrue(try rig.clientReceived().hasSuffix("two"))
        XCTAssertEqual(rig.records.published.filter { $0 == .responseDone }.count, 2)
    }

    func testAStreamedResponseIsRechunkedAndEndsWithTheLastChunk() throws {
        let rig = try rig()
        try rig.send(request(chat))
        _ = try rig.upstreamReceived()
        try rig.answer("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        try rig.answer("5\r\ndata:\r\n")
        try rig.answer("3\r\n 1\n\r\n0\r\n\r\n")
        let received = try rig.clientReceived()
        XCTAssertTrue(received.lowercased().contains("transfer-encoding: chunked\r\n"), received)
        XCTAssertTrue(received.hasSuffix("\r\n\r\n5\r\ndata:\r\n3\r\n 1\n\r\n0\r\n\r\n"), received)
    }

    func testAPolicyRefusalWaitsForTheBodyAndKeepsTheConnection() throws {
        let rig = try rig(policy: PolicyGate(requireVirtualKey: true))
        let full = request(chat, extra: "authorization: Bearer sk-real\r\n")
        let cut = full.index(full.endIndex, offsetBy: -10)
        try rig.send(String(full[..<cut]))
        XCTAssertEqual(try rig.clientReceived(), "", "answered before the body was read")
        try rig.send(String(full[cut...]))
        let received = try rig.clientReceived()
        XCTAssertTrue(received.hasPrefix("HTTP/1.1 401 Unauthorized\r\n"), received)
        XCTAssertTrue(received.contains("invalid_api_key"), received)
        XCTAssertFalse(received.lowercased().contains("connection: close"), received)
        XCTAssertEqual(try rig.upstreamReceived(), "", "a refused request went upstream")
        XCTAssertTrue(rig.client.isActive)
        XCTAssertEqual(rig.records.published.last, .responseDone)
    }

    func testAnEarly401ForAClientThatExpectsContinueClosesMidBody() throws {
        let rig = try rig(policy: PolicyGate(requireVirtualKey: true))
        try rig.send(
            request("", extra: "authorization: Bearer sk-real\r\nexpect: 100-continue\r\n").replacingOccurrences(
                of: "content-length: 0", with: "content-length: 100"))
        let received = try rig.clientReceived()
        XCTAssertTrue(received.hasPrefix("HTTP/1.1 401 Unauthorized\r\n"), received)
        XCTAssertTrue(received.lowercased().contains("connection: close"), received)
        XCTAssertFalse(rig.client.isActive, "the body that may still come can't be told from a next request")
    }

    func testAnEarly413MidBodyForAModelCheckTooLarge() throws {
        let gate = PolicyGate(requireVirtualKey: true)
        let key = "llmtap-handler-test"
        gate.install(
            PolicyTable(
                keys: [
                    KeyHash.of(key): KeyEntry(
                        keyID: "key_1", projectID: "p1", expiresAtMs: 0, revoked: false, ratePerHour: 0, maxParallel: 0,
                        allowedModels: ["gpt-4o"])
                ],
                projects: [
                    "p1": ProjectEntry(
                        projectID: "p1", name: "p", credentialRef: "main", credential: "sk-up", denied: false,
                        denialReason: "", deniedUntilMs: 0)
                ]))
        let rig = try rig(policy: gate)
        let size = (4 << 20) + 1000
        try rig.send(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: s\r\nauthorization: Bearer \(key)\r\ncontent-length: \(size)\r\n\r\n"
        )
        let piece = String(repeating: "x", count: 1 << 20)
        for _ in 0..<4 { try rig.send(piece) }
        XCTAssertEqual(try rig.clientReceived(), "", "answered before the limit")
        try rig.send(String(repeating: "y", count: 100))
        let received = try rig.clientReceived()
        XCTAssertTrue(received.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"), received)
        XCTAssertTrue(received.lowercased().contains("connection: close"), received)
        XCTAssertEqual(try rig.upstreamReceived(), "", "nothing goes upstream before the check")
        XCTAssertEqual(rig.counters.inFlight.load(ordering: .relaxed), 0)
    }

    func testAMalformedRequestIs400AndCloses() throws {
        let rig = try rig()
        try rig.send("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
        let received = try rig.clientReceived()
        XCTAssertTrue(received.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), received)
        XCTAssertFalse(rig.client.isActive)
    }

    func testBackPressureHoldsTheSideThatIsAhead() throws {
        let rig = try rig()
        try rig.send("POST /v1/chat/completions HTTP/1.1\r\nhost: s\r\ncontent-length: 100\r\n\r\n")
        _ = try rig.upstreamReceived()
        // The upstream can't take more: the client is not read.
        rig.upstream.isWritable = false
        rig.upstream.pipeline.fireChannelWritabilityChanged()
        let clientReads = rig.clientReads.reads
        rig.client.read()
        XCTAssertEqual(rig.clientReads.reads, clientReads, "read the client while the upstream is full")
        rig.upstream.isWritable = true
        rig.upstream.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(rig.clientReads.reads, clientReads + 1, "the held read was not issued")

        try rig.send(String(repeating: "z", count: 100))
        try rig.answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        // The client can't take more: the upstream is not read.
        rig.client.isWritable = false
        rig.client.pipeline.fireChannelWritabilityChanged()
        let upstreamReads = rig.upstreamReads.reads
        rig.upstream.read()
        XCTAssertEqual(rig.upstreamReads.reads, upstreamReads, "read the upstream while the client is full")
        rig.client.isWritable = true
        rig.client.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(rig.upstreamReads.reads, upstreamReads + 1, "the held read was not issued")
        try rig.answer("2\r\nok\r\n0\r\n\r\n")
        XCTAssertTrue(try rig.clientReceived().hasSuffix("2\r\nok\r\n0\r\n\r\n"))
    }

    func testTheClientLeavingMidStreamClosesTheUpstreamAndRecordsTheAbort() throws {
        let rig = try rig()
        try rig.send(request(chat))
        _ = try rig.upstreamReceived()
        try rig.answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n")
        _ = try rig.clientReceived()
        try rig.client.close().wait()
        XCTAssertFalse(rig.upstream.isActive, "a half-read response's connection can't be reused")
        XCTAssertEqual(rig.records.published.last, .responseDone)
        XCTAssertEqual(rig.counters.inFlight.load(ordering: .relaxed), 0)
    }

    func testAnUpstreamResetBeforeTheHeadIs502() throws {
        let rig = try rig()
        try rig.send(request(chat))
        _ = try rig.upstreamReceived()
        try rig.upstream.close().wait()
        let received = try rig.clientReceived()
        XCTAssertTrue(received.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"), received)
        XCTAssertTrue(rig.client.isActive, "the request was whole: the client's connection stays")
    }

    func testQuiesceLetsTheExchangeFinishThenCloses() throws {
        let rig = try rig()
        try rig.send(request(chat))
        _ = try rig.upstreamReceived()
        rig.client.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        XCTAssertTrue(rig.client.isActive)
        try rig.answer(response("done"))
        let received = try rig.clientReceived()
        XCTAssertTrue(received.lowercased().contains("connection: close"), received)
        XCTAssertTrue(received.hasSuffix("done"))
        rig.loop.run()
        XCTAssertFalse(rig.client.isActive)
    }
}
