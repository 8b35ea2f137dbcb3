import Crypto
import Foundation
import Wire

/// The upstream credentials this sidecar holds, by the name projects refer to them by
/// (`credential_ref`). They come from its own environment (`LLMTAP_CREDENTIAL_<NAME>`, the name
/// upper-cased with `-` and `.` as `_`) or `--credentials-file` (`name=secret` lines), never from
/// the policy channel.
struct UpstreamCredentials: Sendable {
    private let byName: [String: String]

    init(byName: [String: String]) {
        self.byName = byName
    }

    static func load(file: String?, environment: [String: String]) throws -> UpstreamCredentials {
        var byName: [String: String] = [:]
        for (name, value) in environment where name.hasPrefix("LLMTAP_CREDENTIAL_") && !value.isEmpty {
            byName[String(name.dropFirst("LLMTAP_CREDENTIAL_".count))] = value
        }
        if let file {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespacesAndNewlines)
                if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
                guard let equals = trimmed.firstIndex(of: "="), equals != trimmed.startIndex else {
                    // The line may hold a secret: say where it is, not what it says.
                    throw CredentialsFileError(description: "\(file):\(number + 1): expected name=secret")
                }
                byName[normalized(String(trimmed[..<equals]))] = String(trimmed[trimmed.index(after: equals)...])
            }
        }
        return UpstreamCredentials(byName: byName)
    }

    func secret(for reference: String) -> String? {
        byName[Self.normalized(reference)]
    }

    var names: [String] { byName.keys.sorted() }

    static func normalized(_ name: String) -> String {
        String(name.uppercased().map { $0 == "-" || $0 == "." ? "_" : $0 })
    }

    struct CredentialsFileError: Error, CustomStringConvertible {
        let description: String
    }
}
