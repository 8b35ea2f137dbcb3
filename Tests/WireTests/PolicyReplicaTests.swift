import Foundation
import XCTest

@testable import Wire

final class PolicyReplicaTests: XCTestCase {
    private func key(_ id: String, revoked: Bool = false) -> PolicyKey {
        var key = PolicyKey()
        key.keyID = id
        key.projectID = "p"
        key.secretSha256 = Data(repeating: 7, count: 32)
        key.revoked = revoked
        return key
    }

    private func message(
        collector: String = "c1", version: UInt64, base: UInt64, full: Bool = false, keys: [PolicyKey] = []
    ) -> PolicyMessage {
        var message = PolicyMessage()
        message.collectorID = collector
        message.version = version
        message.baseVersion = base
        message.full = full
        message.keys = keys
        return message
    }

    func testChangesApplyOnlyOnTheirBaseAndGapsAskForASnapshot() {
        var replica = PolicyReplica()
        XCTAssertEqual(
            replica.apply(message(version: 4, base: 3, keys: [key("a")])), .needsSnapshot,
            "a change before any snapshot")
        XCTAssertFalse(replica.hasSnapshot)
        XCTAssertEqual(replica.apply(message(version: 4, base: 0, full: true, keys: [key("a")])), .applied)
        XCTAssertEqual(replica.apply(message(version: 4, base: 4)), .unchanged, "a beat at the same version")
        XCTAssertEqual(replica.apply(message(version: 5, base: 4, keys: [key("a", revoked: true)])), .applied)
        XCTAssertEqual(replica.keys["a"]?.revoked, true)
        XCTAssertEqual(replica.apply(message(version: 5, base: 4)), .unchanged, "seen already")
        XCTAssertEqual(
            replica.apply(message(version: 7, base: 6, keys: [key("b")])), .needsSnapshot, "version 6 was missed")
        XCTAssertNil(replica.keys["b"])
        XCTAssertEqual(replica.apply(message(version: 9, base: 9)), .needsSnapshot, "a beat ahead of us")
        XCTAssertEqual(
            replica.apply(message(collector: "c2", version: 1, base: 1)), .needsSnapshot, "the collector restarted")
        XCTAssertEqual(replica.version, 5)
    }

    func testPolicyFramesRefuseWhatIsNotOne() throws {
        var message = PolicyMessage()
        message.collectorID = "c"
        let frame = try PolicyFrame.encode(message)
        XCTAssertEqual(try PolicyFrame.decode(frame).get().collectorID, "c")
        for (bad, rejection) in [
            ([UInt8](), FrameRejection.emptyFrame), (Array("LTW\u{1}".utf8), .badMarker),
            (Array("LTP".utf8) + [9], .unsupportedVersion), (PolicyFrame.header + [0xFF, 0xFF, 0xFF], .undecodable),
            (Array(frame.dropLast()) + [0x0A, 0x80], .undecodable),
        ] {
            guard case .failure(let error) = PolicyFrame.decode(bad) else { return XCTFail("\(bad) decoded") }
            XCTAssertEqual(error.rejection, rejection, "\(bad)")
        }
    }
}
