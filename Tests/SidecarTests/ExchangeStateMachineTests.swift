import NIOCore
import NIOHTTP1
import XCTest

@testable import Sidecar

/// The exchange state machine on its own: no channel, no clock, no socket. Every input is given
/// by hand, with the time it happens at.
final class ExchangeStateMachineTests: XCTestCase {
    /// The machine holds both as references, as the handler's are.
    final class Upstream: Equatable, CustomStringConvertible {
        let id: Int
        init(id: Int) { self.id = id }
        static func == (lhs: Upstream, rhs: Upstream) -> Bool { lhs.id == rhs.id }
        var description: String { "upstream \(id)" }
    }
    final class Tap: Equatable, ExpressibleByStringLiteral, CustomStringConvertible {
        let name: String
        init(stringLiteral name: String) { self.name = name }
        static func == (lhs: Tap, rhs: Tap) -> Bool { lhs.name == rhs.name }
        var description: String { name }
    }
    typealias Machine = ExchangeStateMachine<Upstream, Tap>

    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let target = try! UpstreamTarget(url: "http://127.0.0.1:9/v1")
    let limits = ExchangeLimits(
        upstreamTimeout: .seconds(600), clientTimeout: .seconds(75), maxModelCheckBytes: 64, maxPipelinedBytes: 1024)

    func machine() throws -> Machine {
        Machine(limits: limits, now: start)
    }

    let head = UpstreamRequestPart.head(ByteBuffer(string: "POST / HTTP/1.1\r\n\r\n"), chunked: false, isHEAD: false)
    let body = ByteBuffer(string: #"{"model":"gpt-4o"}"#)

    func at(_ seconds: Int64) -> NIODeadline { start + .seconds(seconds) }

    @discardableResult
    func begin(
        _ machine: inout Machine, tap: Tap = "x1", keepAlive: Bool = true, expectsContinue: Bool = false,
        admission: Machine.Admission? = nil, keyID: String = "", slot: Bool = false, at time: NIODeadline? = nil
    ) -> Machine.HeadAction {
        machine.requestHead(
            tap: tap, target: target, keepAlive: keepAlive, version: .http1_1, expectsContinue: expectsContinue,
            path: "/v1/chat/completions",
            keyID: keyID, holdsPolicySlot: slot, admission: admission ?? .forward(head: head), now: time ?? start)
    }

    /// One exchange through to its end, leaving the machine idle (or closing).
    func complete(_ machine: inout Machine, upstream: Upstream = Upstream(id: 1)) throws -> Machine.Completion {
        guard case .connect = begin(&machine) else { throw Failure("no connect") }
        guard case .none = machine.requestBody(body, now: start) else { throw Failure("body not buffered") }
        guard case .none = machine.requestEnd() else { throw Failure("end not buffered") }
        guard case .attach(let parts, _) = machine.upstreamConnected(upstream, now: start) else {
            throw Failure("not attached")
        }
        XCTAssertEqual(parts.count, 3)
        guard
            case .write(.asIs, false, _) = machine.upstreamHead(keepAlive: true, framing: .contentLength(2), now: start)
        else { throw Failure("head not written") }
        XCTAssertEqual(machine.upstreamBody(now: start), .asIs)
        return try XCTUnwrap(machine.upstreamEnd())
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    // MARK: WebSocket sessions

    func testASessionLastsAsLongAsItLikesButAClientThatStopsReadingEndsIt() throws {
        var machine = try machine()
        let upgrade = UpstreamRequestPart.head(
            ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"), chunked: false, isHEAD: false, upgrade: true)
        guard case .connect = begin(&machine, admission: .forward(head: upgrade)) else { return XCTFail("no connect") }
        guard case .none = machine.requestEnd() else { return XCTFail("end not buffered") }
        guard case .attach = machine.upstreamConnected(Upstream(id: 7), now: start) else {
            return XCTFail("not attached")
        }
        XCTAssertTrue(machine.upstreamSwitchedProtocols(now: start))
        XCTAssertTrue(machine.isTunnel)
        XCTAssertFalse(machine.takesRequestEvents)
        guard case .readIfWritable(let upstream) = machine.readDecision(bufferedBytes: 0) else { return XCTFail() }
        XCTAssertEqual(upstream, Upstream(id: 7))
        // An hour of silence is no reason to end it.
        guard case .none = machine.exchangeTimerFired(now: at(3600), readHeld: false) else { return XCTFail() }
        let (held, deadline) = machine.clientWritabilityChanged(isWritable: false, now: at(3600))
        XCTAssertEqual(held, Upstream(id: 7))
        XCTAssertEqual(deadline, at(3600 + 75))
        guard case .check(let next) = machine.exchangeTimerFired(now: at(3650), readHeld: true) else {
            return XCTFail()
        }
        XCTAssertEqual(next, at(3675))
        guard case .clientStoppedReading(let settlement) = machine.exchangeTimerFired(now: at(3675), readHeld: true)
        else { return XCTFail("the stalled client kept its session") }
        XCTAssertEqual(settlement.status, 101)
        XCTAssertEqual(settlement.outcome, .clientAborted)
        XCTAssertEqual(settlement.upstream, Upstream(id: 7))
        XCTAssertFalse(settlement.reusable)
    }

    func testASessionsEndSettlesItWithStatus101() throws {
        var machine = try machine()
        let upgrade = UpstreamRequestPart.head(
            ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"), chunked: false, isHEAD: false, upgrade: true)
        _ = begin(&machine, admission: .forward(head: upgrade), slot: true)
        XCTAssertFalse(machine.upstreamSwitchedProtocols(now: start), "no upstream yet")
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 2), now: start)
        XCTAssertTrue(machine.upstreamSwitchedProtocols(now: start))
        XCTAssertNil(machine.upstreamBody(now: start), "no HTTP input applies to a tunnel")
        let settlement = try XCTUnwrap(machine.tunnelEnded(outcome: .completed, error: ""))
        XCTAssertEqual(settlement.status, 101)
        XCTAssertEqual(settlement.outcome, .completed)
        XCTAssertNotNil(settlement.releasesSlotOf)
        XCTAssertNil(machine.tunnelEnded(outcome: .completed, error: ""), "once")
    }

    // MARK: Whole exchanges

    func testAFullExchangeSettlesAndLeavesTheUpstreamReusable() throws {
        var machine = try machine()
        XCTAssertTrue(machine.takesRequestEvents)
        let completion = try complete(&machine)
        XCTAssertEqual(completion.then, .next)
        XCTAssertEqual(completion.settlement.tap, "x1")
        XCTAssertEqual(completion.settlement.outcome, .completed)
        XCTAssertEqual(completion.settlement.upstream, Upstream(id: 1))
        XCTAssertTrue(completion.settlement.reusable)
        XCTAssertFalse(completion.chunked)
        XCTAssertNil(machine.tap)
        machine.becameIdle(now: at(3))
        XCTAssertEqual(machine.idleDeadline, at(3) + machine.limits.clientTimeout)
    }

    func testPipelinedRequestsWaitUntilTheExchangeBeforeEnds() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        // The next request waits in the parser: the machine takes no more events.
        XCTAssertFalse(machine.takesRequestEvents)
        guard case .read = machine.readDecision(bufferedBytes: 10) else { return XCTFail("reading stopped early") }
        guard case .hold = machine.readDecision(bufferedBytes: 1024) else { return XCTFail("unbounded pipelining") }
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.upstreamHead(keepAlive: true, framing: .chunked, now: start)
        let first = try XCTUnwrap(machine.upstreamEnd())
        XCTAssertEqual(first.then, .next)
        XCTAssertTrue(first.chunked)
        machine.becameIdle(now: start)
        XCTAssertTrue(machine.takesRequestEvents)
        guard case .connect = begin(&machine, tap: "x2") else { return XCTFail("the second request did not start") }
        XCTAssertEqual(machine.tap, "x2")
    }

    func testTheBodyStreamsOnceAttached() throws {
        var machine = try machine()
        begin(&machine)
        guard case .hold = machine.readDecision(bufferedBytes: 0) else { return XCTFail("read while connecting") }
        guard case .attach(let parts, let deadline) = machine.upstreamConnected(Upstream(id: 7), now: at(1)) else {
            return XCTFail("not attached")
        }
        XCTAssertEqual(parts.count, 1)
        XCTAssertEqual(deadline, at(76))
        guard case .readIfWritable(Upstream(id: 7)) = machine.readDecision(bufferedBytes: 0) else {
            return XCTFail("back-pressure does not follow the upstream")
        }
        guard case .forward(Upstream(id: 7)) = machine.requestBody(body, now: at(2)) else {
            return XCTFail("body not forwarded")
        }
        guard case .forward(Upstream(id: 7)) = machine.requestEnd() else { return XCTFail("end not forwarded") }
    }

    func testAResponseBeforeTheRequestEndedClosesTheConnection() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        guard case .write(_, true, _) = machine.upstreamHead(keepAlive: true, framing: .contentLength(2), now: start)
        else {
            return XCTFail("an early response must say close")
        }
        let completion = try XCTUnwrap(machine.upstreamEnd())
        XCTAssertEqual(completion.then, .close)
        XCTAssertFalse(completion.settlement.reusable, "an upstream with half a request sent can't be reused")
        XCTAssertFalse(machine.takesRequestEvents)
    }

    func testAnHTTP10ClientGetsABodyUntilClose() throws {
        var machine = try machine()
        _ = machine.requestHead(
            tap: "x", target: target, keepAlive: false, version: .http1_0, expectsContinue: false,
            path: "/v1/chat/completions", keyID: "", holdsPolicySlot: false, admission: .forward(head: head), now: start
        )
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        guard case .write(.untilClose, true, _) = machine.upstreamHead(keepAlive: true, framing: .chunked, now: start)
        else { return XCTFail("HTTP/1.0 can't be chunked") }
        XCTAssertEqual(try XCTUnwrap(machine.upstreamEnd()).then, .close)
    }

    func testAnUpstreamThatWillCloseIsNotReused() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.upstreamHead(keepAlive: false, framing: .contentLength(2), now: start)
        let completion = try XCTUnwrap(machine.upstreamEnd())
        XCTAssertFalse(completion.settlement.reusable)
        XCTAssertEqual(completion.then, .next, "the client's connection stays")
    }

    // MARK: Policy

    func testARefusalWhileTheBodyStillArrivesIsSentAtItsEnd() throws {
        var machine = try machine()
        let refusal = PolicyGate.refusal(.tooManyRequests, "rate_limited", "slow down", retryAfter: 3)
        guard case .awaitBody(false, let deadline) = begin(&machine, admission: .refuse(refusal), keyID: "k1") else {
            return XCTFail("refused before its body was read")
        }
        XCTAssertEqual(deadline, at(75))
        guard case .read = machine.readDecision(bufferedBytes: 0) else { return XCTFail("the body is not read") }
        guard case .none = machine.requestBody(body, now: at(1)) else { return XCTFail("the body is not dropped") }
        guard case .answer(let answer) = machine.requestEnd() else { return XCTFail("no answer at the body's end") }
        XCTAssertEqual(answer.response.status, .tooManyRequests)
        XCTAssertFalse(answer.close, "the connection stays usable after a refusal")
        XCTAssertEqual(answer.settlement?.outcome, .rejected)
        XCTAssertEqual(answer.settlement?.status, 429)
        XCTAssertEqual(answer.settlement?.rejectReason, "rate_limited")
        XCTAssertNil(answer.settlement?.upstream)
        guard case .policy("k1") = answer.reason else { return XCTFail("wrong reason \(answer.reason)") }
    }

    func testARefusalOfAClientThatExpectsContinueIsSentAtOnceAndCloses() throws {
        var machine = try machine()
        let refusal = PolicyGate.refusal(.unauthorized, "unknown_key", "no such key")
        guard case .answer(let answer) = begin(&machine, expectsContinue: true, admission: .refuse(refusal)) else {
            return XCTFail("a client waiting for 100 must be answered now")
        }
        XCTAssertTrue(answer.close)
        XCTAssertFalse(machine.takesRequestEvents)
    }

    func testAModelCheckForwardsAnAllowedModelWithTheWholeRequest() throws {
        var machine = try machine()
        guard
            case .awaitBody(true, _) = begin(
                &machine, expectsContinue: true, admission: .checkModel(head: head, allowed: ["gpt-4o"]), keyID: "k",
                slot: true)
        else { return XCTFail("the body is not awaited") }
        guard case .none = machine.requestBody(body, now: start) else { return XCTFail("the body is not held") }
        guard case .connect = machine.requestEnd() else { return XCTFail("an allowed model is not forwarded") }
        guard case .attach(let parts, _) = machine.upstreamConnected(Upstream(id: 1), now: start) else {
            return XCTFail("not attached")
        }
        XCTAssertEqual(parts.count, 3, "head, body and end go upstream together")
        _ = machine.upstreamHead(keepAlive: true, framing: .contentLength(2), now: start)
        XCTAssertEqual(machine.upstreamEnd()?.settlement.releasesSlotOf, "k")
    }

    func testAModelCheckRefusesAnotherModel() throws {
        var machine = try machine()
        begin(&machine, admission: .checkModel(head: head, allowed: ["gpt-4o-mini"]), keyID: "k", slot: true)
        _ = machine.requestBody(body, now: start)
        guard case .answer(let answer) = machine.requestEnd() else { return XCTFail("another model went upstream") }
        XCTAssertEqual(answer.response.status, .forbidden)
        XCTAssertEqual(answer.settlement?.rejectReason, "model_not_allowed")
        XCTAssertEqual(answer.settlement?.releasesSlotOf, "k", "the slot is given back")
        XCTAssertFalse(answer.close)
        guard case .modelNotAllowed("k") = answer.reason else { return XCTFail("wrong reason \(answer.reason)") }
    }

    func testAModelCheckPastItsLimitIs413AndCloses() throws {
        var machine = try machine()
        begin(&machine, admission: .checkModel(head: head, allowed: ["gpt-4o"]))
        for _ in 0..<3 {
            guard case .none = machine.requestBody(body, now: start) else { return XCTFail("answered under the limit") }
        }
        guard case .answer(let answer) = machine.requestBody(body, now: start) else {
            return XCTFail("held past the limit")
        }
        XCTAssertEqual(answer.response.status, .payloadTooLarge)
        XCTAssertTrue(answer.close, "the rest of the body is not read")
    }

    // MARK: Failures

    func testTheClientLeavingAbortsTheExchangeAndClosesTheUpstream() throws {
        var machine = try machine()
        begin(&machine, keyID: "k", slot: true)
        _ = machine.upstreamConnected(Upstream(id: 4), now: start)
        let settlement = try XCTUnwrap(machine.clientClosed())
        XCTAssertEqual(settlement.outcome, .clientAborted)
        XCTAssertEqual(settlement.upstream, Upstream(id: 4))
        XCTAssertFalse(settlement.reusable)
        XCTAssertEqual(settlement.releasesSlotOf, "k")
        XCTAssertNil(machine.clientClosed(), "settled once")
    }

    func testAConnectionThatArrivesAfterTheClientLeftGoesBackToThePool() throws {
        var machine = try machine()
        begin(&machine)
        let settlement = try XCTUnwrap(machine.clientClosed())
        XCTAssertNil(settlement.upstream)
        guard case .release = machine.upstreamConnected(Upstream(id: 2), now: start) else {
            return XCTFail("an unused connection was not released")
        }
        XCTAssertNil(machine.upstreamConnectFailed(UpstreamClosed()))
    }

    func testAFailedConnectIs502() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        let answer = try XCTUnwrap(machine.upstreamConnectFailed(UpstreamClosed()))
        XCTAssertEqual(answer.response.status, .badGateway)
        XCTAssertEqual(answer.settlement?.outcome, .upstreamError)
        XCTAssertFalse(answer.close)
    }

    /// A connect failure leaves the request unsent: it can go elsewhere, its head rewritten.
    func testAnUnsentExchangeCanBeRetargeted() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestBody(body, now: start)
        _ = machine.requestEnd()
        let elsewhere = try UpstreamTarget(url: "http://127.0.0.2:10")
        let newHead = UpstreamRequestPart.head(
            ByteBuffer(string: "POST /x HTTP/1.1\r\n\r\n"), chunked: false, isHEAD: false)
        XCTAssertTrue(machine.retarget(elsewhere, head: newHead))
        XCTAssertEqual(machine.target, elsewhere)
        XCTAssertEqual(machine.tap, "x1", "the same exchange")
        guard case .attach(let parts, _) = machine.upstreamConnected(Upstream(id: 2), now: start) else {
            return XCTFail("not attached")
        }
        guard parts.count == 3, case .head(let sent, _, _, _) = parts[0], case .body = parts[1], case .end = parts[2]
        else {
            return XCTFail("\(parts)")
        }
        XCTAssertEqual(String(buffer: sent), "POST /x HTTP/1.1\r\n\r\n", "the new head, the same body")
        XCTAssertFalse(machine.retarget(target, head: newHead), "once attached, bytes may have gone: no retarget")
    }

    func testASentRequestIsReplayedOnlyBeforeAnyOfItsAnswerWentOut() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.requestBody(body, now: start)
        let elsewhere = try UpstreamTarget(url: "http://127.0.0.2:10")
        let held: [UpstreamRequestPart] = [
            .head(ByteBuffer(string: "POST /y HTTP/1.1\r\n\r\n"), chunked: false, isHEAD: false), .body(body),
        ]
        XCTAssertEqual(machine.replay(to: elsewhere, parts: held)?.id, 1, "the connection given up")
        XCTAssertEqual(machine.target, elsewhere)
        // The rest of the body, still coming, waits with what was held.
        _ = machine.requestEnd()
        guard case .attach(let parts, _) = machine.upstreamConnected(Upstream(id: 2), now: start) else {
            return XCTFail("not attached")
        }
        guard parts.count == 3, case .head = parts[0], case .body = parts[1], case .end = parts[2] else {
            return XCTFail("\(parts)")
        }
        _ = machine.upstreamHead(keepAlive: true, framing: .contentLength(2), now: start)
        XCTAssertNil(machine.replay(to: target, parts: held), "the answer has begun: never again")
    }

    func testAnUpstreamResetBeforeTheHeadIs502() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 3), now: start)
        guard case .answer(let answer) = machine.upstreamFailed(UpstreamClosed()) else {
            return XCTFail("no answer in the upstream's place")
        }
        XCTAssertEqual(answer.response.status, .badGateway)
        XCTAssertEqual(answer.settlement?.upstream, Upstream(id: 3))
        XCTAssertFalse(answer.settlement?.reusable ?? true)
        XCTAssertFalse(answer.close)
    }

    func testAnUpstreamResetAfterTheHeadClosesTheClient() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 3), now: start)
        _ = machine.upstreamHead(keepAlive: true, framing: .chunked, now: start)
        guard case .closeNow(let settlement) = machine.upstreamFailed(UpstreamClosed()) else {
            return XCTFail("a cut-short body must close the connection")
        }
        XCTAssertEqual(settlement.outcome, .upstreamError)
        XCTAssertFalse(machine.takesRequestEvents)
        XCTAssertNil(machine.upstreamEnd())
    }

    func testAMalformedRequestIs400AndCloses() throws {
        var machine = try machine()
        let error = HTTPFramingError("bad request line")
        guard case .answer(let answer) = machine.requestMalformed(error, maxHeaderBytes: 100) else {
            return XCTFail("no 400")
        }
        XCTAssertEqual(answer.response.status, .badRequest)
        XCTAssertTrue(answer.close)
        XCTAssertNil(answer.settlement)
    }

    func testAMalformedBodyMidResponseClosesAndSettles() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.upstreamConnected(Upstream(id: 3), now: start)
        _ = machine.upstreamHead(keepAlive: true, framing: .chunked, now: start)
        guard
            case .closeNow(let settlement?) = machine.requestMalformed(
                HTTPFramingError("bad chunk"), maxHeaderBytes: 100)
        else { return XCTFail("not settled") }
        XCTAssertEqual(settlement.upstream, Upstream(id: 3))
        XCTAssertEqual(settlement.outcome, .rejected)
    }

    // MARK: Timers

    func testAnIdleConnectionClosesAndAHalfHeadGets408() throws {
        var machine = try machine()
        guard case .check(let due) = machine.idleTimerFired(now: at(10), bufferedBytes: 0) else {
            return XCTFail("fired early and acted")
        }
        XCTAssertEqual(due, at(75))
        guard case .close = machine.idleTimerFired(now: at(75), bufferedBytes: 0) else {
            return XCTFail("an idle connection stays")
        }
        var slow = try self.machine()
        guard case .answer(let answer) = slow.idleTimerFired(now: at(80), bufferedBytes: 12) else {
            return XCTFail("a slow head is not answered")
        }
        XCTAssertEqual(answer.response.status, .requestTimeout)
        XCTAssertTrue(answer.close)
    }

    func testTheIdleTimerDoesNothingDuringAnExchange() throws {
        var machine = try machine()
        begin(&machine)
        guard case .none = machine.idleTimerFired(now: at(100), bufferedBytes: 0) else {
            return XCTFail("the idle timer acted on an exchange")
        }
    }

    func testASilentUpstreamIs504() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        guard case .check(let due) = machine.exchangeTimerFired(now: at(75), readHeld: false) else {
            return XCTFail("acted before the upstream timeout")
        }
        XCTAssertEqual(due, at(150), "never more than --client-timeout ahead")
        guard case .fail(.answer(let answer)) = machine.exchangeTimerFired(now: at(600), readHeld: false) else {
            return XCTFail("no 504")
        }
        XCTAssertEqual(answer.response.status, .gatewayTimeout)
        XCTAssertEqual(answer.settlement?.outcome, .timeout)
        XCTAssertEqual(answer.settlement?.upstream, Upstream(id: 1))
    }

    func testAnUpstreamSilentMidStreamClosesTheClient() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.upstreamHead(keepAlive: true, framing: .chunked, now: at(1))
        _ = machine.upstreamBody(now: at(100))
        guard case .check = machine.exchangeTimerFired(now: at(650), readHeld: false) else {
            return XCTFail("the body's pieces do not reset the upstream's clock")
        }
        guard case .fail(.closeNow(let settlement)) = machine.exchangeTimerFired(now: at(700), readHeld: false) else {
            return XCTFail("no close")
        }
        XCTAssertEqual(settlement.outcome, .timeout)
    }

    func testAStalledRequestBodyIs408NotA504() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.requestBody(body, now: at(1))
        // Held back for the upstream: the silence is not the client's.
        guard case .check = machine.exchangeTimerFired(now: at(80), readHeld: true) else {
            return XCTFail("a client held back was blamed")
        }
        guard case .check = machine.exchangeTimerFired(now: at(120), readHeld: false) else {
            return XCTFail("a client read again has --client-timeout from when it was let go")
        }
        guard case .answer(let answer) = machine.exchangeTimerFired(now: at(155), readHeld: false) else {
            return XCTFail("no 408")
        }
        XCTAssertEqual(answer.response.status, .requestTimeout)
        XCTAssertTrue(answer.close)
        XCTAssertEqual(answer.settlement?.upstream, Upstream(id: 1))
    }

    func testAHeldBodyHasTheClientTimeoutBetweenPieces() throws {
        var machine = try machine()
        let refusal = PolicyGate.refusal(.tooManyRequests, "rate_limited", "slow down")
        begin(&machine, admission: .refuse(refusal))
        _ = machine.requestBody(body, now: at(50))
        guard case .check(let due) = machine.exchangeTimerFired(now: at(75), readHeld: false) else {
            return XCTFail("a piece did not move the deadline")
        }
        XCTAssertEqual(due, at(125))
        guard case .answer(let answer) = machine.exchangeTimerFired(now: at(125), readHeld: false) else {
            return XCTFail("no 408")
        }
        XCTAssertEqual(answer.response.status, .requestTimeout)
    }

    func testAClientThatStopsReadingIsClosedAfterTheClientTimeout() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.upstreamHead(keepAlive: true, framing: .chunked, now: start)
        let (upstream, deadline) = machine.clientWritabilityChanged(isWritable: false, now: at(10))
        XCTAssertEqual(upstream, Upstream(id: 1), "the upstream's reads follow the client's")
        XCTAssertEqual(deadline, at(85))
        guard case .check = machine.exchangeTimerFired(now: at(80), readHeld: false) else { return XCTFail("early") }
        guard case .clientStoppedReading(let settlement) = machine.exchangeTimerFired(now: at(85), readHeld: false)
        else {
            return XCTFail("a client that does not read holds the upstream forever")
        }
        XCTAssertEqual(settlement.outcome, .clientAborted)
        XCTAssertEqual(settlement.upstream, Upstream(id: 1))
    }

    func testAClientThatReadsAgainIsNotClosed() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.clientWritabilityChanged(isWritable: false, now: at(10))
        XCTAssertNil(machine.clientWritabilityChanged(isWritable: true, now: at(20)).deadline)
        guard case .check = machine.exchangeTimerFired(now: at(85), readHeld: false) else {
            return XCTFail("closed a client that reads")
        }
    }

    // MARK: Quiesce

    func testQuiesceGivesAnIdleConnectionAMomentForARequestAlreadySentThenCloses() throws {
        var machine = try machine()
        let due = try XCTUnwrap(machine.quiesce())
        XCTAssertEqual(due, start + Machine.quiesceGrace)
        guard case .check(let again) = machine.idleTimerFired(now: start, bufferedBytes: 0), again == due else {
            return XCTFail("closed before the grace was over")
        }
        guard case .close = machine.idleTimerFired(now: due, bufferedBytes: 0) else { return XCTFail("not closed") }
        XCTAssertFalse(machine.takesRequestEvents)
    }

    func testARequestInTheQuiesceGraceIsAnsweredWithConnectionClose() throws {
        var machine = try machine()
        _ = machine.quiesce()
        begin(&machine)
        XCTAssertNil(machine.idleDeadline, "no idle deadline while an exchange is under way")
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        guard case .write(_, true, _) = machine.upstreamHead(keepAlive: true, framing: .contentLength(2), now: start)
        else {
            return XCTFail("the response does not say close")
        }
        XCTAssertEqual(try XCTUnwrap(machine.upstreamEnd()).then, .close)
    }

    func testAConnectionIdleLongerThanTheGraceClosesAtOnceOnQuiesce() throws {
        var machine = try machine()
        let due = try XCTUnwrap(machine.quiesce())
        guard case .close = machine.idleTimerFired(now: due + .seconds(5), bufferedBytes: 0) else {
            return XCTFail("not closed")
        }
    }

    func testQuiesceMidExchangeFinishesItThenCloses() throws {
        var machine = try machine()
        begin(&machine)
        XCTAssertNil(machine.quiesce(), "the exchange under way is not cut")
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        guard case .write(_, true, _) = machine.upstreamHead(keepAlive: true, framing: .contentLength(2), now: start)
        else {
            return XCTFail("the response does not say close")
        }
        let completion = try XCTUnwrap(machine.upstreamEnd())
        XCTAssertEqual(completion.then, .close)
        XCTAssertTrue(completion.settlement.reusable, "the upstream's connection is still good")
    }

    func testQuiesceAfterTheResponseHeadStillClosesAtTheEnd() throws {
        var machine = try machine()
        begin(&machine)
        _ = machine.requestEnd()
        _ = machine.upstreamConnected(Upstream(id: 1), now: start)
        _ = machine.upstreamHead(keepAlive: true, framing: .contentLength(2), now: start)
        XCTAssertNil(machine.quiesce())
        // The head went out without `Connection: close`: the client may send its next request at
        // once, so the connection waits the grace for it rather than closing under it.
        XCTAssertEqual(try XCTUnwrap(machine.upstreamEnd()).then, .next)
        machine.becameIdle(now: start + .seconds(1))
        XCTAssertEqual(machine.idleDeadline, start + .seconds(1) + Machine.quiesceGrace)
    }

    func testAnAnswerWhileQuiescingCloses() throws {
        var machine = try machine()
        let refusal = PolicyGate.refusal(.tooManyRequests, "rate_limited", "slow down")
        begin(&machine, admission: .refuse(refusal))
        _ = machine.quiesce()
        guard case .answer(let answer) = machine.requestEnd() else { return XCTFail("no answer") }
        XCTAssertTrue(answer.close)
    }
}
