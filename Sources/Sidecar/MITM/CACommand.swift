import ArgumentParser
import Foundation

/// `llmtap-sidecar ca path` and `llmtap-sidecar ca export`: where the CA is, and its PEM, so that
/// clients can be told to trust it. Both make the CA if it does not exist yet.
struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Shows LLMTap's local CA, which MITM clients must trust.",
        discussion: """
            Trust it in a client with, for example:
              SSL_CERT_FILE=$(llmtap-sidecar ca path)          (Python's ssl, httpx, the openai package)
              REQUESTS_CA_BUNDLE=$(llmtap-sidecar ca path)     (requests)
              NODE_EXTRA_CA_CERTS=$(llmtap-sidecar ca path)    (Node.js)
              curl --cacert "$(llmtap-sidecar ca path)" ...
            or add it to the system store (Debian: copy it to /usr/local/share/ca-certificates/llmtap.crt
            and run update-ca-certificates).
            """,
        subcommands: [Path.self, Export.self]
    )

    static var defaultDirectory: String {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
        return (home as NSString).appendingPathComponent(".llmtap/ca")
    }

    struct Options: ParsableArguments {
        @Option(help: "Where LLMTap's CA lives (made on first start, then reused). Env: LLMTAP_CA_DIR.")
        var caDir = SidecarEnvironment.current["LLMTAP_CA_DIR"] ?? CACommand.defaultDirectory

        func authority() throws -> CertificateAuthority {
            do {
                return try CertificateAuthority.loadOrCreate(directory: caDir).authority
            } catch {
                throw ValidationError("\(error)")
            }
        }
    }

    struct Path: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Prints the path of the CA certificate (PEM).")
        @OptionGroup var options: Options

        func run() throws {
            print(try options.authority().certificatePath)
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Prints the CA certificate (PEM), never its key.")
        @OptionGroup var options: Options

        func run() throws {
            print(try options.authority().pem, terminator: "")
        }
    }
}
