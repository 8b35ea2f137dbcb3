import Foundation
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import XCTest

@testable import Sidecar

/// The pieces that put HTTP/2 in front of the HTTP/1.1 exchange handler, without sockets: the
/// preface check, the sniffer that picks the pipeline, and the bridge between a stream's request
/// parts and HTTP/1.1 bytes.
final class HTTP2BridgeTests: XCTestCase {
    private let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    // MARK: ConnectionPreface

    func testThePrefaceIsToldFromHTTP1AsSoonAsTheBytesDiffer() {
        func verdict(_ text: String) -> ConnectionPreface.Verdict {
            ConnectionPreface.classify(ByteBuffer(string: text))
        }
        XCTAssertEqual(verdict(""), .undecided)
        XCTAssertEqual(verdict("P"), .undecided)
        XCTAssertEqual(verdict("PRI * HTTP/2.0\r\n"), .undecided)
        XCTAssertEqual(verdict(String(preface.dropLast())), .undecided)
        XCTAssertEqual(verdict(preface), .http2)
        XCTAssertEqual(verdict(preface + "\u{0}\u{0}\u{0}\u{4}"), .http2)
        XCTAssertEqual(verdict("POST /v1/chat/completions HTTP/1.1\r\n"), .http1)
        XCTAssertEqual(verdict("PUT"), .http1)
        XCTAssertEqual(verdict("PRI * HTTP/1.1\r\n"), .http1)
        XCTAssertEqual(verdict("GET / HTTP/1.1\r\n\r\n"), .http1)
        XCTAssertEqual(verdict("\u{16}\u{3}\u{1}"), .http1, "a TLS ClientHello on the plain port is HTTP/1's to refuse")
    }

    // MARK: ProtocolSniffer

    /// Stands for the pipeline a protocol gets: what it was handed.
    final class Catcher: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var received = ByteBuffer()
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            received.writeBuffer(&bytes)
        }
    }

    private func sniff(_ pieces: [String]) throws -> (
        choices: [ProtocolSniffer.Spoken], catcher: Catcher, channel: EmbeddedChannel
    ) {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3000)).wait()
        let catcher = Catcher()
        var choices: [ProtocolSniffer.Spoken] = []
        try channel.pipeline.syncOperations.addHandler(
            ProtocolSniffer(undecidedTimeout: .seconds(5)) { context, spoken in
                choices.append(spoken)
                try context.pipeline.syncOperations.addHandler(catcher, position: .after(context.handler))
            })
        for piece in pieces { try channel.writeInbound(ByteBuffer(string: piece)) }
        return (choices, catcher, channel)
    }

    func testTheSnifferHandsEveryByteToTheProtocolItPicksAndLeaves() throws {
        let split = try sniff(["PRI * HT", "TP/2.0\r\n\r\nSM", "\r\n\r\n", "frames"])
        XCTAssertEqual(split.choices.map { "\($0)" }, ["http2"])
        XCTAssertEqual(String(buffer: split.catcher.received), preface + "frames")
        XCTAssertThrowsError(try split.channel.pipeline.syncOperations.handler(type: ProtocolSniffer.self))

        let http1 = try sniff(["GET /v1/models HTTP/1.1\r\n", "host: x\r\n\r\n"])
        XCTAssertEqual(http1.choices.map { "\($0)" }, ["http1"])
        XCTAssertEqual(String(buffer: http1.catcher.received), "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")

        let early = try sniff(["PR", "IX"])
        XCTAssertEqual(early.choices.map { "\($0)" }, ["http1"])
        XCTAssertEqual(String(buffer: early.catcher.received), "PRIX")
    }

    func testAClientThatStopsInsideThePrefaceIsClosedAtTheClientTimeout() throws {
        let (choices, _, channel) = try sniff(["PRI * HTTP/2"])
        XCTAssertTrue(choices.isEmpty)
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(6))
        XCTAssertFalse(channel.isActive, "a half-sent preface holds the connection past the client timeout")
    }

    // MARK: HTTP2StreamBridge

    private func bridge() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(HTTP2StreamBridge(maxHeadBytes: 64 << 10))
        return channel
    }

    private func inbound(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let bytes = try channel.readInbound(as: ByteBuffer.self) { text += String(buffer: bytes) }
        return text
    }

    func testARequestOfUnknownLengthIsWrittenChunkedAndOneWithALengthAsItIs() throws {
        let channel = try bridge()
        var headers = HTTPHeaders([("host", "127.0.0.1:3000"), ("authorization", "Bearer sk-x")])
        headers.add(name: "transfer-encoding", value: "chunked")
        try channel.writeInbound(
            HTTPServerRequestPart.head(
                .init(version: .http2, method: .POST, uri: "/v1/chat/completions", headers: headers)))
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: #"{"model":"#)))
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer()))
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: String(repeating: "m", count: 20))))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        XCTAssertEqual(
            try inbound(channel),
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:3000\r\nauthorization: Bearer sk-x\r\n"
                + "transfer-encoding: chunked\r\n\r\n9\r\n{\"model\":\r\n14\r\n\(String(repeating: "m", count: 20))\r\n0\r\n\r\n"
        )

        let sized = try bridge()
        let lengthHeaders = HTTPHeaders([("host", "h"), ("content-length", "2")])
        try sized.writeInbound(
            HTTPServerRequestPart.head(.init(version: .http2, method: .POST, uri: "/", headers: lengthHeaders)))
        try sized.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "{}")))
        try sized.writeInbound(HTTPServerRequestPart.end(nil))
        XCTAssertEqual(try inbound(sized), "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n{}")

        let get = try bridge()
        try get.writeInbound(
            HTTPServerRequestPart.head(.init(version: .http2, method: .GET, uri: "/v1/models", headers: ["host": "h"])))
        try get.writeInbound(HTTPServerRequestPart.end(nil))
        XCTAssertEqual(try inbound(get), "GET /v1/models HTTP/1.1\r\nhost: h\r\n\r\n")
    }

    func testWhatHTTP1CouldNotCarryEndsTheStreamUnsent() throws {
        let heads: [(String, HTTPRequestHead)] = [
            (
                "CRLF in a value",
                .init(version: .http2, method: .GET, uri: "/", headers: HTTPHeaders([("x-a", "1\r\nx-b: 2")]))
            ),
            ("a space in a name", .init(version: .http2, method: .GET, uri: "/", headers: HTTPHeaders([("x a", "1")]))),
            ("a space in the target", .init(version: .http2, method: .GET, uri: "/a b", headers: ["host": "h"])),
        ]
        for (name, head) in heads {
            let channel = try bridge()
            try channel.writeInbound(HTTPServerRequestPart.head(head))
            XCTAssertEqual(try inbound(channel), "", name)
            XCTAssertFalse(channel.isActive, name)
        }
        // A body on a request whose head framed none.
        let channel = try bridge()
        try channel.writeInbound(
            HTTPServerRequestPart.head(.init(version: .http2, method: .GET, uri: "/", headers: ["host": "h"])))
        _ = try inbound(channel)
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "smuggled")))
        XCTAssertEqual(try inbound(channel), "")
        XCTAssertFalse(channel.isActive)
    }

    private func outbound(_ channel: EmbeddedChannel) throws -> [String] {
        var parts: [String] = []
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            switch part {
            case .head(let head):
                parts.append(
                    "head \(head.status.code) " + head.headers.map { "\($0.name)=\($0.value)" }.joined(separator: ","))
            case .body(.byteBuffer(let body)):
                parts.append("body " + String(buffer: body))
            case .body(.fileRegion):
                parts.append("file")
            case .end:
                parts.append("end")
            }
        }
        return parts
    }

    func testTheHandlersResponseBytesBecomeParts() throws {
        let channel = try bridge()
        try channel.writeInbound(
            HTTPServerRequestPart.head(
                .init(version: .http2, method: .POST, uri: "/", headers: ["content-length": "0"])))
        // Split anywhere: the head across writes, the chunked body in pieces.
        let written = channel.write(
            ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-"))
        try channel.writeOutbound(ByteBuffer(string: "encoding: chunked\r\n\r\n6\r\ndata: \r\n"))
        try channel.writeOutbound(ByteBuffer(string: "2\r\nhi\r\n0\r\n"))
        let last = channel.writeAndFlush(ByteBuffer(string: "\r\n"))
        // The handler's empty write (its response's end) completes with the last part.
        let empty = channel.writeAndFlush(ByteBuffer())
        XCTAssertEqual(
            try outbound(channel),
            ["head 200 content-type=text/event-stream,transfer-encoding=chunked", "body data: ", "body hi", "end"])
        XCTAssertNoThrow(try written.wait())
        XCTAssertNoThrow(try last.wait())
        XCTAssertNoThrow(try empty.wait())
    }

    func testABodyThatRunsUntilCloseEndsTheStreamWhenTheHandlerCloses() throws {
        let channel = try bridge()
        try channel.writeInbound(
            HTTPServerRequestPart.head(.init(version: .http2, method: .GET, uri: "/", headers: ["host": "h"])))
        try channel.writeOutbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"))
        channel.close(promise: nil)
        XCTAssertEqual(try outbound(channel), ["head 200 connection=close", "body all of it", "end"])
    }

    func testAHEADResponseHasNoBody() throws {
        let channel = try bridge()
        try channel.writeInbound(
            HTTPServerRequestPart.head(.init(version: .http2, method: .HEAD, uri: "/", headers: ["host": "h"])))
        try channel.writeOutbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n"))
        XCTAssertEqual(try outbound(channel), ["head 200 content-length=42", "end"])
    }

    // MARK: HTTP2ConnectionWatcher

    func testErrorsAreToldApartByWhatNIOHTTP2DoesWithThemAndLoggedByKindOnly() {
        let header = NIOHTTP2Errors.invalidHTTP2HeaderFieldValue(name: "authorization", value: "Bearer sk-secret")
        XCTAssertTrue(HTTP2ConnectionWatcher.isStreamError(header))
        XCTAssertTrue(HTTP2ConnectionWatcher.isStreamError(NIOHTTP2Errors.streamError(streamID: 1, baseError: header)))
        XCTAssertTrue(HTTP2ConnectionWatcher.isStreamError(NIOHTTP2Errors.contentLengthViolated()))
        XCTAssertFalse(HTTP2ConnectionWatcher.isStreamError(NIOHTTP2Errors.excessiveRSTFrames()))
        XCTAssertFalse(HTTP2ConnectionWatcher.isStreamError(NIOHTTP2Errors.unableToParseFrame()))
        XCTAssertEqual(HTTP2ConnectionWatcher.kind(of: header), "InvalidHTTP2HeaderFieldValue")
        XCTAssertEqual(
            HTTP2ConnectionWatcher.kind(of: NIOHTTP2Errors.streamError(streamID: 1, baseError: header)),
            "InvalidHTTP2HeaderFieldValue")
        XCTAssertFalse(HTTP2ConnectionWatcher.kind(of: header).contains("sk-secret"))
    }

    // MARK: WebSocket over HTTP/2 (RFC 8441)

    func testAnExtendedConnectForWebSocketBecomesAnUpgradeAndNothingElseDoes() throws {
        let connect: HPACKHeaders = [
            ":method": "CONNECT", ":protocol": "websocket", ":scheme": "https", ":path": "/v1/realtime?model=m",
            ":authority": "api.openai.com", "sec-websocket-version": "13", "sec-websocket-protocol": "realtime",
        ]
        let upgrade = try XCTUnwrap(ExtendedConnectDetector.upgradeHeaders(connect))
        XCTAssertEqual(upgrade.first(name: ":method"), "GET")
        XCTAssertNil(upgrade.first(name: ":protocol"))
        XCTAssertEqual(upgrade.first(name: ":path"), "/v1/realtime?model=m")
        XCTAssertEqual(upgrade.first(name: "connection"), "upgrade")
        XCTAssertEqual(upgrade.first(name: "upgrade"), "websocket")
        XCTAssertEqual(upgrade.first(name: "sec-websocket-protocol"), "realtime")
        let key = try XCTUnwrap(upgrade.first(name: "sec-websocket-key"))
        XCTAssertEqual(Data(base64Encoded: key)?.count, 16, key)
        var plainConnect = connect
        plainConnect.remove(name: ":protocol")
        XCTAssertNil(ExtendedConnectDetector.upgradeHeaders(plainConnect))
        var other = connect
        other.replaceOrAdd(name: ":protocol", value: "connect-udp")
        XCTAssertNil(ExtendedConnectDetector.upgradeHeaders(other))
        XCTAssertNil(ExtendedConnectDetector.upgradeHeaders([":method": "GET", ":path": "/", ":scheme": "http"]))
    }

    func testATunnelsUpgradeIsAnsweredWith200AndItsBytesPassAsTheyAre() throws {
        let bridge = HTTP2StreamBridge(maxHeadBytes: 64 << 10)
        let channel = EmbeddedChannel(handler: bridge)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3000)).wait()
        XCTAssertTrue(channel.isActive)
        bridge.carriesWebSocket()
        try channel.writeInbound(
            HTTPServerRequestPart.head(
                .init(
                    version: .http2, method: .GET, uri: "/v1/realtime",
                    headers: ["host": "h", "connection": "upgrade", "upgrade": "websocket"])))
        XCTAssertTrue(try inbound(channel).hasPrefix("GET /v1/realtime HTTP/1.1\r\n"))
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(bytes: [0x81, 0x80, 1, 2, 3, 4])))
        XCTAssertEqual(try channel.readInbound(as: ByteBuffer.self), ByteBuffer(bytes: [0x81, 0x80, 1, 2, 3, 4]))
        try channel.writeOutbound(
            ByteBuffer(
                string: "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
                    + "sec-websocket-accept: abc=\r\nsec-websocket-protocol: realtime\r\n\r\n\u{81}\u{2}hi"))
        guard case .head(let head) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            return XCTFail("no head")
        }
        XCTAssertEqual(head.status, .ok)
        XCTAssertNil(head.headers.first(name: "sec-websocket-accept"))
        XCTAssertEqual(head.headers.first(name: "sec-websocket-protocol"), "realtime")
        guard case .body(.byteBuffer(let body)) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            return XCTFail("no body")
        }
        XCTAssertEqual(String(buffer: body), "\u{81}\u{2}hi")
        // The client's END_STREAM ends the tunnel.
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        XCTAssertFalse(channel.isActive)
    }

    // MARK: FlushCoalescer

    func testFlushesWaitForTheEndOfTheLoopsTurnAndACloseSendsThemFirst() throws {
        let channel = EmbeddedChannel(handler: FlushCoalescer())
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3000)).wait()
        for index in 0..<3 {
            channel.write(ByteBuffer(string: "frame \(index);"), promise: nil)
            channel.flush()
        }
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "nothing leaves before the turn ends")
        channel.embeddedEventLoop.run()
        var sent = ""
        while let bytes = try channel.readOutbound(as: ByteBuffer.self) { sent += String(buffer: bytes) }
        XCTAssertEqual(sent, "frame 0;frame 1;frame 2;", "one flush sends them all, in order")
        channel.write(ByteBuffer(string: "goaway"), promise: nil)
        channel.flush()
        channel.close(promise: nil)
        XCTAssertEqual(try channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) }, "goaway")
    }
}
