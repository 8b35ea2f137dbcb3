import XCTest

@testable import Sidecar

/// Which provider a request goes to, with no socket: by Host, by path prefix, by weight.
final class GatewayRoutesTests: XCTestCase {
    func routes(_ yaml: String, environment: [String: String] = [:]) throws -> GatewayRoutes {
        var parser = GatewayConfigParser(environment: environment)
        let config = try XCTUnwrap(parser.parse(yaml))
        XCTAssertEqual(parser.problems, [])
        return try GatewayRoutes.make(config, environment: environment)
    }

    func testHostsThenTheLongestPrefixChooseTheRoute() throws {
        let gateway = try routes(
            """
            providers:
              - {name: openai, type: openai, host: "openai.local", endpoint: api.openai.com, api_key: sk-o}
              - {name: local8080, type: forward, host: "localhost:8080", endpoint: 127.0.0.1, port: 9000, tls: false}
              - {name: claude, type: anthropic, path_prefix: /anthropic, endpoint: api.anthropic.com, api_key: sk-a}
              - {name: claude-beta, type: anthropic, path_prefix: /anthropic/beta, endpoint: beta.example, api_key: sk-b}
              - {name: gemini, type: gemini, host: "openai.local", path_prefix: /gemini, endpoint: g.example, api_key: sk-g}
            """)
        func chosen(_ host: String?, _ uri: String) -> String? {
            gateway.route(host: host, uri: uri).map { "\($0.provider.name) \($0.uri)" }
        }
        XCTAssertEqual(chosen("openai.local", "/v1/chat/completions"), "openai /v1/chat/completions")
        XCTAssertEqual(chosen("OpenAI.Local:3000", "/v1/models"), "openai /v1/models", "no port configured: any port")
        XCTAssertEqual(chosen("localhost:8080", "/v1/models"), "local8080 /v1/models")
        XCTAssertNil(chosen("localhost:9090", "/v1/models"), "a configured port must match")
        XCTAssertNil(chosen("localhost", "/v1/models"))
        XCTAssertEqual(chosen("any.host", "/anthropic/v1/messages"), "claude /v1/messages", "the prefix is taken off")
        XCTAssertEqual(chosen(nil, "/anthropic"), "claude /")
        XCTAssertEqual(chosen("x", "/anthropic?beta=1"), "claude /?beta=1")
        XCTAssertNil(chosen("x", "/anthropicx/v1/messages"), "a prefix ends at a path segment")
        XCTAssertEqual(
            chosen("x", "/anthropic/beta/v1/messages"), "claude-beta /v1/messages", "the longest prefix wins")
        XCTAssertEqual(chosen("openai.local", "/gemini/v1beta/models"), "gemini /v1beta/models")
        XCTAssertEqual(
            chosen("openai.local", "http://openai.local/v1/models"), "openai /v1/models", "absolute form as origin form"
        )
        XCTAssertNil(chosen("nobody.local", "/v1/models"))
    }

    func testEachProviderPutsItsKeyWhereItsAPIWantsIt() throws {
        let gateway = try routes(
            """
            providers:
              - {name: o, type: openai, host: o, endpoint: o.example, api_key: "env:O_KEY"}
              - {name: a, type: anthropic, host: a, endpoint: a.example, api_key: sk-a}
              - {name: g, type: gemini, host: g, endpoint: g.example, port: 8443, api_key: sk-g}
              - {name: f, type: forward, host: f, endpoint: f.example, tls: false, port: 80}
            """, environment: ["O_KEY": "sk-from-env"])
        func credential(_ host: String) -> String? {
            gateway.route(host: host, uri: "/")?.provider.credential().map { "\($0.header) \($0.value)" }
        }
        XCTAssertEqual(credential("o"), "authorization sk-from-env")
        XCTAssertEqual(credential("a"), "xAPIKey sk-a")
        XCTAssertEqual(credential("g"), "xGoogAPIKey sk-g")
        XCTAssertNil(credential("f"), "a forward provider passes the client's own")
        XCTAssertEqual(gateway.route(host: "g", uri: "/")?.provider.target.description, "https://g.example:8443")
        XCTAssertEqual(gateway.route(host: "f", uri: "/")?.provider.target.description, "http://f.example")
    }

    func testWeightsShareTheRequestsAndFallbacksWaitForNoPrimary() throws {
        let gateway = try routes(
            """
            providers:
              - {name: light, type: openai, host: h, endpoint: a.example, weight: 1, api_key: k}
              - name: heavy
                type: openai
                host: h
                endpoint: b.example
                weight: 3
                api_keys: [{key: k1, weight: 1}, {key: k2, weight: 2}]
              - {name: spare, type: openai, host: h, endpoint: c.example, is_fallback: true, api_key: k}
              - {name: only-spare, type: openai, host: s, endpoint: d.example, is_fallback: true, api_key: k}
            """)
        var providers: [String: Int] = [:]
        var keys: [String: Int] = [:]
        for _ in 0..<1000 {
            let provider = try XCTUnwrap(gateway.route(host: "h", uri: "/")).provider
            providers[provider.name, default: 0] += 1
            if provider.name == "heavy", let key = provider.credential()?.value { keys[key, default: 0] += 1 }
        }
        XCTAssertEqual(providers, ["light": 250, "heavy": 750], "smooth weighted round-robin: exact shares")
        XCTAssertEqual(keys, ["k1": 250, "k2": 500])
        XCTAssertEqual(gateway.route(host: "s", uri: "/")?.provider.name, "only-spare", "a route of fallbacks only")
    }

    func testTheSmoothChoiceSpreadsTheHeavyOne() {
        let choice = WeightedChoice(["a", "b"], weights: [1, 3])
        XCTAssertEqual((0..<8).compactMap { _ in choice.next() }, ["b", "a", "b", "b", "b", "a", "b", "b"])
        XCTAssertEqual((0..<3).compactMap { _ in choice.next(where: { $0 == "a" }) }, ["a", "a", "a"])
        XCTAssertNil(choice.next(where: { _ in false }))
    }

    func testKeysComeFromTheirSources() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-key-\(UUID())").path
        try "sk-from-file\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        XCTAssertEqual(try GatewayRoutes.resolve(.file(file), environment: [:], provider: "p"), "sk-from-file")
        XCTAssertEqual(try GatewayRoutes.resolve(.environment("K"), environment: ["K": "v"], provider: "p"), "v")
        XCTAssertThrowsError(try GatewayRoutes.resolve(.environment("K"), environment: [:], provider: "p"))
    }
}

final class ClientKeysTests: XCTestCase {
    func testOnlyAGivenKeyMatches() {
        let keys = ClientKeys(["team-key-1", "team-key-2"])
        XCTAssertTrue(keys.matches("team-key-1"))
        XCTAssertTrue(keys.matches("team-key-2"))
        for wrong in ["team-key-3", "team-key-", "team-key-10", "", "TEAM-KEY-1"] {
            XCTAssertFalse(keys.matches(wrong), wrong)
        }
        XCTAssertFalse(ClientKeys([]).matches("anything"))
    }
}

final class ProviderHealthTests: XCTestCase {
    let second: UInt64 = 1_000_000_000

    func testAFailureTakesItOutForACoolDownThatGrows() {
        let health = ProviderHealth()
        XCTAssertTrue(health.isAvailable(now: 0))
        XCTAssertEqual(health.failed(now: 10 * second), .down(failures: 1, coolDownSeconds: 1))
        XCTAssertFalse(health.isAvailable(now: 10 * second + second / 2))
        XCTAssertTrue(health.isAvailable(now: 11 * second), "the next request tries it again")
        XCTAssertNil(health.failed(now: 11 * second), "still out: no change to tell")
        XCTAssertFalse(health.isAvailable(now: 12 * second), "longer the second time")
        XCTAssertTrue(health.isAvailable(now: 13 * second))
        for _ in 0..<10 { _ = health.failed(now: 100 * second) }
        XCTAssertFalse(health.isAvailable(now: 159 * second))
        XCTAssertTrue(health.isAvailable(now: 160 * second), "at most 60 s")
        XCTAssertEqual(health.succeeded(), .up)
        XCTAssertNil(health.succeeded())
        XCTAssertTrue(health.isAvailable(now: 100 * second))
    }

    func testFallbacksServeOnlyWhileNoPrimaryIsAvailable() throws {
        var parser = GatewayConfigParser(environment: [:])
        let config = try XCTUnwrap(
            parser.parse(
                """
                providers:
                  - {name: a, type: openai, endpoint: a.example, api_key: k}
                  - {name: b, type: openai, endpoint: b.example, api_key: k}
                  - {name: spare, type: openai, endpoint: c.example, is_fallback: true, api_key: k}
                """))
        let gateway = try GatewayRoutes.make(config, environment: [:])
        let (a, b) = (gateway.providers[0], gateway.providers[1])
        func names(at now: UInt64) -> Set<String> {
            Set((0..<6).compactMap { _ in gateway.route(host: nil, uri: "/", now: now)?.provider.name })
        }
        XCTAssertEqual(names(at: 0), ["a", "b"])
        _ = a.health.failed(now: 0)
        XCTAssertEqual(names(at: 0), ["b"])
        _ = b.health.failed(now: 0)
        XCTAssertEqual(names(at: 0), ["spare"], "no primary available: the fallback")
        XCTAssertEqual(names(at: 2 * second), ["a", "b"], "their cool-downs over: the primaries again")
        _ = gateway.providers[2].health.failed(now: 0)
        XCTAssertFalse(names(at: 0).isEmpty, "nothing available: a primary is tried anyway")
    }
}
