import Foundation
import TestSupport
import XCTest

@testable import Wire

final class ZMQSocketTests: XCTestCase {
    func testMultipartPushPullOverTCPAndIPC() throws {
        let ipcPath = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-\(UUID().uuidString).sock")
            .path
        defer { try? FileManager.default.removeItem(atPath: ipcPath) }
        for endpoint in ["tcp://127.0.0.1:*", "ipc://\(ipcPath)"] {
            let context = try ZMQContext()
            let pull = try ZMQSocket(context: context, kind: .pull)
            try pull.set(.linger(milliseconds: 0))
            try pull.bind(endpoint)
            let push = try ZMQSocket(context: context, kind: .push)
            try push.set(.linger(milliseconds: 0))
            try push.set(.sendHighWaterMark(100))
            try push.connect(try pull.lastEndpoint())
            let frames: [[UInt8]] = [Array("topic".utf8), [], [UInt8](repeating: 7, count: 100_000)]
            XCTAssertTrue(try push.send(multipart: frames))
            XCTAssertEqual(try pull.receiveMultipart(timeoutMilliseconds: 5_000), frames, endpoint)
            XCTAssertNil(try pull.receiveMultipart(timeoutMilliseconds: 20), "nothing else was sent")
        }
    }

    func testPubSubDeliversOnlySubscribedPrefixes() throws {
        let context = try ZMQContext()
        let pub = try ZMQSocket(context: context, kind: .pub)
        try pub.set(.linger(milliseconds: 0))
        try pub.bind("tcp://127.0.0.1:*")
        let sub = try ZMQSocket(context: context, kind: .sub)
        try sub.set(.linger(milliseconds: 0))
        try sub.set(.subscribe(Array("keys.".utf8)))
        try sub.connect(try pub.lastEndpoint())
        // A subscription takes a moment to reach the publisher: publish until one arrives.
        var received: [[UInt8]]?
        XCTAssertTrue(
            try eventually {
                try pub.send(multipart: [Array("budget.x".utf8), [1]])
                try pub.send(multipart: [Array("keys.a".utf8), [2]])
                received = try sub.receiveMultipart(timeoutMilliseconds: 10)
                return received != nil
            })
        XCTAssertEqual(received?.first, Array("keys.a".utf8))
        try sub.set(.unsubscribe(Array("keys.".utf8)))
    }

    func testANonBlockingSendWithNoPeerReturnsFalse() throws {
        let context = try ZMQContext()
        let push = try ZMQSocket(context: context, kind: .push)
        try push.set(.linger(milliseconds: 0))
        try push.set(.immediate(true))
        try push.connect("tcp://127.0.0.1:\(try freeTCPPort())")
        XCTAssertFalse(try push.send(Array("x".utf8), dontWait: true))
        XCTAssertEqual(try push.poll(.writable, timeoutMilliseconds: 10), [])
    }

    func testErrorsCarryLibzmqsOwnWords() throws {
        let context = try ZMQContext()
        let socket = try ZMQSocket(context: context, kind: .pull)
        try socket.set(.linger(milliseconds: 0))
        XCTAssertThrowsError(try socket.bind("nonsense")) { error in
            let error = error as! ZMQError
            XCTAssertEqual(error.code, EINVAL)
            XCTAssertEqual(error.description, "zmq_bind(nonsense) failed: Invalid argument (errno \(EINVAL))")
        }
        XCTAssertThrowsError(try socket.bind("bogus://x")) { error in
            XCTAssertEqual((error as! ZMQError).code, EPROTONOSUPPORT)
        }
        try socket.bind("tcp://127.0.0.1:*")
        let taken = try socket.lastEndpoint()
        let other = try ZMQSocket(context: context, kind: .pull)
        try other.set(.linger(milliseconds: 0))
        XCTAssertThrowsError(try other.bind(taken)) { error in
            XCTAssertTrue("\(error)".contains("Address already in use"), "\(error)")
        }
        socket.close()
        XCTAssertThrowsError(try socket.bind("tcp://127.0.0.1:*")) { error in
            XCTAssertEqual((error as! ZMQError).code, ENOTSOCK, "a closed socket says so instead of crashing")
        }
    }

    func testReceiveTimesOutWithNil() throws {
        let context = try ZMQContext()
        let pull = try ZMQSocket(context: context, kind: .pull)
        try pull.set(.linger(milliseconds: 0))
        try pull.set(.receiveHighWaterMark(10))
        try pull.set(.maxMessageSize(1024))
        try pull.set(.reconnectInterval(milliseconds: 50))
        try pull.set(.reconnectIntervalMax(milliseconds: 500))
        try pull.bind("tcp://127.0.0.1:*")
        XCTAssertNil(try pull.receiveMultipart(timeoutMilliseconds: 30))
        XCTAssertNil(try pull.receiveMultipart(dontWait: true))
    }
}
