import Foundation
import TestSupport
import XCTest

/// What `deploy/` holds, proven here rather than only written: Prometheus scrapes a live collector
/// with the shipped config and accepts every expression of the dashboard and the alerts; the
/// systemd units verify; the manifests parse with the expected kinds.
final class DeployTests: XCTestCase {
    private let deploy = repositoryRoot.appendingPathComponent("deploy")

    private func run(_ executable: String, _ arguments: [String], directory: URL? = nil) throws -> (
        status: Int32, output: String
    ) {
        let process = try RunningProcess(
            executable: URL(fileURLWithPath: executable), arguments: arguments, directory: directory)
        guard let status = process.waitForExit(timeout: .seconds(60)) else {
            throw TestFailure("\(executable) did not finish")
        }
        return (status, process.stdout + process.stderr)
    }

    /// Every PromQL expression of the Grafana dashboard and of the alert rules.
    private func expressions() throws -> [(source: String, expr: String)] {
        let dashboard =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: deploy.appendingPathComponent("grafana/llmtap.json"))) as? [String: Any]
        let panels = try XCTUnwrap(dashboard?["panels"] as? [[String: Any]])
        var found: [(String, String)] = panels.flatMap { panel in
            (panel["targets"] as? [[String: Any]] ?? []).compactMap { target in
                (target["expr"] as? String).map { ("dashboard: \(panel["title"] ?? "")", $0) }
            }
        }
        let rules = try yaml(deploy.appendingPathComponent("prometheus/llmtap-alerts.yml"))
        for group in (rules.first?["groups"] as? [[String: Any]]) ?? [] {
            for rule in group["rules"] as? [[String: Any]] ?? [] {
                if let expr = rule["expr"] as? String { found.append(("alert \(rule["alert"] ?? "")", expr)) }
            }
        }
        return found
    }

    /// The documents of a YAML file, read by PyYAML.
    private func yaml(_ file: URL) throws -> [[String: Any]] {
        let script = "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"
        let result = try runPython(script, arguments: [file.path])
        guard result.status == 0 else {
            throw TestFailure("\(file.lastPathComponent) does not parse as YAML: \(result.stderr)")
        }
        let documents = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [Any] ?? []
        return documents.compactMap { $0 as? [String: Any] }
    }

    func testPrometheusScrapesTheCollectorWithTheShippedConfigAndAcceptsEveryExpression() throws {
        // A collector with traffic: requests through a sidecar, and a project with a budget.
        let fleet = try PolicyFleet()
        defer { fleet.stop() }
        let port = try fleet.startSidecar()
        let project = try fleet.createProject("deploy")
        let key = try fleet.createToken(project: project)
        XCTAssertEqual(
            try fleet.manage("PUT", "/manage/projects/\(project)/budget", #"{"period":"month","max_usd":5}"#).status,
            200)
        XCTAssertNotNil(
            try timeUntil(limit: .seconds(5), { try fleet.chat(port: port, key: key).status }, { $0 == 200 }))
        for _ in 0..<5 { _ = try fleet.chat(port: port, key: key) }

        // deploy/prometheus/prometheus.yml, rewritten for the collector's port only.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-prometheus-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let config = try String(contentsOf: deploy.appendingPathComponent("prometheus/prometheus.yml"), encoding: .utf8)
        XCTAssertTrue(config.contains("collector:9464"))
        try config.replacingOccurrences(of: "collector:9464", with: "127.0.0.1:\(fleet.httpPort)")
            .write(to: folder.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(
            at: deploy.appendingPathComponent("prometheus/llmtap-alerts.yml"),
            to: folder.appendingPathComponent("llmtap-alerts.yml"))
        let promtoolConfig = try run(
            "/usr/bin/promtool", ["check", "config", folder.appendingPathComponent("prometheus.yml").path])
        XCTAssertEqual(promtoolConfig.status, 0, promtoolConfig.output)
        let promtoolRules = try run(
            "/usr/bin/promtool", ["check", "rules", deploy.appendingPathComponent("prometheus/llmtap-alerts.yml").path])
        XCTAssertEqual(promtoolRules.status, 0, promtoolRules.output)

        let prometheusPort = try freeTCPPort()
        let prometheus = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/prometheus"),
            arguments: [
                "--config.file=\(folder.appendingPathComponent("prometheus.yml").path)",
                "--storage.tsdb.path=\(folder.appendingPathComponent("data").path)",
                "--web.listen-address=127.0.0.1:\(prometheusPort)",
            ])
        defer {
            prometheus.signal(SIGTERM)
            _ = prometheus.waitForExit()
        }
        let api = "http://127.0.0.1:\(prometheusPort)/api/v1"
        func query(_ expr: String) throws -> [String: Any] {
            let result = try curlWithStatus(["-G", "\(api)/query", "--data-urlencode", "query=\(expr)"])
            return (try? JSONSerialization.jsonObject(with: result.body)) as? [String: Any] ?? [
                "status": "no answer (\(result.status))"
            ]
        }
        // Prometheus's first scrape comes within one scrape interval (15 s) of its start.
        let scraped = try timeUntil(
            limit: .seconds(30), { try query("llmtap_requests_total") },
            { answer in
                ((answer["data"] as? [String: Any])?["result"] as? [Any])?.isEmpty == false
            })
        XCTAssertNotNil(scraped, "Prometheus found no llmtap_requests_total: \(prometheus.stderr.suffix(2000))")

        let all = try expressions()
        XCTAssertGreaterThanOrEqual(all.count, 20)
        for (source, expr) in all {
            let answer = try query(expr)
            XCTAssertEqual(answer["status"] as? String, "success", "\(source): \(expr) -> \(answer)")
        }
        // The budget alert's expression has a series to work on.
        let budget = try query("llmtap_budget_spend_usd / llmtap_budget_limit_usd")
        XCTAssertEqual(((budget["data"] as? [String: Any])?["result"] as? [Any])?.count, 1, "\(budget)")
    }

    func testTheDashboardHasThePanelsOperatorsNeed() throws {
        let dashboard = try XCTUnwrap(
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: deploy.appendingPathComponent("grafana/llmtap.json"))) as? [String: Any])
        let panels = try XCTUnwrap(dashboard["panels"] as? [[String: Any]])
        let text = panels.map {
            "\($0["title"] ?? "") \(($0["targets"] as? [[String: Any]] ?? []).map { $0["expr"] as? String ?? "" })"
        }.joined(separator: "\n")
        for needed in [
            "llmtap_requests_total", "status_class", "llmtap_tokens_total", "llmtap_cost_usd_total", "by (app)",
            "histogram_quantile(0.5", "histogram_quantile(0.95", "llmtap_request_duration_seconds_bucket",
            "llmtap_time_to_first_byte_seconds_bucket", "llmtap_sidecar_up", "llmtap_records_lost_total",
        ] {
            XCTAssertTrue(text.contains(needed), "no panel uses \(needed)")
        }
        let datasource = try yaml(deploy.appendingPathComponent("grafana/provisioning/datasources/prometheus.yml"))
        XCTAssertEqual(
            (datasource.first?["datasources"] as? [[String: Any]])?.first?["uid"] as? String, "llmtap-prometheus")
        XCTAssertTrue(
            panels.allSatisfy { ($0["datasource"] as? [String: Any])?["uid"] as? String == "llmtap-prometheus" })
    }

    func testSystemdUnitsVerifyAndAreSandboxed() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "llmtap-systemd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        // Rewritten for where the binaries are here: systemd-analyze checks that ExecStart exists.
        for (source, target) in [
            ("llmtap-collector.service", "llmtap-collector.service"),
            ("llmtap-sidecar@.service", "llmtap-sidecar@checkout.service"),
        ] {
            let unit = try String(contentsOf: deploy.appendingPathComponent("systemd/\(source)"), encoding: .utf8)
            for directive in [
                "DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=", "Restart=on-failure",
                "KillSignal=SIGTERM", "NoNewPrivileges=yes",
            ] {
                XCTAssertTrue(unit.contains(directive), "\(source) lacks \(directive)")
            }
            try unit.replacingOccurrences(of: "/usr/local/bin/", with: productsDirectory.path + "/")
                .write(to: folder.appendingPathComponent(target), atomically: true, encoding: .utf8)
        }
        let verify = try run(
            "/usr/bin/systemd-analyze", ["verify", "llmtap-collector.service", "llmtap-sidecar@checkout.service"],
            directory: folder)
        XCTAssertEqual(verify.status, 0, verify.output)
        XCTAssertEqual(verify.output.trimmingCharacters(in: .whitespacesAndNewlines), "", verify.output)
    }

    func testKubernetesManifestsComposeAndDockerfileHaveWhatADeploymentNeeds() throws {
        let kubernetes = deploy.appendingPathComponent("kubernetes")
        var kinds: [String: [String]] = [:]
        var documents: [[String: Any]] = []
        for file in try FileManager.default.contentsOfDirectory(atPath: kubernetes.path).sorted()
        where file.hasSuffix(".yaml") {
            let parsed = try yaml(kubernetes.appendingPathComponent(file))
            XCTAssertTrue(
                parsed.allSatisfy {
                    $0["apiVersion"] is String && $0["kind"] is String
                        && ($0["metadata"] as? [String: Any])?["name"] is String
                }, file)
            kinds[file] = parsed.compactMap { $0["kind"] as? String }
            documents += parsed
        }
        XCTAssertEqual(kinds["collector.yaml"], ["Namespace", "PersistentVolumeClaim", "Deployment", "Service"])
        XCTAssertEqual(kinds["app-with-sidecar.yaml"], ["Deployment"])
        XCTAssertEqual(kinds["secret.yaml"], ["Secret", "Secret"])
        XCTAssertEqual(kinds["servicemonitor.yaml"], ["ServiceMonitor"])

        func spec(_ name: String) -> [String: Any]? {
            let deployment = documents.first {
                $0["kind"] as? String == "Deployment" && ($0["metadata"] as? [String: Any])?["name"] as? String == name
            }
            return ((deployment?["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any]
        }
        let app = try XCTUnwrap(spec("example-app")?["containers"] as? [[String: Any]])
        XCTAssertEqual(app.map { $0["name"] as? String }, ["app", "llmtap-sidecar"])
        XCTAssertTrue(
            (app[0]["env"] as? [[String: Any]] ?? []).contains {
                $0["name"] as? String == "OPENAI_BASE_URL" && $0["value"] as? String == "http://localhost:3000/v1"
            })
        XCTAssertTrue((app[1]["args"] as? [String] ?? []).contains("--policy=tcp://llmtap-collector.llmtap.svc:7102"))
        let collector = try XCTUnwrap(spec("llmtap-collector"))
        XCTAssertNotNil(
            ((collector["volumes"] as? [[String: Any]])?.first?["persistentVolumeClaim"] as? [String: Any])?[
                "claimName"])
        XCTAssertTrue(
            ((collector["containers"] as? [[String: Any]])?.first?["envFrom"] as? [[String: Any]])?.first.map {
                "\($0)".contains("llmtap-management")
            } ?? false)
        let secret = documents.first { $0["kind"] as? String == "Secret" }
        XCTAssertNotNil((secret?["stringData"] as? [String: Any])?["MANAGEMENT_TOKEN"])
        let service = documents.first { $0["kind"] as? String == "Service" }
        XCTAssertEqual(
            ((service?["metadata"] as? [String: Any])?["annotations"] as? [String: Any])?["prometheus.io/scrape"]
                as? String, "true")

        let compose = try XCTUnwrap(try yaml(deploy.appendingPathComponent("docker/docker-compose.yml")).first)
        let services = try XCTUnwrap(compose["services"] as? [String: [String: Any]])
        for name in ["app", "sidecar", "collector", "prometheus", "grafana"] {
            XCTAssertNotNil(services[name], "compose has no \(name)")
        }
        XCTAssertEqual(services["app"]?["network_mode"] as? String, "service:sidecar")
        XCTAssertEqual(
            (services["app"]?["environment"] as? [String: Any])?["OPENAI_BASE_URL"] as? String,
            "http://localhost:3000/v1")
        XCTAssertTrue(
            (services["collector"]?["volumes"] as? [String] ?? []).contains { $0.hasSuffix(":/var/lib/llmtap/data") })
        XCTAssertTrue(
            (services["prometheus"]?["volumes"] as? [String] ?? []).contains {
                $0.hasPrefix("../prometheus/prometheus.yml:")
            })
        XCTAssertTrue(
            (services["grafana"]?["volumes"] as? [String] ?? []).contains { $0.hasPrefix("../grafana/llmtap.json:") })
        for (name, service) in services where service["build"] != nil {
            let build = try XCTUnwrap(service["build"] as? [String: Any])
            XCTAssertEqual(build["dockerfile"] as? String, "deploy/docker/Dockerfile", name)
        }

        // No Docker engine runs here: the Dockerfile is held to its shape, and the script it runs
        // is proven by BuildScriptTests.
        let dockerfile = try String(contentsOf: deploy.appendingPathComponent("docker/Dockerfile"), encoding: .utf8)
        for needed in [
            "FROM swift:${SWIFT_VERSION}-${DEBIAN_RELEASE} AS build", "RUN deploy/build.sh /out",
            "FROM debian:${DEBIAN_RELEASE}-slim AS runtime",
            "install -y --no-install-recommends libzmq5 libsqlite3-0 ca-certificates", "AS collector", "AS sidecar",
            "USER 10001:10001",
            "COPY --from=build /out/bin/LLMTap_Collector.resources",
        ] {
            XCTAssertTrue(dockerfile.contains(needed), "the Dockerfile lacks \(needed)")
        }
        XCTAssertFalse(dockerfile.contains("USER root"))
    }
}

/// deploy/build.sh, the Dockerfile's build step, run from a clean clone in a scratch directory:
/// the binaries it leaves need nothing of Swift at run time, and they work.
final class BuildScriptTests: XCTestCase {
    func testTheBuildScriptMakesWorkingBinariesFromACleanClone() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-build-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let clone = scratch.appendingPathComponent("llmtap")
        let git = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/git"),
            arguments: ["clone", "--quiet", repositoryRoot.path, clone.path])
        XCTAssertEqual(git.waitForExit(timeout: .seconds(120)), 0, git.stderr)
        let out = scratch.appendingPathComponent("out")
        // Debug keeps the test's build to a few minutes; the Dockerfile's release build runs the same steps.
        let build = try RunningProcess(
            executable: clone.appendingPathComponent("deploy/build.sh"), arguments: [out.path],
            environment: ["LLMTAP_BUILD_CONFIGURATION": "debug"], directory: clone)
        XCTAssertEqual(build.waitForExit(timeout: .seconds(1800)), 0, String(build.stderr.suffix(4000)))
        let bin = out.appendingPathComponent("bin")
        for product in ["llmtap-collector", "llmtap-sidecar", "llmtap-mock-upstream"] {
            XCTAssertTrue(
                FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent(product).path), product)
        }
        let ldd = try RunningProcess(
            executable: URL(fileURLWithPath: "/usr/bin/ldd"),
            arguments: [
                bin.appendingPathComponent("llmtap-sidecar").path, bin.appendingPathComponent("llmtap-collector").path,
            ])
        XCTAssertEqual(ldd.waitForExit(), 0)
        XCTAssertFalse(ldd.stdout.contains("libswift"), ldd.stdout)
        XCTAssertTrue(ldd.stdout.contains("libzmq.so.5"), ldd.stdout)

        // They run: a collector (with its price table found beside it), a sidecar and the mock.
        let mockPort = try freeTCPPort()
        let sidecarPort = try freeTCPPort()
        let httpPort = try freeTCPPort()
        let analysisPort = try freeTCPPort()
        let mock = try RunningProcess(
            executable: bin.appendingPathComponent("llmtap-mock-upstream"),
            arguments: ["--listen", "127.0.0.1:\(mockPort)"])
        let collector = try RunningProcess(
            executable: bin.appendingPathComponent("llmtap-collector"),
            arguments: [
                "--listen-analysis", "tcp://127.0.0.1:\(analysisPort)", "--listen-policy", "tcp://127.0.0.1:*",
                "--http", "127.0.0.1:\(httpPort)",
                "--db", scratch.appendingPathComponent("data/llmtap.sqlite").path,
            ])
        let sidecar = try RunningProcess(
            executable: bin.appendingPathComponent("llmtap-sidecar"),
            arguments: [
                "--listen", "127.0.0.1:\(sidecarPort)", "--upstream", "http://127.0.0.1:\(mockPort)", "--collector",
                "tcp://127.0.0.1:\(analysisPort)",
            ])
        defer {
            for process in [sidecar, collector, mock] {
                process.signal(SIGTERM)
                _ = process.waitForExit()
            }
        }
        XCTAssertTrue(eventually { collector.stderr.contains("llmtap-collector started") }, collector.stderr)
        XCTAssertTrue(collector.stderr.contains("prices=shipped"), collector.stderr)
        XCTAssertTrue(
            eventually { sidecar.stderr.contains("reverse listener ready") && mock.stdout.contains("listening on") },
            sidecar.stderr)
        let answer = try curlWithStatus([
            "http://127.0.0.1:\(sidecarPort)/v1/chat/completions", "-H", "Authorization: Bearer sk-x",
            "--data-binary", #"{"model":"gpt-4o-mini","messages":[]}"#,
        ])
        XCTAssertEqual(answer.status, 200)
        XCTAssertTrue(
            eventually {
                let metrics =
                    (try? curlWithStatus(["http://127.0.0.1:\(httpPort)/metrics"]).body).map {
                        String(decoding: $0, as: UTF8.self)
                    } ?? ""
                return metrics.contains(#"llmtap_requests_total{app="default""#)
                    && metrics.contains("llmtap_cost_usd_total")
            })
    }
}

/// The README's run command, as a user runs it (with the binaries the tests built, and ports of
/// its own): the collector, the sidecar, the demo requests, then where things are; Ctrl-C stops it all.
final class RunScriptTests: XCTestCase {
    func testRunDemoStartsEverythingSendsDemoRequestsAndStopsOnCtrlC() throws {
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("llmtap-run-\(UUID().uuidString)")
        let (http, listen) = ("127.0.0.1:\(try freeTCPPort())", "127.0.0.1:\(try freeTCPPort())")
        let run = try RunningProcess(
            executable: repositoryRoot.appendingPathComponent("scripts/run"), arguments: ["--demo"],
            environment: [
                "LLMTAP_BIN": productsDirectory.path, "DATA_DIR": data.path, "COLLECTOR_HTTP": http,
                "LISTEN_ADDR": listen,
                "MITM_LISTEN_ADDR": "127.0.0.1:\(try freeTCPPort())",
                "MOCK_LISTEN_ADDR": "127.0.0.1:\(try freeTCPPort())",
                "ANALYSIS_PORT": "\(try freeTCPPort())", "POLICY_PORT": "\(try freeTCPPort())", "MANAGEMENT_TOKEN": "",
            ], directory: repositoryRoot)
        defer { run.signal(SIGKILL) }
        XCTAssertTrue(eventually(timeout: .seconds(60)) { run.stderr.contains("Ctrl-C stops everything") }, run.stderr)
        let output = run.stderr
        // In order: the collector, the sidecar, the demo requests, the printout.
        let marks = [
            "llmtap-collector started", "llmtap-sidecar started", "demo requests through the sidecar",
            "LLMTap is running",
        ]
        let positions = marks.map { output.range(of: $0)?.lowerBound }
        XCTAssertFalse(positions.contains(nil), output)
        XCTAssertEqual(positions.compactMap { $0 }, positions.compactMap { $0 }.sorted(), output)
        for line in [
            "chat completion                    200", "chat completion, streamed          200",
            "anthropic message                  200",
            "virtual key that does not exist    401", "http://\(http)/metrics", "OPENAI_BASE_URL=http://\(listen)/v1",
        ] {
            XCTAssertTrue(output.contains(line), "no \(line) in:\n\(output)")
        }
        // The token was made for the management API, and it works.
        let token = try String(contentsOf: data.appendingPathComponent("management-token"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(
            try curlWithStatus(["http://\(http)/manage/projects", "-H", "Authorization: Bearer \(token)"]).status, 200)
        XCTAssertTrue(
            eventually {
                let metrics =
                    (try? curlWithStatus(["http://\(http)/metrics"]).body).map { String(decoding: $0, as: UTF8.self) }
                    ?? ""
                return metrics.contains(#"llmtap_requests_total{app="demo""#)
            })

        run.signal(SIGINT)
        XCTAssertNotNil(run.waitForExit(timeout: .seconds(60)), "scripts/run did not stop on Ctrl-C")
        XCTAssertTrue(
            eventually {
                run.stderr.contains("llmtap-collector stopped") && run.stderr.contains("llmtap-sidecar stopped")
            }, run.stderr)
    }
}
