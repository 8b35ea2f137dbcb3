import Foundation
import Logging
import NIOSSL
import ServiceLifecycle
import UnixSignals
import Wire

/// SIGHUP reloads the configuration file: providers, weights, keys, health checks, client keys
/// and the HTTPS certificate. A file that can't be used is refused with a log line naming every
/// problem, and the configuration before it keeps serving. Listeners and the `llmtap:` options
/// stay as they started (a change to them needs a restart, or SIGUSR2).
struct ConfigReloader: Service {
    let path: String
    let state: GatewayState
    /// Whether the sidecar serves HTTPS: only then is a certificate read.
    let servesHTTPS: Bool
    let environment: [String: String]
    /// Key ids for the records, as at start.
    let keyHasher: TenantHasher
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            reload()
        }
    }

    /// Reads the file again and puts it in place, or says why not.
    func reload() {
        do {
            let file = try GatewayConfigParser.load(path: path, environment: environment)
            let routes = try GatewayRoutes.make(
                file, environment: environment, keepingHealthOf: state.routes, keyHasher: keyHasher, logger: logger)
            var tls: ServerTLS?
            if servesHTTPS {
                guard let certificate = file.certFile, let key = file.privateKeyFile else {
                    throw ConfigurationError("the sidecar serves HTTPS: cert_file and private_key_file must stay")
                }
                tls = try ServerTLS(certificate: certificate, key: key)
            }
            state.replace(routes: routes, tls: tls)
            logger.notice(
                "configuration reloaded: new requests use it, those under way finish as they began",
                metadata: [
                    "file": "\(path)",
                    "providers": "\(routes.providers.map { "\($0.name)=\($0.target)" }.joined(separator: ", "))",
                ])
        } catch {
            logger.error(
                "configuration reload refused; the configuration before it keeps serving",
                metadata: ["file": "\(path)", "error": "\(error)"])
        }
    }
}
