import Foundation
import NIOCore
import NIOHTTP1
import TestSupport
import XCTest

@testable import Sidecar

/// The sidecar's parsers as fuzz targets (`Fuzzing`): `client-request`, `upstream-response`,
/// `chunked-body`, `model-scanner`, `websocket-frames`. Each traps when an invariant fails, naming it.
///
/// The first input byte of the HTTP targets picks where the rest is cut into reads: every target
/// checks that the verdict is the same cut or whole.
final class SidecarFuzzTargets: XCTestCase {
    func testClientRequest() throws {
        let seeds =
            ClientRequestParserDifferentialTests.bases.map { [0x00] + Array($0.utf8) } + [
                [0x07]
                    + Array(
                        "POST / HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n{}".utf8),
                [0x13] + Array("GET / HTTP/1.1\r\nHost: h\r\nX-User: Jos\u{E9}\r\n\r\n".utf8) + [0xE9],
                [0x21]
                    + Array(
                        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\n{}\r\n0\r\n\r\n".utf8),
                // What libFuzzer found: bytes past ASCII in a chunk extension, and a list element left empty.
                [0x21] + Array("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;a".utf8)
                    + Array(repeating: 0xB5, count: 12)
                    + Array("=bZZ\r\n{}\r\n0\r\n\r\n".utf8),
                [0x00]
                    + Array(
                        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\n{}\r\n0\r\n\r\n".utf8),
                [0x00]
                    + Array(
                        "POST /v1/messages HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x4444-Le:44=y\r\n world\r\n0\r\n\r\n"
                            .utf8),
            ]
        try Fuzzing.run("client-request", seeds: seeds) { data in
            guard let first = data.first else { return }
            let input = Array(data.dropFirst())
            let whole = Self.client(input, cuts: [])
            let cut = Self.client(input, cuts: Fuzzing.cuts(first, input.count))
            fuzzCheck(
                whole == cut, "the request parser's verdict depends on how the bytes are split: \(whole) vs \(cut)")
            if input.count <= 4096, let disagreement = RequestDifferential.disagreement(input) {
                fatalError(
                    "the request parser and llhttp disagree: \(disagreement) on \(String(decoding: input, as: UTF8.self).debugDescription)"
                )
            }
        }
    }

    /// `websocket-frames`: the first byte picks the reads (and, by its top bit, whose frames these
    /// are); the verdict, what goes on and the messages tapped must not depend on the reads, what
    /// goes on is always a prefix of the input, and an input let through whole reads as NIO's
    /// decoder reads it.
    func testWebSocketFrames() throws {
        func frame(_ opcode: UInt8, _ fin: Bool, _ payload: [UInt8], _ mask: UInt32, _: UInt8, _: Bool) -> [UInt8] {
            WebSocketFrameScannerTests.frame(opcode: opcode, fin: fin, payload: payload, mask: mask)
        }
        let seeds: [[UInt8]] = [
            [0x03] + frame(1, true, Array("hello".utf8), 0x0102_0304, 0, false),
            [0x05] + frame(2, false, Array(repeating: 7, count: 300), 0xA0B0_C0D0, 0, false)
                + frame(9, true, [], 0x1111_1111, 0, false) + frame(0, true, [1, 2, 3], 0x2222_2222, 0, false),
            [0x81] + frame(1, true, Array(#"{"type":"response.done"}"#.utf8), 0, 0, false)
                + frame(8, true, [3, 232], 0, 0, false),
            [0x00] + frame(1, true, [65], 0, 0, false),
        ]
        try Fuzzing.run("websocket-frames", seeds: seeds) { data in
            guard let first = data.first else { return }
            let input = Array(data.dropFirst())
            let origin: WebSocketFrameScanner.Origin = first & 0x80 == 0 ? .client : .server
            let whole = WebSocketFrameScannerTests.scan(input, origin: origin, step: max(1, input.count), max: 1 << 16)
            let cut = WebSocketFrameScannerTests.scan(input, origin: origin, step: Int(first & 0x3F) + 1, max: 1 << 16)
            fuzzCheck(whole == cut, "the frame scanner's reading depends on how the bytes are split")
            fuzzCheck(
                Array(input.prefix(whole.forwarded.count)) == whole.forwarded,
                "the frame scanner let through bytes that are not the input's")
            if origin == .client, whole.violation == nil, whole.forwarded == input,
                let reference = WebSocketFrameScannerTests.nio(input)
            {
                fuzzCheck(
                    reference.messages == whole.messages && reference.closes == whole.closes,
                    "the frame scanner and NIO's decoder read different messages")
            }
        }
    }

    func testUpstreamResponse() throws {
        let seeds: [[UInt8]] = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n",
            "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\nContent-Length: 2\nConnection: close\n\nok",
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n12\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n",
        ].map { [0x05] + Array($0.utf8) }
        try Fuzzing.run("upstream-response", seeds: seeds) { data in
            guard let first = data.first else { return }
            let input = Array(data.dropFirst())
            let whole = Self.response(input, cuts: [])
            let cut = Self.response(input, cuts: Fuzzing.cuts(first, input.count))
            fuzzCheck(
                whole == cut, "the response parser's verdict depends on how the bytes are split: \(whole) vs \(cut)")
            fuzzCheck(whole.bodyBytes <= input.count, "the response parser gave more body than it was given")
        }
    }

    func testChunkedBody() throws {
        let seeds: [[UInt8]] = [
            "5\r\nhello\r\n0\r\n\r\n", "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n",
            "fffffffffffffff\r\n", "0\r\n\r\n", "2\nok\n0\n\n",
        ].flatMap { [[0x00] + Array($0.utf8), [0x01] + Array($0.utf8)] }
        try Fuzzing.run("chunked-body", seeds: seeds) { data in
            guard let first = data.first else { return }
            let input = Array(data.dropFirst())
            let strict = first & 1 == 1
            let whole = Self.chunked(input, strict: strict, cuts: [])
            let cut = Self.chunked(input, strict: strict, cuts: Fuzzing.cuts(first >> 1, input.count))
            fuzzCheck(
                whole == cut, "the chunked reader's verdict depends on how the bytes are split: \(whole) vs \(cut)")
            fuzzCheck(whole.body.count <= input.count, "the chunked reader gave more body than it was given")
        }
    }

    /// The scanner must never name a model the upstream's JSON parser would read differently.
    func testModelScanner() throws {
        let seeds: [[UInt8]] = [
            #"{"model":"gpt-4o"}"#,
            #"{"messages":[{"role":"user","content":"{\"model\":\"x\"}"}],"model":"gpt-4o-mini"}"#,
            #"{"model":"a","model":"b"}"#, #"{"mod\u0065l":"gpt-4o"}"#, #"{"model":"\ud83d\ude00"}"#,
            #"{"a":[1,2,{"b":null}],"model":"m"}"#,
        ].map { Array($0.utf8) }
        try Fuzzing.run("model-scanner", seeds: seeds) { data in
            let bytes = Array(data)
            guard case .model(let model) = ModelScanner.topLevelModel(bytes) else { return }
            guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
                // Not JSON to a real parser either: the upstream refuses it.
                return
            }
            fuzzCheck(
                object["model"] as? String == model,
                "the model scanner read \(model.debugDescription) where JSON says \(String(describing: object["model"]))"
            )
        }
    }

    // MARK: Running the parsers

    struct Verdict: Equatable {
        var events: [String] = []
        var error: String?
        var bodyBytes = 0
    }

    static func client(_ input: [UInt8], cuts: [Int]) -> Verdict {
        var parser = ClientRequestParser(maxHeadBytes: 2048)
        var verdict = Verdict()
        var body: [UInt8] = []
        do {
            for read in Fuzzing.reads(input, cuts: cuts) {
                parser.receive(ByteBuffer(bytes: read))
                while let event = try parser.next() {
                    switch event {
                    case .head(let head):
                        verdict.events.append("head \(head.method.rawValue) \(head.uri) \(head.headers.count)")
                    case .body(let buffer): body += buffer.readableBytesView
                    case .end:
                        verdict.events.append("body \(body.count) \(body.hashValue) end")
                        verdict.bodyBytes += body.count
                        body = []
                    }
                }
                fuzzCheck(parser.bufferedBytes <= input.count, "the request parser holds more than it was given")
            }
        } catch {
            verdict.error = "\(error.status.code) \(error)"
        }
        return verdict
    }

    static func response(_ input: [UInt8], cuts: [Int]) -> Verdict {
        var parser = UpstreamResponseParser(maxHeadBytes: 2048)
        parser.expectResponse(toHEAD: false)
        var verdict = Verdict()
        var body: [UInt8] = []
        do {
            for read in Fuzzing.reads(input, cuts: cuts) {
                parser.receive(ByteBuffer(bytes: read))
                while let event = try parser.next() {
                    switch event {
                    case .head(let head):
                        var out = ByteBuffer()
                        HeaderRules.writeClientResponseHead(
                            head, exchangeID: "e", framing: .chunked, close: false, version: .http1_1, into: &out)
                        verdict.events.append("head \(head.status.code) \(head.framing) \(out.readableBytes)")
                    case .body(let buffer): body += buffer.readableBytesView
                    case .end:
                        verdict.events.append("body \(body.count) \(body.hashValue) end")
                        verdict.bodyBytes += body.count
                        body = []
                        parser.expectResponse(toHEAD: false)
                    }
                }
            }
            if let event = try parser.endOfInput(), case .end = event {
                verdict.events.append("body \(body.count) \(body.hashValue) end at close")
                verdict.bodyBytes += body.count
            }
        } catch {
            verdict.error = "\(error)"
        }
        return verdict
    }

    struct ChunkedVerdict: Equatable {
        var body: [UInt8] = []
        var ended = false
        var error: String?
    }

    static func chunked(_ input: [UInt8], strict: Bool, cuts: [Int]) -> ChunkedVerdict {
        var reader = BodyReader(.chunked, strictLineEndings: strict)
        var pending = ByteBuffer()
        var verdict = ChunkedVerdict()
        do {
            for read in Fuzzing.reads(input, cuts: cuts) where !verdict.ended {
                pending.writeBytes(read)
                reading: while true {
                    switch try reader.next(from: &pending) {
                    case .body(let buffer): verdict.body += buffer.readableBytesView
                    case .end:
                        verdict.ended = true
                        break reading
                    case .needMore: break reading
                    }
                }
            }
        } catch {
            verdict.error = error.description
        }
        return verdict
    }
}
