import NIOCore

/// What the MITM listener's connections share.
struct MITMSettings: Sendable {
    let proxy: ProxySettings
    let allowlist: Allowlist
    let ports: Set<Int>
    let denyUnlisted: Bool
    let connectTimeout: TimeAmount
}
