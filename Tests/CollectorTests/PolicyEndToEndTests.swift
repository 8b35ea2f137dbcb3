import Foundation
import TestSupport
import Wire
import XCTest

/// A collector with the management API, a mock upstream, and sidecars enforcing the collector's
/// policy: all real processes, managed with curl as an operator would.
final class PolicyFleet: @unchecked Sendable {
    static let managementToken = "test-management-token-0123456789"
    static let upstreamSecret = "sk-upstream-secret-for-tests-7f3a"

    let folder: URL
    let mock: RunningProcess
    let mockPort: Int
    let mockLogURL: URL
    let analysisPort: Int
    let policyPort: Int
    let httpPort: Int
    private(set) var collector: RunningProcess?
    private(set) var sidecars: [(process: RunningProcess, port: Int)] = []

    var api: String { "http://127.0.0.1:\(httpPort)" }
    var policyEndpoint: String { "tcp://127.0.0.1:\(policyPort)" }

    init(startCollector: Bool = true) throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-policy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        mockPort = try freeTCPPort()
        mockLogURL = folder.appendingPathComponent("upstream.jsonl")
        mock = try RunningProcess(
            product: "llmtap-mock-upstream",
            arguments: ["--listen", "127.0.0.1:\(mockPort)", "--request-log", mockLogURL.path])
        analysisPort = try freeTCPPort()
        policyPort = try freeTCPPort()
        httpPort = try freeTCPPort()
        guard eventually({ mock.stdout.contains("listening on") }) else {
            throw TestFailure("the mock did not start: \(mock.stderr)")
        }
        if startCollector { try self.startCollector() }
    }

    var databasePath: String { folder.appendingPathComponent("data/llmtap.sqlite").path }

    func startCollector() throws {
        let process = try RunningProcess(
            product: "llmtap-collector",
            arguments: [
                "--listen-analysis", "tcp://127.0.0.1:\(analysisPort)", "--listen-policy", policyEndpoint, "--http",
                "127.0.0.1:\(httpPort)",
                "--db", databasePath, "--store-bodies", "--jsonl",
                folder.appendingPathComponent("exchanges.jsonl").path,
            ], environment: ["MANAGEMENT_TOKEN": Self.managementToken])
        guard eventually({ process.stderr.contains("llmtap-collector started") || !process.process.isRunning }),
            process.process.isRunning
        else {
            throw TestFailure("the collector did not start: \(process.stderr)")
        }
        collector = process
    }

    func stopCollector() {
        collector?.signal(SIGTERM)
        _ = collector?.waitForExit()
    }

    /// Starts a sidecar that holds the upstream credential "openai-main", and waits for its listener
    /// (not for its policy: that is the sidecar's business).
    @discardableResult
    func startSidecar(extra: [String] = [], analysis: String? = nil) throws -> Int {
        let port = try freeTCPPort()
        let process = try RunningProcess(
            product: "llmtap-sidecar",
            arguments: [
                "--listen", "127.0.0.1:\(port)", "--upstream", "http://127.0.0.1:\(mockPort)",
                "--collector", analysis ?? "tcp://127.0.0.1:\(analysisPort)", "--policy", policyEndpoint,
                "--require-virtual-key",
                "--sidecar-id", "policy-sidecar-\(sidecars.count)", "--app", "policy-app", "--threads", "2",
            ] + extra, environment: ["LLMTAP_CREDENTIAL_OPENAI_MAIN": Self.upstreamSecret])
        guard eventually({ process.stderr.contains("reverse listener ready") || !process.process.isRunning }),
            process.process.isRunning
        else {
            throw TestFailure("the sidecar did not start: \(process.stderr)")
        }
        sidecars.append((process, port))
        return port
    }

    func sidecarLog(_ index: Int = 0) -> String { sidecars[index].process.stderr }

    // MARK: Managing, with curl

    /// A management call; returns the status and the decoded JSON body (if any).
    @discardableResult
    func manage(_ method: String, _ path: String, _ body: String? = nil, token: String? = managementToken) throws -> (
        status: Int, json: [String: Any]
    ) {
        var arguments = ["-X", method, api + path]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        if let body { arguments += ["-H", "content-type: application/json", "--data-binary", body] }
        let result = try curlWithStatus(arguments)
        let json = (try? JSONSerialization.jsonObject(with: result.body)) as? [String: Any] ?? [:]
        return (result.status, json)
    }

    func createProject(_ name: String, credentialRef: String = "openai-main") throws -> String {
        let (status, json) = try manage(
            "POST", "/manage/projects", #"{"name":"\#(name)","credential_ref":"\#(credentialRef)"}"#)
        guard status == 201, let id = json["id"] as? String else {
            throw TestFailure("project creation: \(status) \(json)")
        }
        return id
    }

    func createToken(project: String, hours: Double = 1, extra: String = "") throws -> String {
        let (status, json) = try manage(
            "POST", "/manage/tokens", #"{"project_id":"\#(project)","duration_hours":\#(hours)\#(extra)}"#)
        guard status == 201, let token = json["token"] as? String else {
            throw TestFailure("token creation: \(status) \(json)")
        }
        return token
    }

    // MARK: Calling, as an app would

    func chat(
        port: Int, key: String, path: String = "/v1/chat/completions", header: String = "Authorization: Bearer",
        model: String = "gpt-4o-mini"
    ) throws -> (status: Int, body: String, headers: String) {
        let result = try curlWithStatus([
            "http://127.0.0.1:\(port)\(path)", "-H", "\(header) \(key)", "-H", "content-type: application/json",
            "--data-binary", #"{"model":"\#(model)","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#,
        ])
        return (result.status, String(decoding: result.body, as: UTF8.self), result.headers)
    }

    /// Requests the mock received whole.
    func upstreamRequests() -> [[String: Any]] {
        guard let text = try? String(contentsOf: mockLogURL, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
        .filter { $0["method"] != nil }
    }

    func stop() {
        for sidecar in sidecars where sidecar.process.process.isRunning {
            sidecar.process.signal(SIGTERM)
            _ = sidecar.process.waitForExit()
        }
        stopCollector()
        mock.signal(SIGTERM)
        _ = mock.waitForExit()
    }

    deinit { stop() }
}

/// Polls `request` every 10 ms until `done` holds for its answer or `limit` passes; returns the
/// time it took, or nil.
func timeUntil<T>(limit: Duration, _ request: () throws -> T, _ done: (T) -> Bool) rethrows -> Duration? {
    let start = ContinuousClock.now
    while ContinuousClock.now - start < limit {
        if done(try request()) { return ContinuousClock.now - start }
        usleep(10_000)
    }
    return nil
}

final class PolicyEndToEndTests: XCTestCase {
    func testVirtualKeysAreSwappedLimitedRevokedAndBudgeted() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let port = try fleet.startSidecar()
        let project = try fleet.createProject("billing")
        let key = try fleet.createToken(project: project, extra: #","rate_limit_per_hour":1000"#)
        XCTAssertTrue(key.hasPrefix("llmtap-") && key.count >= 7 + 43, key)

        // Valid: forwarded with the project's upstream key, never the virtual one.
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(5), { try fleet.chat(port: port, key: key).status }, { $0 == 200 }),
            fleet.sidecarLog())
        let anthropic = try fleet.chat(
            port: port, key: key, path: "/v1/messages", header: "x-api-key:", model: "claude-3-5-haiku-20241022")
        XCTAssertEqual(anthropic.status, 200, anthropic.body)
        let seen = fleet.upstreamRequests()
        let headers = seen.compactMap { $0["headers"] as? [String: String] }
        XCTAssertTrue(headers.contains { $0["authorization"] == "Bearer \(PolicyFleet.upstreamSecret)" }, "\(headers)")
        XCTAssertTrue(headers.contains { $0["x-api-key"] == PolicyFleet.upstreamSecret }, "\(headers)")
        XCTAssertFalse(
            headers.contains { $0.values.contains { $0.contains("llmtap-") } },
            "the virtual key reached the upstream: \(headers)")

        // Not a virtual key, an unknown one, and one in the URL: 401, in each provider's shape, never forwarded.
        let before = fleet.upstreamRequests().count
        let plain = try fleet.chat(port: port, key: "sk-a-real-openai-key")
        XCTAssertEqual(plain.status, 401)
        XCTAssertTrue(plain.body.contains(#""code":"invalid_api_key""#), plain.body)
        let unknownAnthropic = try fleet.chat(
            port: port, key: "llmtap-not-a-key", path: "/v1/messages", header: "x-api-key:")
        XCTAssertEqual(unknownAnthropic.status, 401)
        XCTAssertTrue(
            unknownAnthropic.body.hasPrefix(#"{"type":"error","error":{"type":"authentication_error""#),
            unknownAnthropic.body)
        XCTAssertEqual(fleet.upstreamRequests().count, before)

        // A key limited to some models: 403 for the others, whether the model is in the body or the path.
        let narrow = try fleet.createToken(project: project, extra: #","allowed_models":["gpt-4o-mini"]"#)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(1), { try fleet.chat(port: port, key: narrow).status }, { $0 == 200 }))
        let wrongModel = try fleet.chat(port: port, key: narrow, model: "gpt-4o")
        XCTAssertEqual(wrongModel.status, 403, wrongModel.body)
        XCTAssertTrue(wrongModel.body.contains("may not use the model gpt-4o"), wrongModel.body)
        let gemini = try curlWithStatus([
            "http://127.0.0.1:\(port)/v1beta/models/gemini-2.0-flash:generateContent",
            "-H", "x-goog-api-key: \(narrow)", "--data-binary", "{}",
        ])
        XCTAssertEqual(gemini.status, 403)

        // Rate limit: 429 with Retry-After.
        let limited = try fleet.createToken(project: project, extra: #","rate_limit_per_hour":2"#)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(1), { try fleet.chat(port: port, key: limited).status }, { $0 == 200 }))
        XCTAssertEqual(try fleet.chat(port: port, key: limited).status, 200)
        let third = try fleet.chat(port: port, key: limited)
        XCTAssertEqual(third.status, 429, third.body)
        XCTAssertTrue(third.headers.lowercased().contains("retry-after: 1800"), third.headers)
        XCTAssertTrue(third.body.contains(#""code":"rate_limit_exceeded""#), third.body)

        // Revoked: 401 within a second of the DELETE.
        XCTAssertEqual(try fleet.chat(port: port, key: key).status, 200)
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/tokens", #"{"token":"\#(key)"}"#).status, 204)
        let revokedIn = try timeUntil(
            limit: .seconds(1), { try fleet.chat(port: port, key: key) }, { $0.status == 401 })
        XCTAssertNotNil(revokedIn, "the revocation did not reach the sidecar within 1 s")
        XCTAssertTrue(try fleet.chat(port: port, key: key).body.contains("revoked"))

        // Expiry: a key made for 1.8 s works, then gets 401.
        let brief = try fleet.createToken(project: project, hours: 0.0005)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(1), { try fleet.chat(port: port, key: brief).status }, { $0 == 200 }))
        XCTAssertNotNil(
            try timeUntil(
                limit: .seconds(5), { try fleet.chat(port: port, key: brief) },
                { $0.status == 401 && $0.body.contains("expired") }))

        // Budget: once crossed, 429 within a second, and the upstream sees nothing after the denial arrived.
        let spender = try fleet.createToken(project: project)
        XCTAssertEqual(
            try fleet.manage("PUT", "/manage/projects/\(project)/budget", #"{"period":"day","max_tokens":200}"#).status,
            200)
        var denialArrived: Int?
        for _ in 0..<200 {
            let answer = try fleet.chat(port: port, key: spender)
            if answer.status == 429 {
                XCTAssertTrue(answer.body.contains(#""code":"insufficient_quota""#), answer.body)
                XCTAssertTrue(answer.headers.lowercased().contains("retry-after:"), answer.headers)
                denialArrived = fleet.upstreamRequests().count
                break
            }
            XCTAssertEqual(answer.status, 200, answer.body)
        }
        let upstreamAtDenial = try XCTUnwrap(denialArrived, "the budget never denied")
        for _ in 0..<5 { XCTAssertEqual(try fleet.chat(port: port, key: spender).status, 429) }
        XCTAssertEqual(
            fleet.upstreamRequests().count, upstreamAtDenial,
            "the upstream saw requests after the denial reached the sidecar")
        let usage = try fleet.manage("GET", "/manage/usage?project_id=\(project)")
        XCTAssertEqual(usage.status, 200)
        XCTAssertEqual(usage.json["denied"] as? Bool, true, "\(usage.json)")

        // Deleting the denial lifts it for the rest of the period; setting the budget again brings it
        // back; raising the budget lifts it.
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/projects/\(project)/denial").status, 204)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(1), { try fleet.chat(port: port, key: spender).status }, { $0 == 200 }))
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/projects/\(project)/denial").status, 404)
        XCTAssertEqual(
            try fleet.manage("PUT", "/manage/projects/\(project)/budget", #"{"period":"day","max_tokens":200}"#).status,
            200)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(1), { try fleet.chat(port: port, key: spender).status }, { $0 == 429 }))
        XCTAssertEqual(
            try fleet.manage("PUT", "/manage/projects/\(project)/budget", #"{"period":"day","max_tokens":1000000}"#)
                .status, 200)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(1), { try fleet.chat(port: port, key: spender).status }, { $0 == 200 }))

        // The collector counts the refusals, exposes the budget, and stores rejected exchanges with their reason.
        XCTAssertTrue(
            eventually(timeout: .seconds(10)) {
                let metrics =
                    (try? curlWithStatus([fleet.api + "/metrics"]).body).map { String(decoding: $0, as: UTF8.self) }
                    ?? ""
                return [
                    "revoked_key", "rate_limited", "budget_exceeded", "model_not_allowed", "key_required",
                    "unknown_key", "expired_key",
                ].allSatisfy {
                    metrics.contains(#"llmtap_policy_rejections_total{reason="\#($0)"}"#)
                } && metrics.contains(#"llmtap_budget_limit_tokens{project="billing"} 1000000"#)
            })
        let metrics = String(decoding: try curlWithStatus([fleet.api + "/metrics"]).body, as: UTF8.self)
        let promtool = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/promtool"), arguments: ["check", "metrics"], stdinText: metrics)
        XCTAssertEqual(promtool.waitForExit(), 0, promtool.stdout + promtool.stderr)
        let exchanges = try curlWithStatus([fleet.api + "/api/exchanges?limit=500"])
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: exchanges.body) as? [[String: Any]])
        XCTAssertTrue(
            rows.contains {
                $0["outcome"] as? String == "rejected" && $0["reject_reason"] as? String == "revoked_key"
                    && $0["project_id"] as? String == project
            })

        // Neither secret appears anywhere but as a hash: SQLite (bodies stored), the JSONL log, logs, metrics.
        fleet.stop()
        var places: [(String, Data)] = [("metrics", Data(metrics.utf8)), ("exchanges API", exchanges.body)]
        for name in try FileManager.default.subpathsOfDirectory(atPath: fleet.folder.path)
        where name != "upstream.jsonl" {
            if let data = FileManager.default.contents(atPath: fleet.folder.appendingPathComponent(name).path) {
                places.append((name, data))
            }
        }
        places.append(("collector log", Data((fleet.collector?.stderr ?? "").utf8)))
        places.append(("sidecar log", Data(fleet.sidecarLog().utf8)))
        XCTAssertGreaterThan(places.count, 4)
        for secret in [key, narrow, limited, brief, spender, PolicyFleet.upstreamSecret, PolicyFleet.managementToken] {
            for (place, data) in places {
                XCTAssertNil(data.range(of: Data(secret.utf8)), "a secret appears in \(place)")
            }
        }
    }

    /// What a policy sidecar puts on the wire: the key's id and project, the refusal's reason, and
    /// never the virtual key or the upstream credential.
    func testWireRecordsCarryKeyIDsAndReasonsButNoSecret() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let wire = try RawFrameCollector()
        defer { wire.stop() }
        let port = try fleet.startSidecar(analysis: wire.endpoint)
        let project = try fleet.createProject("wire")
        let key = try fleet.createToken(project: project)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(5), { try fleet.chat(port: port, key: key).status }, { $0 == 200 }))
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/tokens", #"{"token":"\#(key)"}"#).status, 204)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(1), { try fleet.chat(port: port, key: key).status }, { $0 == 401 }))

        XCTAssertTrue(
            eventually {
                wire.envelopes.contains {
                    if case .responseDone(let done) = $0.record { done.rejectReason == "revoked_key" } else { false }
                }
            })
        let requests = wire.envelopes.compactMap { if case .request(let request) = $0.record { request } else { nil } }
        XCTAssertTrue(
            requests.contains { $0.projectID == project && $0.keyID.hasPrefix("key_") && $0.tenant.count == 16 })
        XCTAssertTrue(
            requests.allSatisfy { request in
                request.headers.allSatisfy { !$0.value.contains("llmtap-") && !$0.value.contains("sk-") }
            })
        let frames = wire.rawFrames
        XCTAssertFalse(frames.isEmpty)
        for frame in frames {
            for secret in [key, PolicyFleet.upstreamSecret] {
                XCTAssertFalse(Data(frame).range(of: Data(secret.utf8)) != nil, "a secret crossed the wire")
            }
        }
    }

    /// A refused request, or one held for a model check, whose body stalls gets 408 after
    /// --client-timeout: the connection is never held forever, and other clients are served.
    func testAStalledBodyBehindAPolicyDecisionTimesOut() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let port = try fleet.startSidecar(extra: ["--client-timeout", "1"])
        let project = try fleet.createProject("stall")
        let narrow = try fleet.createToken(project: project, extra: #","allowed_models":["gpt-4o-mini"]"#)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(5), { try fleet.chat(port: port, key: narrow).status }, { $0 == 200 }))
        for key in ["llmtap-unknown", narrow] {
            let head =
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(key)\r\nContent-Length: 100\r\n\r\n{\"model\":"
            let start = ContinuousClock.now
            let (response, closed) = try rawHTTP(port: port, Array(head.utf8), timeout: .seconds(10))
            XCTAssertTrue(response.hasPrefix("HTTP/1.1 408"), response)
            XCTAssertTrue(response.contains("the request body did not arrive"), response)
            XCTAssertTrue(closed)
            XCTAssertLessThan(ContinuousClock.now - start, .seconds(9))
            XCTAssertEqual(try fleet.chat(port: port, key: narrow).status, 200)
        }
    }

    func testManagementAPIRefusesMissingTokensAndBadInputWithAReason() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let routes: [(String, String, String?)] = [
            ("POST", "/manage/projects", #"{"name":"x"}"#), ("GET", "/manage/projects", nil),
            ("DELETE", "/manage/projects/proj_x", nil),
            ("POST", "/manage/tokens", #"{"project_id":"p","duration_hours":1}"#),
            ("DELETE", "/manage/tokens", #"{"token":"llmtap-x"}"#),
            ("GET", "/manage/usage?project_id=p", nil),
            ("PUT", "/manage/projects/p/budget", #"{"period":"day","max_usd":1}"#),
        ]
        for (method, path, body) in routes {
            for token in [nil, "wrong-token-of-some-length", PolicyFleet.managementToken + "x"] {
                let (status, json) = try fleet.manage(method, path, body, token: token)
                XCTAssertEqual(status, 401, "\(method) \(path) with \(token ?? "no token")")
                XCTAssertNotNil((json["error"] as? [String: Any])?["message"], "\(json)")
            }
        }
        XCTAssertEqual((try fleet.manage("GET", "/manage/projects").json["projects"] as? [Any])?.count, 0)

        let project = try fleet.createProject("acme")
        let bad: [(String, String, String, String)] = [
            ("POST", "/manage/projects", "{not json", "not valid JSON"),
            ("POST", "/manage/projects", "[1,2]", "must be a JSON object"),
            ("POST", "/manage/projects", #"{"name":""}"#, "name must be"),
            (
                "POST", "/manage/projects", #"{"name":"x","credential_ref":"sk-looks like a secret!"}"#,
                "credential_ref must be"
            ),
            ("POST", "/manage/tokens", #"{"project_id":"proj_nope","duration_hours":1}"#, "no project proj_nope"),
            (
                "POST", "/manage/tokens", #"{"project_id":"\#(project)","duration_hours":-1}"#,
                "duration_hours must be more than 0"
            ),
            (
                "POST", "/manage/tokens", #"{"project_id":"\#(project)","duration_hours":"1"}"#,
                "\"duration_hours\" must be a number"
            ),
            ("POST", "/manage/tokens", #"{"project_id":"\#(project)"}"#, "missing field \"duration_hours\""),
            (
                "POST", "/manage/tokens", #"{"project_id":"\#(project)","duration_hours":1,"rate_limit_per_hour":0}"#,
                "rate_limit_per_hour must be"
            ),
            (
                "PUT", "/manage/projects/\(project)/budget", #"{"period":"week","max_usd":1}"#,
                "period must be day, month or total"
            ),
            (
                "PUT", "/manage/projects/\(project)/budget", #"{"period":"day","max_usd":-5}"#,
                "max_usd must be zero or more"
            ),
            ("PUT", "/manage/projects/\(project)/budget", #"{"period":"day"}"#, "give max_usd, max_tokens or both"),
            ("DELETE", "/manage/tokens", "{}", "give the token"),
            ("DELETE", "/manage/tokens", "", "needs a JSON object body"),
        ]
        for (method, path, body, message) in bad {
            let (status, json) = try fleet.manage(method, path, body)
            XCTAssertEqual(status, 400, "\(method) \(path) \(body): \(json)")
            let text = (json["error"] as? [String: Any])?["message"] as? String ?? ""
            XCTAssertTrue(text.contains(message), "\(method) \(path) \(body): \(text)")
        }
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/tokens", #"{"token":"llmtap-unknown"}"#).status, 404)
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/projects/proj_nope").status, 404)
        XCTAssertEqual(try fleet.manage("POST", "/manage/projects", #"{"name":"acme"}"#).status, 409)
        XCTAssertEqual(try fleet.manage("PATCH", "/manage/projects").status, 405)
        XCTAssertEqual(
            try fleet.manage("POST", "/manage/projects", String(repeating: " ", count: 70_000) + "{}").status, 413)
        XCTAssertEqual(
            try fleet.manage("PUT", "/manage/projects/\(project)/budget", #"{"period":"month","max_usd":12.5}"#).status,
            200)
        let listed = try XCTUnwrap(
            (try fleet.manage("GET", "/manage/projects").json["projects"] as? [[String: Any]])?.first)
        XCTAssertEqual((listed["budget"] as? [String: Any])?["max_usd"] as? Double, 12.5)
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/projects/\(project)/budget").status, 204)
        XCTAssertTrue(
            (try fleet.manage("GET", "/manage/projects").json["projects"] as? [[String: Any]])?.first?["budget"]
                is NSNull)
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/projects/\(project)").status, 204)
        XCTAssertEqual((try fleet.manage("GET", "/manage/projects").json["projects"] as? [Any])?.count, 0)
        XCTAssertTrue(fleet.collector?.process.isRunning == true)
    }

    func testTheManagementAPIIsOffWithoutATokenAndAShortTokenIsRefused() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-manage-\(UUID().uuidString)")
        let http = try freeTCPPort()
        let arguments = [
            "--listen-analysis", "tcp://127.0.0.1:*", "--listen-policy", "tcp://127.0.0.1:*", "--http",
            "127.0.0.1:\(http)",
            "--db", folder.appendingPathComponent("db.sqlite").path,
        ]
        let short = try RunningProcess(
            product: "llmtap-collector", arguments: arguments, environment: ["MANAGEMENT_TOKEN": "short"])
        XCTAssertNotEqual(short.waitForExit(), 0)
        XCTAssertTrue(short.stderr.contains("at least 16 characters"), short.stderr)

        let open = try RunningProcess(
            product: "llmtap-collector", arguments: arguments, environment: ["MANAGEMENT_TOKEN": ""])
        defer {
            open.signal(SIGTERM)
            _ = open.waitForExit()
        }
        XCTAssertTrue(eventually { open.stderr.contains("llmtap-collector started") }, open.stderr)
        XCTAssertTrue(open.stderr.contains("the management API is off"), open.stderr)
        let answer = try curlWithStatus([
            "-X", "POST", "http://127.0.0.1:\(http)/manage/projects", "--data-binary", #"{"name":"x"}"#,
        ])
        XCTAssertEqual(answer.status, 503)
        XCTAssertTrue(String(decoding: answer.body, as: UTF8.self).contains("MANAGEMENT_TOKEN"))
    }

    /// A sidecar that starts before it can reach the collector refuses virtual keys with 503 (never
    /// forwarding one), and enforces the stored policy from the snapshot on; a sidecar that starts
    /// while the collector runs has the state within a second. Garbage on the policy port changes nothing.
    func testALateSidecarFailsClosedUntilItsSnapshotThenEnforces() throws {
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let project = try fleet.createProject("late")
        let good = try fleet.createToken(project: project)
        let revoked = try fleet.createToken(project: project)
        XCTAssertEqual(try fleet.manage("DELETE", "/manage/tokens", #"{"token":"\#(revoked)"}"#).status, 204)
        fleet.stopCollector()

        let port = try fleet.startSidecar()
        for _ in 0..<5 {
            for key in [good, revoked, "llmtap-unknown"] {
                let answer = try fleet.chat(port: port, key: key)
                XCTAssertEqual(answer.status, 503, answer.body)
                XCTAssertTrue(answer.body.contains("has not received its policy"), answer.body)
                XCTAssertTrue(answer.headers.lowercased().contains("retry-after: 1"))
            }
        }
        XCTAssertEqual(fleet.upstreamRequests().count, 0)

        // The collector comes back (same database): the sidecar gets the snapshot and enforces it.
        try fleet.startCollector()
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(5), { try fleet.chat(port: port, key: good).status }, { $0 == 200 }),
            fleet.sidecarLog())
        XCTAssertEqual(try fleet.chat(port: port, key: revoked).status, 401)

        // Garbage on the policy port: the collector goes on serving.
        let fd = try connectTCP(port: fleet.policyPort)
        let junk = Array(repeating: UInt8(0xFF), count: 4096)
        _ = junk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        close(fd)

        // A sidecar started now: every answer from its first request on is 503 or the right one, never a pass for a bad key.
        let late = try fleet.startSidecar()
        var firstGood: Duration?
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .seconds(3) {
            let bad = try fleet.chat(port: late, key: revoked).status
            XCTAssertTrue(bad == 503 || bad == 401, "a revoked key got \(bad)")
            let ok = try fleet.chat(port: late, key: good).status
            XCTAssertTrue(ok == 503 || ok == 200, "a good key got \(ok)")
            if ok == 200 && firstGood == nil { firstGood = ContinuousClock.now - start }
        }
        XCTAssertNotNil(firstGood)
        XCTAssertLessThan(firstGood ?? .seconds(99), .seconds(1), "the late sidecar had no snapshot within 1 s")
        XCTAssertFalse(
            fleet.upstreamRequests().contains {
                ($0["headers"] as? [String: String])?["authorization"]?.contains("llmtap-") == true
            })
        XCTAssertTrue(fleet.collector?.process.isRunning == true)
    }
}
