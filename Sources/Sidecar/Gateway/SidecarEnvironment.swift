import Foundation
import Synchronization
import Wire

/// Where the sidecar's options take their defaults: the process's environment, and under it the
/// configuration file's settings (`--config`). A flag wins over both, a variable over the file.
/// Installed once, before the command line is parsed.
enum SidecarEnvironment {
    private struct State {
        var values = ProcessInfo.processInfo.environment
        var config: GatewayConfig?
        var path: String?
    }

    private static let state = Mutex(State())

    /// The variables every option reads its default from.
    static var current: [String: String] { state.withLock { $0.values } }

    /// The configuration file, when `--config` named one.
    static var config: (file: GatewayConfig, path: String)? {
        state.withLock { state in state.config.map { ($0, state.path ?? "") } }
    }

    /// The file's settings go under the process's variables; an error about a value then names
    /// the file's key and line, not a variable the user never set.
    static func install(_ config: GatewayConfig, path: String) {
        state.withLock { state in
            var origins: [String: String] = [:]
            for (variable, setting) in config.settings where state.values[variable, default: ""].isEmpty {
                state.values[variable] = setting.value
                origins[variable] = "\(setting.key) (\(path) line \(setting.line))"
            }
            state.config = config
            state.path = path
            EnvironmentSettings.setOrigins(origins)
        }
    }

    /// The file the command line or LLMTAP_CONFIG names: `--config FILE`, `--config=FILE`, `-c FILE`.
    static func configPath(in arguments: [String], environment: [String: String]) -> String? {
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" { break }
            if argument == "--config" || argument == "-c" {
                return index + 1 < arguments.count ? arguments[index + 1] : nil
            }
            if argument.hasPrefix("--config=") { return String(argument.dropFirst("--config=".count)) }
            index += 1
        }
        return environment["LLMTAP_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
    }
}
