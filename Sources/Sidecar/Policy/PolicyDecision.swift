import Foundation
import NIOHTTP1
import Synchronization
import Wire

/// What the policy says of one request.
enum PolicyDecision {
    /// Not a virtual key, and none is required: forwarded as it came.
    case passThrough
    /// A valid virtual key: forwarded with the project's upstream credential in its place.
    case allow(PolicyGrant)
    /// Answered here, never forwarded.
    case reject(ProxyErrorResponse, keyID: String, projectID: String)
}

struct PolicyGrant {
    let keyID: String
    let projectID: String
    /// Where the virtual key came, so the upstream credential goes the same way.
    let header: CredentialHeader
    let upstreamCredential: String
    /// Models the key may use; empty for any. Checked once the model is known.
    let allowedModels: Set<String>
    /// Whether the request holds a limiter slot to give back when it ends.
    let holdsSlot: Bool
}
