import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import Wire
import XCTest

@testable import Sidecar

final class PolicyGateTests: XCTestCase {
    private func head(_ fields: [(String, String)], uri: String = "/v1/chat/completions") throws -> ClientRequestHead {
        var parser = ClientRequestParser(maxHeadBytes: 65536)
        let text =
            "POST \(uri) HTTP/1.1\r\nhost: x\r\n" + fields.map { "\($0.0): \($0.1)\r\n" }.joined()
            + "content-length: 0\r\n\r\n"
        parser.receive(ByteBuffer(string: text))
        guard case .head(let head) = try parser.next() else { throw XCTSkip("no head") }
        return head
    }

    private func table(keys: [(String, KeyEntry)], denied: Bool = false, credential: String? = "sk-up") -> PolicyTable {
        PolicyTable(
            keys: Dictionary(uniqueKeysWithValues: keys.map { (KeyHash.of($0.0), $0.1) }),
            projects: [
                "p1": ProjectEntry(
                    projectID: "p1", name: "billing", credentialRef: "main", credential: credential,
                    denied: denied, denialReason: "day budget reached", deniedUntilMs: 10_000)
            ]
        )
    }

    private func entry(
        expires: Int64 = 0, revoked: Bool = false, rate: Int = 0, parallel: Int = 0, models: Set<String> = []
    ) -> KeyEntry {
        KeyEntry(
            keyID: "key_1", projectID: "p1", expiresAtMs: expires, revoked: revoked, ratePerHour: rate,
            maxParallel: parallel, allowedModels: models)
    }

    private func reason(_ decision: PolicyDecision) -> String {
        switch decision {
        case .passThrough: "pass"
        case .allow: "allow"
        case .reject(let response, _, _): "\(response.status.code) \(response.rejectReason)"
        }
    }

    func testEveryRefusalHasItsStatusAndReason() throws {
        let gate = PolicyGate(requireVirtualKey: true)
        let vk = "llmtap-abc"
        func decide(_ fields: [(String, String)], uri: String = "/v1/chat/completions", now: Int64 = 1_000) throws
            -> PolicyDecision
        {
            let head = try head(fields, uri: uri)
            return gate.decide(
                headers: head.headers, uri: head.uri, path: head.uri, nowMs: now, nowNanos: UInt64(now) * 1_000_000)
        }
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "503 policy_unavailable")
        XCTAssertEqual(reason(try decide([("authorization", "Bearer sk-real")])), "401 key_required")
        XCTAssertEqual(reason(try decide([])), "401 key_required")
        XCTAssertEqual(reason(try decide([], uri: "/v1beta/models/x:generateContent?key=\(vk)")), "401 key_required")

        gate.install(table(keys: [(vk, entry(expires: 5_000))]))
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "allow")
        XCTAssertEqual(reason(try decide([("x-api-key", vk)])), "allow")
        XCTAssertEqual(reason(try decide([("authorization", "Bearer llmtap-other")])), "401 unknown_key")
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")], now: 5_000)), "401 expired_key")
        gate.install(table(keys: [(vk, entry(revoked: true))]))
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "401 revoked_key")
        gate.install(table(keys: [(vk, entry())], denied: true))
        guard case .reject(let budget, let keyID, let projectID) = try decide([("authorization", "Bearer \(vk)")])
        else { return XCTFail() }
        XCTAssertEqual(
            [budget.rejectReason, "\(budget.status.code)", "\(budget.retryAfter ?? 0)", keyID, projectID],
            ["budget_exceeded", "429", "9", "key_1", "p1"])
        gate.install(table(keys: [(vk, entry())], credential: nil))
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "503 credential_missing")
        gate.install(table(keys: [(vk, entry(models: ["gemini-2.0-flash"]))]))
        XCTAssertEqual(
            reason(try decide([("x-goog-api-key", vk)], uri: "/v1beta/models/gemini-1.5-pro:generateContent")),
            "403 model_not_allowed")
        XCTAssertEqual(
            reason(try decide([("x-goog-api-key", vk)], uri: "/v1beta/models/gemini-2.0-flash:generateContent")),
            "allow")

        // Parallelism is per key and given back when a request ends.
        gate.install(table(keys: [(vk, entry(parallel: 2))]))
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "allow")
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "allow")
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "429 parallel_limit")
        gate.release(keyID: "key_1")
        XCTAssertEqual(reason(try decide([("authorization", "Bearer \(vk)")])), "allow")
    }

    func testWithoutRequireOtherKeysPassAndVirtualOnesAreStillChecked() throws {
        let gate = PolicyGate(requireVirtualKey: false)
        let head = try head([("authorization", "Bearer sk-real")])
        XCTAssertEqual(
            reason(gate.decide(headers: head.headers, uri: head.uri, path: head.uri, nowMs: 0, nowNanos: 0)), "pass")
        let virtual = try self.head([("authorization", "Bearer llmtap-x")])
        XCTAssertEqual(
            reason(gate.decide(headers: virtual.headers, uri: virtual.uri, path: virtual.uri, nowMs: 0, nowNanos: 0)),
            "503 policy_unavailable")
    }

    func testTheRateBucketRefillsAndSaysWhenToRetry() {
        var counters = KeyCounters(tokens: 3, refilledAt: 0)
        for _ in 0..<3 { XCTAssertNil(counters.acquire(ratePerHour: 3, maxParallel: 0, nowNanos: 0)) }
        let refusal = counters.acquire(ratePerHour: 3, maxParallel: 0, nowNanos: 0)
        XCTAssertEqual(refusal?.reason, "rate_limited")
        XCTAssertEqual(refusal?.retryAfter, 1200)
        // Just over 20 minutes later one request's worth is back.
        XCTAssertNil(counters.acquire(ratePerHour: 3, maxParallel: 0, nowNanos: 1_201_000_000_000))
    }

    func testTheVirtualKeyIsReplacedWhicheverHeaderCarriedIt() throws {
        let target = try UpstreamTarget(url: "https://api.anthropic.com")
        let head = try head([
            ("x-api-key", "llmtap-vk"), ("authorization", "Bearer llmtap-vk"), ("api-key", "llmtap-vk"),
            ("x-goog-api-key", "llmtap-vk"), ("anthropic-version", "2023-06-01"),
        ])
        var out = ByteBuffer()
        HeaderRules.writeUpstreamRequestHead(
            head, uri: "/v1/messages", target: target, clientIP: nil, credential: (.xAPIKey, "sk-ant-real"), into: &out)
        let text = String(buffer: out)
        XCTAssertFalse(text.contains("llmtap-vk"), text)
        XCTAssertTrue(text.contains("x-api-key: sk-ant-real\r\n"), text)
        XCTAssertTrue(text.contains("anthropic-version: 2023-06-01\r\n"), text)
        XCTAssertEqual(text.components(separatedBy: "sk-ant-real").count, 2, text)
    }

    func testErrorShapesFollowTheProvider() {
        let refusal = PolicyGate.refusal(.unauthorized, "revoked_key", "this virtual key has been revoked")
        XCTAssertEqual(ProxyErrorResponse.Shape.forPath("/v1/messages?beta=true"), .anthropic)
        XCTAssertEqual(ProxyErrorResponse.Shape.forPath("/v1/chat/completions"), .openAI)
        let anthropic =
            try? JSONSerialization.jsonObject(with: Data(String(buffer: refusal.body(shape: .anthropic)).utf8))
            as? [String: Any]
        XCTAssertEqual(anthropic?["type"] as? String, "error")
        XCTAssertEqual((anthropic?["error"] as? [String: Any])?["type"] as? String, "authentication_error")
        let openAI =
            try? JSONSerialization.jsonObject(with: Data(String(buffer: refusal.body(shape: .openAI)).utf8))
            as? [String: Any]
        XCTAssertEqual((openAI?["error"] as? [String: Any])?["code"] as? String, "invalid_api_key")
    }

    func testTheModelScannerReadsOnlyTheTopLevelModel() {
        func scan(_ text: String) -> ModelScanner.Result { ModelScanner.topLevelModel(Array(text.utf8)) }
        XCTAssertEqual(scan(#"{"model":"gpt-4o"}"#), .model("gpt-4o"))
        XCTAssertEqual(
            scan(
                #" { "messages":[{"role":"user","content":"{\"model\":\"x\"}","model":"nested"}], "n":1, "stream":true, "model" : "gpt-4o-mini" }"#
            ), .model("gpt-4o-mini"))
        XCTAssertEqual(scan(#"{"metadata":{"model":"nested"},"temperature":0.2}"#), .none)
        XCTAssertEqual(scan(#"{"model":"gpt"#), .unreadable)
        XCTAssertEqual(scan("[1,2]"), .unreadable)
        XCTAssertEqual(scan(""), .unreadable)
        XCTAssertEqual(scan(#"{"a":"\"}","model":"m\"x"}"#), .model("m\"x"))
        // Read as the upstream's parser reads it, or refused: two models (parsers differ on which
        // wins), an escaped key that is "model", anything after the object.
        XCTAssertEqual(scan(#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#), .unreadable)
        XCTAssertEqual(scan(#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#), .unreadable)
        XCTAssertEqual(scan(#"{"mod\u0065l":"gpt-4o"}"#), .model("gpt-4o"))
        XCTAssertEqual(scan(#"{"model":"gpt-\u0034o"}"#), .model("gpt-4o"))
        XCTAssertEqual(scan(#"{"model":"\ud83d\ude00"}"#), .model("\u{1F600}"))
        XCTAssertEqual(scan(#"{"model":"\ud83d"}"#), .unreadable)
        XCTAssertEqual(scan(#"{"model":"gpt-4o-mini"} {"model":"gpt-4o"}"#), .unreadable)
        XCTAssertEqual(scan(#"{"model":"gpt-4o-mini"}  "#), .model("gpt-4o-mini"))
        XCTAssertEqual(scan("{\"model\":\"a\u{1}b\"}"), .unreadable)
        XCTAssertEqual(scan(#"{"model":5}"#), .none)
        XCTAssertEqual(scan(#"{}"#), .none)
        XCTAssertEqual(ModelScanner.topLevelModel(Array(#"{"model":"gpt-4o"#.utf8) + [0xFF, 0x22, 0x7D]), .unreadable)
        XCTAssertEqual(
            ModelScanner.modelInPath("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"),
            "gemini-2.0-flash")
        XCTAssertNil(ModelScanner.modelInPath("/v1/chat/completions"))
    }

    func testCredentialsComeFromTheEnvironmentAndAFile() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("creds-\(UUID().uuidString)")
        try "# comment\nopenai-main=sk-one\n\nanthropic.team = ignored-spaces\n".write(
            to: file, atomically: true, encoding: .utf8)
        let credentials = try UpstreamCredentials.load(
            file: file.path, environment: ["LLMTAP_CREDENTIAL_GEMINI_X": "g-key", "OTHER": "x"])
        XCTAssertEqual(credentials.secret(for: "openai-main"), "sk-one")
        XCTAssertEqual(credentials.secret(for: "gemini-x"), "g-key")
        XCTAssertNil(credentials.secret(for: "missing"))
        try "no equals sign sk-secret\n".write(to: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try UpstreamCredentials.load(file: file.path, environment: [:])) { error in
            XCTAssertFalse("\(error)".contains("sk-secret"), "the error repeats the line")
        }
    }
}
