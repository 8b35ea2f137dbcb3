import ArgumentParser
import Foundation
import Wire

/// `llmtap-sidecar check-config FILE`: the file's problems, every one with its line, or a summary.
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Checks a configuration file: exits 0, or 1 naming every problem with its line.",
        discussion: """
            The checks are those of a start with --config FILE: YAML, known keys, values, names, \
            endpoints, certificate files, env: variables, and the llmtap: section's options. \
            No key is printed, and no $(command) is run.
            """
    )

    @Argument(help: "The YAML configuration file.")
    var file: String

    func run() throws {
        let config: GatewayConfig
        do {
            config = try GatewayConfigParser.load(path: file, environment: ProcessInfo.processInfo.environment)
        } catch {
            Self.fail("\(error)")
        }
        // The llmtap: section's values are checked as a start checks them.
        SidecarEnvironment.install(config, path: file)
        do {
            _ = try SidecarCommand.parse(["--config", file])
        } catch {
            Self.fail("\(file): \(SidecarCommand.message(for: error))")
        }
        let routes = config.providers.map { provider in
            "\(provider.name) (\(provider.kind.rawValue), \(provider.host ?? "any host")\(provider.pathPrefix ?? ""))"
        }
        print(
            "\(file): OK: \(config.providers.count) provider(s)\(routes.isEmpty ? "" : ": ")\(routes.joined(separator: ", "))"
        )
    }

    private static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data((message + "\n").utf8))
        Foundation.exit(1)
    }
}
