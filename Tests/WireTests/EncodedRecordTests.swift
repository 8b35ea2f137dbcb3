import Foundation
import SwiftProtobuf
import XCTest

@testable import Wire

/// The hand-written record encoder must write, byte for byte, what SwiftProtobuf writes for the
/// same message: the collector and every other consumer decode with protobuf libraries.
final class EncodedRecordTests: XCTestCase {
    private let headers: [(name: String, value: String)] = [
        ("Content-Type", "application/json"), ("Authorization", "Bearer sk-secret"), ("x-empty", ""),
        ("x-ünïcode", "välue ✓"), ("x-long", String(repeating: "v", count: 300)),
    ]
    private func isSecret(_ name: String) -> Bool { name.lowercased() == "authorization" }
    private func isSecret(_ name: UnsafeRawBufferPointer) -> Bool { isSecret(String(decoding: name, as: UTF8.self)) }

    private func wireHeaders() -> [WireHeader] {
        headers.map { name, value in
            var header = WireHeader()
            header.name = name
            header.value = isSecret(name) ? EncodedRecord.redactedValue : value
            return header
        }
    }

    func testRequestsMatchSwiftProtobuf() throws {
        for (fields, body) in [(RequestFields(), [UInt8]()), (fullRequest(), Array(repeating: 0x7B, count: 20_000))] {
            var expected = WireRequest()
            expected.exchangeID = fields.exchangeID
            expected.ingress = fields.ingress
            expected.method = fields.method
            expected.scheme = fields.scheme
            expected.host = fields.host
            expected.path = fields.path
            expected.clientAddress = fields.clientAddress
            expected.app = fields.app
            expected.tenant = fields.tenant
            expected.startUnixNanos = fields.startUnixNanos
            expected.body = Data(body)
            expected.bodySize = fields.bodySize
            expected.bodyTruncated = fields.bodyTruncated
            expected.httpVersion = fields.httpVersion
            expected.keyID = fields.keyID
            expected.projectID = fields.projectID
            let withHeaders = !fields.exchangeID.isEmpty
            if withHeaders { expected.headers = wireHeaders() }
            let record = body.withUnsafeBytes {
                EncodedRecord.request(
                    fields, headers: StringHeaderFields(withHeaders ? headers : []), isSecret: isSecret, body: $0)
            }
            XCTAssertEqual(record.kind, .request)
            XCTAssertEqual(record.bytes, try expected.serializedBytes() as [UInt8])
        }
    }

    func testStreamChunksMatchSwiftProtobuf() throws {
        let cases: [(String, UInt64, Int64, UInt64, [UInt8])] = [
            ("", 0, 0, 0, []),
            ("ex-1", 1, 1_763_900_000_300_000_000, 127, Array("data: {}\n\n".utf8)),
            ("ex-ünï", UInt64.max, -1, UInt64.max, Array(repeating: 0, count: 70_000)),
        ]
        for (id, index, nanos, offset, data) in cases {
            var expected = WireStreamChunk()
            expected.exchangeID = id
            expected.direction = .response
            expected.index = index
            expected.data = Data(data)
            expected.unixNanos = nanos
            expected.offset = offset
            let record = data.withUnsafeBytes {
                EncodedRecord.streamChunk(
                    exchangeID: id, direction: .response, index: index, unixNanos: nanos, offset: offset, data: $0)
            }
            XCTAssertEqual(record.bytes, try expected.serializedBytes() as [UInt8], "chunk \(id) \(index)")
        }
    }

    func testResponseDonesMatchSwiftProtobuf() throws {
        var fields = ResponseDoneFields()
        fields.exchangeID = "ex-9"
        fields.status = 529
        fields.upstreamFirstByteUnixNanos = 1_763_900_000_300_000_000
        fields.endUnixNanos = -5
        fields.requestBytes = 1
        fields.responseBytes = 1 << 40
        fields.outcome = .upstreamError
        fields.error = "the upstream closed the connection before the response ended"
        fields.responseChunks = 300
        fields.responseTruncated = true
        fields.rejectReason = "budget_exceeded"
        fields.attempts = 2
        fields.provider = "openai-east"
        fields.providerKeyID = "0123456789abcdef"
        for (fields, withHeaders) in [(ResponseDoneFields(), false), (fields, true)] {
            var expected = WireResponseDone()
            expected.exchangeID = fields.exchangeID
            expected.status = fields.status
            if withHeaders { expected.headers = wireHeaders() }
            expected.upstreamFirstByteUnixNanos = fields.upstreamFirstByteUnixNanos
            expected.endUnixNanos = fields.endUnixNanos
            expected.requestBytes = fields.requestBytes
            expected.responseBytes = fields.responseBytes
            expected.outcome = fields.outcome
            expected.error = fields.error
            expected.responseChunks = fields.responseChunks
            expected.responseTruncated = fields.responseTruncated
            expected.rejectReason = fields.rejectReason
            expected.attempts = fields.attempts
            expected.provider = fields.provider
            expected.providerKeyID = fields.providerKeyID
            let record = EncodedRecord.responseDone(
                fields, headers: StringHeaderFields(withHeaders ? headers : []), isSecret: isSecret)
            XCTAssertEqual(record.bytes, try expected.serializedBytes() as [UInt8])
            XCTAssertEqual(try record.decoded(), .responseDone(expected))
        }
    }

    /// A framed encoded record is the same frame as the message framed by the I/O thread, so a
    /// receiver can't tell which way it was made.
    func testFramingAnEncodedRecordGivesTheSameFrame() throws {
        let encoder = try EnvelopeEncoder(sidecarID: "sidecar-a", bootID: "boot-1")
        let body = Array("{\"model\":\"gpt-4o-mini\"}".utf8)
        let encoded = body.withUnsafeBytes {
            EncodedRecord.request(fullRequest(), headers: StringHeaderFields(headers), isSecret: isSecret, body: $0)
        }
        let fromBytes = encoder.encode(seq: 300, sentUnixNanos: 42, droppedBefore: 2, record: encoded)
        let fromMessage = try encoder.encode(
            seq: 300, sentUnixNanos: 42, droppedBefore: 2, record: try encoded.decoded())
        defer {
            fromBytes.release()
            fromMessage.release()
        }
        XCTAssertEqual(fromBytes.bytes, fromMessage.bytes)
        var decoder = EnvelopeDecoder()
        let decoded = try fromBytes.bytes.withUnsafeBytes { try decoder.decode($0).get() }
        guard case .request(let request) = decoded.record else { return XCTFail("not a request") }
        XCTAssertEqual(request.headers.first { $0.name == "Authorization" }?.value, "[redacted]")
        XCTAssertFalse(
            fromBytes.bytes.containsSequence(Array("sk-secret".utf8)), "a secret header value reached the frame")
    }

    private func fullRequest() -> RequestFields {
        var fields = RequestFields()
        fields.exchangeID = "01JD-ex-1"
        fields.ingress = .reverse
        fields.method = "POST"
        fields.scheme = "https"
        fields.host = "api.openai.com"
        fields.path = "/v1/chat/completions?x=1"
        fields.clientAddress = "10.0.0.7:51234"
        fields.app = "billing-ünï"
        fields.tenant = "04773a73fa4db9f1"
        fields.startUnixNanos = 1_763_900_000_300_000_000
        fields.bodySize = 20_001
        fields.bodyTruncated = true
        fields.httpVersion = "HTTP/1.1"
        fields.keyID = "key_7f3a9c2e01b4"
        fields.projectID = "proj_billing"
        return fields
    }
}

extension Array where Element == UInt8 {
    func containsSequence(_ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return needle.isEmpty }
        return (0...(count - needle.count)).contains { self[$0..<$0 + needle.count].elementsEqual(needle) }
    }
}
