import Foundation
import SwiftProtobuf
import TestSupport
import XCTest

@testable import Wire

/// Numbers from outside never trap, and bytes that are not UTF-8 never cost a record.
final class CheckedNumbersTests: XCTestCase {
    func testConversionsFromDoubleAreTotal() {
        for value in [
            Double.nan, .infinity, -.infinity, 1e400, -1e400, 9.3e18, -9.3e18,
            Double.greatestFiniteMagnitude,
        ] {
            XCTAssertNil(Int64(checkedTruncating: value), "\(value)")
            XCTAssertNil(Int(checkedTruncating: value), "\(value)")
        }
        XCTAssertNil(UInt32(checkedTruncating: -1))
        XCTAssertNil(UInt32(checkedTruncating: 4_294_967_296))
        XCTAssertEqual(UInt32(checkedTruncating: 4_294_967_295.9), 4_294_967_295)
        XCTAssertEqual(Int64(checkedTruncating: -2.7), -2)
        XCTAssertEqual(Int64(checkedTruncating: 9.2e18), 9_200_000_000_000_000_000)
        XCTAssertEqual(Int64(clampingFinite: .infinity), .max)
        XCTAssertEqual(Int64(clampingFinite: -.infinity), .min)
        XCTAssertEqual(Int64(clampingFinite: .nan), 0)
        XCTAssertEqual(Int64(clampingFinite: 1e300), .max)
        XCTAssertEqual(Int64(clampingFinite: 42.9), 42)
    }

    func testArithmeticClampsInsteadOfTrapping() {
        XCTAssertEqual(UInt64.max.addingClamped(1), .max)
        XCTAssertEqual(Int64.max.addingClamped(1), .max)
        XCTAssertEqual(Int64.min.addingClamped(-1), .min)
        XCTAssertEqual(Int64(5).addingClamped(-7), -2)
        XCTAssertEqual(Int64.max.multipliedClamped(by: 2), .max)
        XCTAssertEqual(Int64.max.multipliedClamped(by: -2), .min)
        XCTAssertEqual(Int64(6).multipliedClamped(by: 7), 42)
    }

    func testEnvironmentValuesThatCantBeReadAreReportedByName() {
        _ = EnvironmentSettings.drainProblems()
        let environment = [
            "A_INT": "12x", "A_RANGE": "0", "A_SECONDS": "inf", "A_NAN": "nan", "A_FLAG": "maybe",
            "A_MODE": "sideways",
            "OK_INT": " 7 ", "OK_SECONDS": "2.5", "OK_FLAG": "true",
        ]
        enum Mode: String, CaseIterable { case reverse, mitm }
        XCTAssertEqual(EnvironmentSettings.int("A_INT", 3, environment: environment), 3)
        XCTAssertEqual(EnvironmentSettings.int("A_RANGE", 3, in: 1...10, environment: environment), 3)
        XCTAssertEqual(EnvironmentSettings.seconds("A_SECONDS", 4, environment: environment), 4)
        XCTAssertEqual(EnvironmentSettings.seconds("A_NAN", 4, environment: environment), 4)
        XCTAssertFalse(EnvironmentSettings.flag("A_FLAG", environment: environment))
        XCTAssertEqual(
            EnvironmentSettings.choice("A_MODE", Mode.reverse, environment: environment), .reverse)
        let problems = EnvironmentSettings.drainProblems()
        XCTAssertEqual(problems.count, 6, "\(problems)")
        for name in ["A_INT", "A_RANGE", "A_SECONDS", "A_NAN", "A_FLAG", "A_MODE"] {
            XCTAssertTrue(
                problems.contains { $0.hasPrefix(name) && $0.contains("not \"") }, "\(name): \(problems)")
        }
        XCTAssertEqual(EnvironmentSettings.int("OK_INT", 3, environment: environment), 7)
        XCTAssertEqual(EnvironmentSettings.seconds("OK_SECONDS", 4, environment: environment), 2.5)
        XCTAssertTrue(EnvironmentSettings.flag("OK_FLAG", environment: environment))
        XCTAssertEqual(EnvironmentSettings.int("UNSET", 3, environment: environment), 3)
        XCTAssertTrue(EnvironmentSettings.drainProblems().isEmpty)
        XCTAssertNoThrow(try EnvironmentSettings.check())
    }

    func testDurationsAreFinitePositiveAndBounded() throws {
        XCTAssertEqual(try EnvironmentSettings.nanoseconds(1.5, option: "--x"), 1_500_000_000)
        XCTAssertEqual(try EnvironmentSettings.nanoseconds(0, option: "--x", allowZero: true), 0)
        for bad in [0, -1, .nan, .infinity, 1e300, EnvironmentSettings.maximumSeconds + 1] as [Double] {
            XCTAssertThrowsError(try EnvironmentSettings.nanoseconds(bad, option: "--upstream-timeout")) {
                error in
                XCTAssertTrue("\(error)".contains("--upstream-timeout"), "\(error)")
            }
        }
    }
}

final class WireTextTests: XCTestCase {
    private let latin1: [UInt8] = Array("Jos".utf8) + [0xE9]

    func testUTF8CheckAgreesWithTheStandardLibrary() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<40 {
            for _ in 0..<200 {
                // Mostly ASCII, with a few high bytes: every path through the fast check.
                let bytes = (0..<length).map { _ in
                    UInt8.random(in: 0...255, using: &generator) & (Bool.random() ? 0x7F : 0xFF)
                }
                let expected = String(validating: bytes, as: UTF8.self) != nil
                XCTAssertEqual(bytes.withUnsafeBytes { WireText.isValidUTF8($0) }, expected, "\(bytes)")
            }
        }
    }

    /// A header value with obs-text is carried readable in `value` and exact in `raw_value`,
    /// byte for byte what SwiftProtobuf writes for that message.
    func testAHeaderValueThatIsNotUTF8TravelsWhole() throws {
        struct Fields: RecordHeaderFields {
            let pairs: [([UInt8], [UInt8])]
            func forEachField(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
                for (name, value) in pairs {
                    name.withUnsafeBytes { n in value.withUnsafeBytes { body(n, $0) } }
                }
            }
        }
        let fields = Fields(pairs: [
            (Array("x-user".utf8), latin1), (Array("x-ok".utf8), Array("José".utf8)),
        ])
        var request = RequestFields()
        request.exchangeID = "e1"
        let record = EncodedRecord.request(
            request, headers: fields, isSecret: { _ in false },
            body: UnsafeRawBufferPointer(start: nil, count: 0))
        var expected = WireRequest()
        expected.exchangeID = "e1"
        var first = WireHeader()
        first.name = "x-user"
        first.value = "Jos\u{FFFD}"
        first.rawValue = Data(latin1)
        var second = WireHeader()
        second.name = "x-ok"
        second.value = "José"
        expected.headers = [first, second]
        XCTAssertEqual(record.bytes, try expected.serializedBytes() as [UInt8])
        guard case .request(let decoded) = try record.decoded() else { return XCTFail("not a request") }
        XCTAssertEqual(decoded.headers[0].rawValue, Data(latin1))
        XCTAssertEqual(decoded.headers[1].rawValue, Data())
    }

    /// A record from a producer that put raw bytes in string fields (an older sidecar): read with
    /// U+FFFD, flagged, and everything else in it kept.
    func testARecordWithInvalidUTF8InStringFieldsStillDecodes() throws {
        var request = WireRequest()
        request.exchangeID = "exchange-7"
        request.path = "/v1/chat/completions"
        request.bodySize = 99
        request.body = Data("{}".utf8)
        request.headers = [
            SampleRecords.header("x-user", "PLACEHOLDER"),
            SampleRecords.header("content-type", "application/json"),
        ]
        var bytes: [UInt8] = try request.serializedBytes()
        // Put the Latin-1 bytes where the placeholder was, fixing the lengths around it.
        let placeholder = Array("PLACEHOLDER".utf8)
        let at = try XCTUnwrap(bytes.indices.first { bytes[$0...].starts(with: placeholder) })
        bytes.replaceSubrange(at..<at + placeholder.count, with: latin1)
        let shrink = UInt8(placeholder.count - latin1.count)
        bytes[at - 1] -= shrink // the value's length
        bytes[at - 11] -= shrink // the header message's length: before its tag, name and value tag
        XCTAssertThrowsError(try WireRequest(serializedBytes: bytes), "SwiftProtobuf refuses it")

        var envelope = Envelope()
        envelope.sidecarID = "s"
        envelope.bootID = "b"
        envelope.seq = 1
        envelope.request = WireRequest()
        var frame = try WireFrame.encode(envelope)
        // Replace the (empty) request field with the broken one.
        frame.removeLast(2)
        frame += [0x52] + varint(bytes.count) + bytes
        var decoder = EnvelopeDecoder()
        let decoded = try frame.withUnsafeBytes { try decoder.decode($0).get() }
        XCTAssertTrue(decoded.textRepaired)
        guard case .request(let read) = decoded.record else { return XCTFail("not a request") }
        XCTAssertEqual(read.exchangeID, "exchange-7")
        XCTAssertEqual(read.bodySize, 99)
        XCTAssertEqual(read.body, Data("{}".utf8))
        XCTAssertEqual(read.headers.map(\.value), ["Jos\u{FFFD}", "application/json"])
    }

    private func varint(_ value: Int) -> [UInt8] {
        var value = UInt64(value)
        var out: [UInt8] = []
        while value >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        return out + [UInt8(value)]
    }
}
