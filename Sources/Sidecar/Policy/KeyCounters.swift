import Foundation
import NIOHTTP1
import Synchronization
import Wire

/// One key's request rate (a token bucket holding an hour's allowance, refilled continuously) and
/// its requests in flight, on this sidecar.
struct KeyCounters {
    var tokens: Double
    var refilledAt: UInt64
    var inFlight = 0

    init(tokens: Double, refilledAt: UInt64) {
        self.tokens = tokens
        self.refilledAt = refilledAt
    }

    struct Refusal {
        let reason: String
        let message: String
        let retryAfter: Int
    }

    mutating func acquire(ratePerHour: Int, maxParallel: Int, nowNanos: UInt64) -> Refusal? {
        if maxParallel > 0 && inFlight >= maxParallel {
            return Refusal(
                reason: "parallel_limit", message: "this virtual key already has \(maxParallel) requests in flight",
                retryAfter: 1)
        }
        if ratePerHour > 0 {
            let perNano = Double(ratePerHour) / 3.6e12
            tokens = min(Double(ratePerHour), tokens + Double(nowNanos &- refilledAt) * perNano)
            refilledAt = nowNanos
            guard tokens >= 1 else {
                let wait = Int(((1 - tokens) / perNano / 1e9).rounded(.up))
                return Refusal(
                    reason: "rate_limited",
                    message: "this virtual key is over its rate limit of \(ratePerHour) requests per hour",
                    retryAfter: max(1, wait))
            }
            tokens -= 1
        }
        inFlight += 1
        return nil
    }
}
