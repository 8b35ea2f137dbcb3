import Crypto
import Foundation

/// Turns a credential into the tenant the wire carries: HMAC-SHA256 under the tenant key, first
/// 8 bytes as 16 hex characters. Every sidecar of a fleet must share the key, so that one
/// credential is one tenant everywhere; the credential itself never leaves the sidecar.
struct TenantHasher: Sendable {
    /// The key used when none is configured. Hashes made with it are still one-way, but anyone
    /// can compute them for a key they already know: set LLMTAP_TENANT_KEY to keep tenants private.
    static let defaultKey = "llmtap-default-tenant-key"

    private let key: SymmetricKey

    init(key: String) {
        self.key = SymmetricKey(data: Data(key.utf8))
    }

    func tenant(for credential: String) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Data(credential.utf8), using: key)
        return code.prefix(8).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }
}
