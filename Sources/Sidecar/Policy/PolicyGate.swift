import Foundation
import NIOHTTP1
import Synchronization
import Wire

/// Decides on requests from the policy table the subscriber keeps current: one hash lookup per
/// request, plus the key's rate and parallelism counters. Shared by every event loop.
final class PolicyGate: Sendable {
    static let keyPrefix = "llmtap-"

    /// Only virtual keys are accepted (`--require-virtual-key`).
    let requireVirtualKey: Bool
    private let table = Mutex<PolicyTable?>(nil)
    private let limiter = Mutex<[String: KeyCounters]>([:])

    init(requireVirtualKey: Bool) {
        self.requireVirtualKey = requireVirtualKey
    }

    /// The current table; nil until the first snapshot.
    var current: PolicyTable? { table.withLock { $0 } }

    func install(_ new: PolicyTable) {
        table.withLock { $0 = new }
    }

    func decide(headers: RawHeaderFields, uri: String, path: String, nowMs: Int64, nowNanos: UInt64) -> PolicyDecision {
        decide(
            presented: Credentials.presented(in: headers), uri: uri, path: path, nowMs: nowMs,
            nowNanos: nowNanos)
    }

    /// - Parameter presented: the request's credential header and value, as `Credentials.presented` found them.
    func decide(
        presented: (header: CredentialHeader, value: String)?, uri: String, path: String, nowMs: Int64, nowNanos: UInt64
    ) -> PolicyDecision {
        guard let presented, presented.value.hasPrefix(Self.keyPrefix) else {
            if presented == nil, Credentials.inQuery(uri)?.hasPrefix(Self.keyPrefix) == true {
                return reject(
                    .unauthorized, "key_required",
                    "send the virtual key in the Authorization (Bearer), x-api-key, api-key or x-goog-api-key header, not in the URL"
                )
            }
            guard requireVirtualKey else { return .passThrough }
            return reject(
                .unauthorized, "key_required",
                "this proxy accepts only LLMTap virtual keys (llmtap-...); ask your operator for one")
        }
        guard let table = current else {
            return reject(
                .serviceUnavailable, "policy_unavailable",
                "llmtap-sidecar has not received its policy from the collector yet; retry in a moment", retryAfter: 1)
        }
        guard let key = table.keys[KeyHash.of(presented.value)] else {
            return reject(.unauthorized, "unknown_key", "invalid virtual key")
        }
        let ids = (key.keyID, key.projectID)
        if key.revoked { return reject(.unauthorized, "revoked_key", "this virtual key has been revoked", ids: ids) }
        if key.expiresAtMs > 0 && nowMs >= key.expiresAtMs {
            return reject(.unauthorized, "expired_key", "this virtual key has expired", ids: ids)
        }
        guard let project = table.projects[key.projectID] else {
            return reject(.unauthorized, "unknown_key", "invalid virtual key", ids: ids)
        }
        guard let credential = project.credential else {
            return reject(
                .serviceUnavailable, "credential_missing",
                "llmtap-sidecar holds no upstream credential named \"\(project.credentialRef)\" for project \(project.name)",
                ids: ids)
        }
        if project.denied {
            let seconds = project.deniedUntilMs > nowMs ? Int((project.deniedUntilMs - nowMs + 999) / 1000) : nil
            return reject(
                .tooManyRequests, "budget_exceeded",
                "project \(project.name) is over its budget: \(project.denialReason)", retryAfter: seconds, ids: ids)
        }
        if !key.allowedModels.isEmpty, let model = ModelScanner.modelInPath(path), !key.allowedModels.contains(model) {
            return reject(.forbidden, "model_not_allowed", "this virtual key may not use the model \(model)", ids: ids)
        }
        var holdsSlot = false
        if key.ratePerHour > 0 || key.maxParallel > 0 {
            let refusal = limiter.withLock { counters in
                counters[key.keyID, default: KeyCounters(tokens: Double(key.ratePerHour), refilledAt: nowNanos)]
                    .acquire(ratePerHour: key.ratePerHour, maxParallel: key.maxParallel, nowNanos: nowNanos)
            }
            if let refusal {
                return reject(
                    .tooManyRequests, refusal.reason, refusal.message, retryAfter: refusal.retryAfter, ids: ids)
            }
            holdsSlot = true
        }
        return .allow(
            PolicyGrant(
                keyID: key.keyID, projectID: key.projectID, header: presented.header, upstreamCredential: credential,
                allowedModels: key.allowedModels, holdsSlot: holdsSlot
            ))
    }

    /// The request that took a slot has ended.
    func release(keyID: String) {
        limiter.withLock { counters in
            if let index = counters.index(forKey: keyID), counters.values[index].inFlight > 0 {
                counters.values[index].inFlight -= 1
            }
        }
    }

    private func reject(
        _ status: HTTPResponseStatus, _ reason: String, _ message: String, retryAfter: Int? = nil,
        ids: (String, String) = ("", "")
    ) -> PolicyDecision {
        .reject(Self.refusal(status, reason, message, retryAfter: retryAfter), keyID: ids.0, projectID: ids.1)
    }

    /// A policy answer: OpenAI's error type and code for the reason, the reason kept for the wire.
    static func refusal(_ status: HTTPResponseStatus, _ reason: String, _ message: String, retryAfter: Int? = nil)
        -> ProxyErrorResponse
    {
        let (type, code): (String, String) =
            switch reason {
            case "unknown_key", "expired_key", "revoked_key", "key_required":
                ("invalid_request_error", "invalid_api_key")
            case "rate_limited", "parallel_limit": ("requests", "rate_limit_exceeded")
            case "budget_exceeded": ("insufficient_quota", "insufficient_quota")
            case "model_not_allowed": ("invalid_request_error", "model_not_allowed")
            default: ("llmtap_policy_error", reason)
            }
        return ProxyErrorResponse(
            status: status, type: type, code: code, message: message, retryAfter: retryAfter, rejectReason: reason)
    }
}
