import NIOCore
import NIOEmbedded
import NIOWebSocket
import XCTest

@testable import Sidecar

/// The WebSocket frame scanner, without I/O: what it lets through, what it taps, what it refuses;
/// and, against NIO's `WebSocketFrameDecoder` over thousands of random and mangled frame
/// sequences, that wherever it lets a whole input through it reads the same messages NIO reads.
final class WebSocketFrameScannerTests: XCTestCase {
    /// A frame's bytes: masked with `mask` when it is not 0.
    static func frame(
        opcode: UInt8, fin: Bool = true, payload: [UInt8], mask: UInt32 = 0, rsv: UInt8 = 0, forceLength64: Bool = false
    ) -> [UInt8] {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | rsv << 4 | opcode]
        let maskBit: UInt8 = mask != 0 ? 0x80 : 0
        if payload.count < 126 && !forceLength64 {
            bytes.append(maskBit | UInt8(payload.count))
        } else if payload.count <= 0xFFFF && !forceLength64 {
            bytes.append(maskBit | 126)
            bytes += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            bytes.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) {
                bytes.append(UInt8(truncatingIfNeeded: payload.count >> shift))
            }
        }
        var body = payload
        if mask != 0 {
            for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: mask >> shift)) }
            WebSocketFrameScanner.unmask(&body, from: 0, mask: mask, maskOffset: 0)
        }
        return bytes + body
    }

    struct Reading: Equatable {
        var messages: [[UInt8]] = []
        var opcodes: [UInt8] = []
        var closes: [UInt16?] = []
        var forwarded: [UInt8] = []
        var violation: WebSocketViolation?
    }

    /// Feeds `input` in pieces of `step` bytes; gathers what the scanner let through and tapped.
    static func scan(_ input: [UInt8], origin: WebSocketFrameScanner.Origin, step: Int, max: Int = 1 << 20)
        -> Reading
    {
        var scanner = WebSocketFrameScanner(origin: origin, maxMessageBytes: max)
        var reading = Reading()
        var current: [UInt8] = []
        var start = 0
        while start < input.count, reading.violation == nil {
            let piece = ByteBuffer(bytes: input[start..<min(input.count, start + step)])
            start += step
            let scan = scanner.scan(piece) { event in
                switch event {
                case .messageStart(let opcode):
                    reading.opcodes.append(opcode)
                    current = []
                case .payload(let bytes, let mask, let offset):
                    var copy = Array(bytes)
                    WebSocketFrameScanner.unmask(&copy, from: 0, mask: mask, maskOffset: offset)
                    current += copy
                case .messageEnd:
                    reading.messages.append(current)
                case .close(let code, _):
                    reading.closes.append(code)
                }
            }
            if let carried = scan.carried { reading.forwarded += Array(carried.readableBytesView) }
            reading.forwarded += Array(piece.readableBytesView.prefix(scan.forward))
            reading.violation = scan.violation
        }
        return reading
    }

    func testMaskedMessagesPassWholeAndAreTappedUnmaskedAtEveryReadBoundary() {
        let text = Array(#"{"type":"response.create","response":{"modalities":["text"]}}"#.utf8)
        let big = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let input =
            Self.frame(opcode: 1, payload: text, mask: 0x1234_5678)
            + Self.frame(opcode: 9, payload: Array("ping".utf8), mask: 0xA1B2_C3D4)
            + Self.frame(opcode: 2, fin: false, payload: Array(big[0..<30_000]), mask: 0x0102_0304)
            + Self.frame(opcode: 10, payload: [], mask: 0x0F0F_0F0F)
            + Self.frame(opcode: 0, fin: true, payload: Array(big[30_000...]), mask: 0xDEAD_BEEF)
            + Self.frame(opcode: 8, payload: [0x03, 0xE8] + Array("bye".utf8), mask: 0x5555_AAAA)
        for step in [1, 2, 3, 7, 13, 100, 4096, input.count] {
            let reading = Self.scan(input, origin: .client, step: step)
            XCTAssertNil(reading.violation, "step \(step)")
            XCTAssertEqual(reading.forwarded, input, "every byte goes on, in order, at step \(step)")
            XCTAssertEqual(reading.messages, [text, big], "step \(step)")
            XCTAssertEqual(reading.opcodes, [1, 2])
            XCTAssertEqual(reading.closes, [1000])
        }
    }

    func testTheUpstreamsUnmaskedFramesPass() {
        let input =
            Self.frame(opcode: 1, payload: Array("hello".utf8)) + Self.frame(opcode: 8, payload: [])
        let reading = Self.scan(input, origin: .server, step: 1)
        XCTAssertNil(reading.violation)
        XCTAssertEqual(reading.forwarded, input)
        XCTAssertEqual(reading.messages, [Array("hello".utf8)])
        XCTAssertEqual(reading.closes, [nil])
    }

    func testEachBrokenFrameIsRefusedWithItsCodeAndNothingOfItGoesOn() {
        let good = Self.frame(opcode: 1, payload: Array("ok".utf8), mask: 0x0102_0304)
        let cases: [(String, WebSocketFrameScanner.Origin, [UInt8], UInt16)] = [
            ("unmasked client frame", .client, Self.frame(opcode: 1, payload: [1, 2]), 1002),
            ("masked server frame", .server, Self.frame(opcode: 1, payload: [1], mask: 9), 1002),
            ("reserved opcode 3", .client, Self.frame(opcode: 3, payload: [], mask: 9), 1002),
            ("reserved opcode 0xB", .client, Self.frame(opcode: 0xB, payload: [], mask: 9), 1002),
            ("RSV1 (no permessage-deflate)", .client, Self.frame(opcode: 1, payload: [1], mask: 9, rsv: 4), 1002),
            ("fragmented ping", .client, Self.frame(opcode: 9, fin: false, payload: [], mask: 9), 1002),
            (
                "ping over 125 bytes", .client,
                Self.frame(opcode: 9, payload: Array(repeating: 0, count: 126), mask: 9), 1002
            ),
            ("continuation first", .client, Self.frame(opcode: 0, payload: [1], mask: 9), 1002),
            ("one-byte close", .client, Self.frame(opcode: 8, payload: [3], mask: 9), 1002),
            (
                "message over the bound", .client,
                Self.frame(opcode: 2, payload: Array(repeating: 1, count: 2000), mask: 9), 1009
            ),
            ("64-bit length with its top bit", .client, [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9], 1002),
        ]
        for (name, origin, bad, code) in cases {
            let lead = origin == .client ? good : Self.frame(opcode: 1, payload: Array("ok".utf8))
            for step in [1, 5, 1000] {
                let reading = Self.scan(lead + bad + lead, origin: origin, step: step, max: 1024)
                XCTAssertEqual(reading.violation?.code, code, "\(name) at step \(step)")
                if name == "one-byte close" {
                    // Checked once whole: the frame itself went on; nothing after it.
                    XCTAssertEqual(reading.forwarded, lead + bad, name)
                } else {
                    XCTAssertEqual(reading.forwarded, lead, "\(name): only what came before it goes on (step \(step))")
                }
            }
        }
    }

    func testANewMessageInsideAFragmentedOneIsRefused() {
        let input =
            Self.frame(opcode: 1, fin: false, payload: [65], mask: 7) + Self.frame(opcode: 1, payload: [66], mask: 7)
        let reading = Self.scan(input, origin: .client, step: 1)
        XCTAssertEqual(reading.violation?.code, 1002)
        XCTAssertEqual(reading.forwarded, Self.frame(opcode: 1, fin: false, payload: [65], mask: 7))
    }

    func testTheBoundCountsAMessagesFramesTogether() {
        let input =
            Self.frame(opcode: 2, fin: false, payload: Array(repeating: 1, count: 600), mask: 7)
            + Self.frame(opcode: 0, payload: Array(repeating: 1, count: 600), mask: 7)
        XCTAssertEqual(Self.scan(input, origin: .client, step: 64, max: 1024).violation?.code, 1009)
        XCTAssertNil(Self.scan(input, origin: .client, step: 64, max: 1200).violation)
    }

    // MARK: Against NIO's decoder

    /// The data messages and Close codes NIO's decoder reads from the same bytes, or nil if it refuses them.
    static func nio(_ input: [UInt8]) -> (messages: [[UInt8]], closes: [UInt16?])? {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try? channel.pipeline.syncOperations.addHandler(
            ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
        do {
            try channel.writeInbound(ByteBuffer(bytes: input))
        } catch {
            return nil
        }
        var messages: [[UInt8]] = []
        var closes: [UInt16?] = []
        var current: [UInt8]?
        while let frame = try? channel.readInbound(as: WebSocketFrame.self) {
            switch frame.opcode {
            case .text, .binary:
                current = Array(frame.unmaskedData.readableBytesView)
                if frame.fin, let done = current {
                    messages.append(done)
                    current = nil
                }
            case .continuation:
                current? += Array(frame.unmaskedData.readableBytesView)
                if frame.fin, let done = current {
                    messages.append(done)
                    current = nil
                }
            case .connectionClose:
                var data = frame.unmaskedData
                closes.append(data.readInteger(as: UInt16.self))
            default:
                break
            }
        }
        return (messages, closes)
    }

    func testWhereverTheScannerPassesAWholeInputNIOReadsTheSameMessages() {
        var generator = SystemRandomNumberGenerator()
        var agreed = 0
        var refused = 0
        for round in 0..<1000 {
            var input: [UInt8] = []
            var inMessage = false
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                let payload = (0..<[0, 1, 5, 125, 126, 300, 9_000].randomElement(using: &generator)!).map {
                    UInt8(truncatingIfNeeded: $0 &* 31 &+ round)
                }
                let mask = UInt32.random(in: 1...UInt32.max, using: &generator)
                switch Int.random(in: 0..<5, using: &generator) {
                case 0:
                    input += Self.frame(opcode: 9, payload: Array(payload.prefix(125)), mask: mask)
                case 1 where inMessage:
                    let fin = Bool.random(using: &generator)
                    input += Self.frame(opcode: 0, fin: fin, payload: payload, mask: mask)
                    inMessage = !fin
                case 2 where !inMessage:
                    input += Self.frame(opcode: 8, payload: [0x0F, 0xA0] + Array(payload.prefix(10)), mask: mask)
                case _ where !inMessage:
                    let fin = Bool.random(using: &generator)
                    input += Self.frame(
                        opcode: UInt8.random(in: 1...2, using: &generator), fin: fin, payload: payload, mask: mask)
                    inMessage = !fin
                default:
                    input += Self.frame(opcode: 0, fin: true, payload: payload, mask: mask)
                    inMessage = false
                }
            }
            // Mangle one byte in a third of the rounds.
            if round % 3 == 0 {
                let at = Int.random(in: 0..<input.count, using: &generator)
                input[at] = UInt8.random(in: 0...255, using: &generator)
            }
            let ours = Self.scan(input, origin: .client, step: Int.random(in: 1...512, using: &generator))
            guard ours.violation == nil, ours.forwarded == input else {
                refused += 1
                continue
            }
            guard let reference = Self.nio(input) else {
                return XCTFail("round \(round): the scanner passed an input NIO's decoder refuses")
            }
            // A mangled length may leave the last frame unfinished: then both have read the same so far.
            XCTAssertEqual(ours.messages, reference.messages, "round \(round)")
            XCTAssertEqual(ours.closes, reference.closes, "round \(round)")
            agreed += 1
        }
        XCTAssertGreaterThan(agreed, 500)
        XCTAssertGreaterThan(refused, 0)
    }

    func testUsageEventsAreRecognisedByTheirFirstBytes() {
        XCTAssertTrue(RealtimeEventScan.carriesUsage(Array(#"{"type":"response.done","event_id":"e"}"#.utf8)))
        XCTAssertTrue(RealtimeEventScan.carriesUsage(Array(#"{"event_id":"e", "type" : "error","error":{}}"#.utf8)))
        XCTAssertFalse(RealtimeEventScan.carriesUsage(Array(#"{"type":"response.output_audio.delta"}"#.utf8)))
        XCTAssertFalse(RealtimeEventScan.carriesUsage(Array(#"{"typed":"response.done"}"#.utf8)))
        XCTAssertFalse(RealtimeEventScan.carriesUsage(Array(#"{"type":"respo"#.utf8)))
    }

    func testCapturePastTheCapKeepsOnlyUsageEvents() {
        var capture = WebSocketMessageCapture(maxCaptureBytes: 300, keepsUsageEvents: true)
        func message(_ text: String) -> WebSocketMessageCapture.Message {
            capture.start(opcode: 1)
            let bytes = Array(text.utf8)
            bytes.withUnsafeBytes { capture.append($0, mask: 0, maskOffset: 0) }
            return capture.end()
        }
        let delta = #"{"type":"response.output_audio.delta","delta":""# + String(repeating: "A", count: 250) + #""}"#
        let done =
            #"{"type":"response.done","response":{"usage":{"input_tokens":5}},"pad":""#
            + String(repeating: "x", count: 400) + #""}"#
        XCTAssertEqual(message(delta).data.count, delta.utf8.count, "within the cap: whole")
        let cut = message(delta)
        XCTAssertEqual(cut.data.count, 300 - delta.utf8.count, "the rest of the cap")
        XCTAssertEqual(cut.size, UInt64(delta.utf8.count))
        XCTAssertEqual(message(delta).data.count, 0, "past the cap: only its size")
        XCTAssertEqual(
            message(done).data, Array(done.utf8).prefix(300).map { $0 }, "a usage event, past the cap, up to the cap")
        XCTAssertEqual(capture.messages, 4)
    }
}
